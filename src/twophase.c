/*
 * twophase.c
 *		Two-phase commit: PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK
 *		PREPARED, seen as statements by a ProcessUtility hook.
 *
 * A PREPARE TRANSACTION's GID is known only to its statement: it is kept
 * here for the cache, which registers the prepared transaction under it at
 * PRE_PREPARE (cache_twophase.c).  COMMIT or ROLLBACK PREPARED may run in
 * any session of the database, at any time, after a restart too; once it
 * succeeded, the cache answers the transaction's orgs from its entries
 * again, and after a commit the limit events the transaction wrote are
 * announced: a prepared transaction cannot send NOTIFY (notify.c keeps
 * them in _unannounced), so the committing session sends it, through
 * _announce_events().  A session without the library (no preloading) does
 * not announce them: rollover() does.
 */
#include "tiermeter.h"

#include "access/xact.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "tcop/utility.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* the GID of the PREPARE TRANSACTION of this transaction, if any */
static char tm_gid[GIDSIZE];
static bool tm_gid_set = false;

const char *
tm_twophase_gid(void)
{
	return tm_gid_set ? tm_gid : NULL;
}

/*
 * Sends NOTIFY tiermeter for the committed events no prepared transaction
 * could announce.  A failure is a WARNING: the COMMIT PREPARED is done, and
 * the next one (or rollover) announces them.
 */
static void
tm_announce(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			fn;

	fn = LookupFuncName(list_make2(makeString("tiermeter"), makeString("_announce_events")),
						0, NULL, true);
	if (!OidIsValid(fn))
		return;					/* not installed here, or an older version */

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		(void) OidFunctionCall0(fn);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ereport(WARNING,
				(errmsg("tiermeter: the prepared transaction's limit events were not announced: %s",
						edata->message),
				 errhint("The next COMMIT PREPARED or rollover() announces them.")));
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

static void
tm_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	TransactionStmt *ts = NULL;
	bool		resolves = false;

	if (IsA(pstmt->utilityStmt, TransactionStmt))
	{
		ts = (TransactionStmt *) pstmt->utilityStmt;
		if (ts->kind == TRANS_STMT_PREPARE)
		{
			strlcpy(tm_gid, ts->gid, sizeof(tm_gid));
			tm_gid_set = true;
		}
		resolves = ts->kind == TRANS_STMT_COMMIT_PREPARED ||
			ts->kind == TRANS_STMT_ROLLBACK_PREPARED;
		/* none recovered from disk may be resolved before it is registered */
		if (resolves && tm_cache_enabled())
			tm_cache_prepared_check();
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	if (resolves)
	{
		bool		commit = ts->kind == TRANS_STMT_COMMIT_PREPARED;

		if (tm_cache_enabled())
			tm_cache_prepared_resolve(ts->gid, commit);
		if (commit)
			tm_announce();
	}
}

/* The GID is forgotten when the transaction ends, however it ends. */
static void
tm_twophase_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		tm_gid_set = false;
}

void
tm_twophase_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = tm_process_utility;
	RegisterXactCallback(tm_twophase_xact_callback, NULL);
}
