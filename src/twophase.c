/*
 * twophase.c
 *		Two-phase commit: PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK
 *		PREPARED, seen as statements by a ProcessUtility hook.
 *
 * A PREPARE TRANSACTION's GID is known only to its statement: it is kept
 * for the cache's registry (cache_twophase.c), which says whether the
 * transaction wrote limit events.  COMMIT or ROLLBACK PREPARED may run in
 * any session of the database, at any time, after a restart too; once it
 * succeeded, the cache resolves the transaction's slot at once (a call
 * about one of its orgs would otherwise), and after a commit the limit
 * events the transaction wrote are announced: a prepared transaction
 * cannot send NOTIFY (notify.c keeps them in _unannounced), so the
 * committing session sends it, through _announce_events().  A session
 * without the library (no preloading) does not announce them: rollover()
 * does.
 */
#include "tiermeter.h"

#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "catalog/pg_proc.h"
#include "tcop/utility.h"
#include "utils/memutils.h"
#include "utils/builtins.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

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

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		/*
		 * The extension's own function, looked up with no privilege check
		 * (any role may COMMIT PREPARED its transaction), and only if it
		 * belongs to the extension: never one someone else named so.
		 */
		Oid			ext = get_extension_oid("tiermeter", true);
		Oid			nsp = get_namespace_oid("tiermeter", true);
		Oid			fn = InvalidOid;

		if (OidIsValid(ext) && OidIsValid(nsp))
			fn = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
								 CStringGetDatum("_announce_events"),
								 PointerGetDatum(buildoidvector(NULL, 0)),
								 ObjectIdGetDatum(nsp));
		/* none: not installed here, or an older version */
		if (OidIsValid(fn) && getExtensionOfObject(ProcedureRelationId, fn) == ext)
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
	bool		events = false;

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
		/* (no snapshot is taken before the commit: see tm_announce) */
		if (ts->kind == TRANS_STMT_COMMIT_PREPARED)
			events = !tm_cache_enabled() || tm_cache_prepared_events(ts->gid);
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	if (resolves)
	{
		if (tm_cache_enabled())
			tm_cache_prepared_resolve();
		if (events)
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
