/*
 * session.c
 *		touch_session(org_id, conversation_id) and the owner's
 *		_touch_session(org_id, conversation_id, at): the common case in C.
 *
 * A conversation touches its session every few seconds, and almost every
 * touch finds it active and far from its idle timeout.  Such a touch needs
 * no admission: it takes the org's session lock shared (admissions take it
 * exclusively, so touches of one org run side by side but never beside an
 * admission), reads the clock, then runs one UPDATE that touches the row
 * only if it is open and active until at least 5 s later: it counts the
 * whole seconds since the last counted moment and returns them.  They are
 * recorded as record_usage records (ledger, cache, threshold events,
 * counted only if the transaction commits), and the org's active sessions
 * are counted for the result.
 *
 * Any other touch (the UPDATE found nothing to do, and wrote nothing)
 * releases the shared lock and goes to the PL/pgSQL _touch_session_admit:
 * an unknown or ended session (its error), and a session idle or within
 * 5 s of its idle timeout, which may need re-admission under the org's
 * admission lock.  No row lock is held then, except that of a row another
 * call ended while this one waited for it, which leads straight to the
 * error.  While the shared lock is held, only another touch (which extends
 * the session) or end_session (which ends it) can change the row.
 *
 * The clock is read again after the UPDATE: a touch that waited for
 * another touch of the same conversation longer than its idle timeout
 * counted up to the moment it got the org's lock, and finds the session
 * idle now.  It goes on only if re-admitted: the org's admission lock is
 * taken if free (waiting for it while holding the shared one could
 * deadlock with another such touch), else the call fails to serialize, to
 * be retried, and the PL/pgSQL way counts the rest and re-admits it.
 */
#include "tiermeter.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_collation_d.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

TM_FUNCTION(tiermeter_touch_session);

/* attempts, 1 ms apart, at the admission lock to re-admit a session */
#define TM_READMIT_TRIES	100

/* the advisory lock key of an org's sessions (as the PL/pgSQL functions) */
#define TM_SESSION_LOCK_KEY	1953330533

/* a session this close to its idle timeout goes the admission way */
#define TM_SESSION_MARGIN	(5 * USECS_PER_SEC)

enum
{
	SS_ORG_ID,
	SS_CONVERSATION_ID,
	SS_ALLOWED,
	SS_REASON,
	SS_ACTIVE,
	SS_STARTED_AT,
	SS_LAST_ACTIVE_AT,
	SS_DURATION_SECONDS,
	SS_SESSION_QUOTA,
	SS_SESSION_REMAINING,
	SS_ACTIVE_SESSIONS,
	SS_MAX_ACTIVE_SESSIONS,
	SS_USED,
	SS_QUOTA,
	SS_PERIOD_END,
	SS_NATTS
};

/* A session row, as a touch left it. */
typedef struct TmSession
{
	TimestampTz started_at;
	TimestampTz last_active_at;
	TimestampTz accrued_to;
	TimestampTz idle_until;
	int64		duration;
	int64		counted;		/* the whole seconds this touch counted */
} TmSession;

static Datum
tm_getcol(int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, isnull);
}

/*
 * Touches the session at `at` if it is open and active until at least
 * TM_SESSION_MARGIN after `at`: one UPDATE locks it, counts the whole
 * seconds since accrued_to and moves last_active_at and idle_until; false
 * (nothing written) if the session is not in that state.
 */
static bool
tm_session_touch(Datum *key, TimestampTz at, TmSession *s)
{
	Datum		values[4] = {key[0], key[1], TimestampTzGetDatum(at),
	TimestampTzGetDatum(at + TM_SESSION_MARGIN)};
	bool		isnull;

	if (SPI_execute_plan(tm_plan(TM_PLAN_SESSION_TOUCH), values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "tiermeter: session touch failed");
	if (SPI_processed == 0)
		return false;
	s->started_at = DatumGetTimestampTz(tm_getcol(1, &isnull));
	s->last_active_at = DatumGetTimestampTz(tm_getcol(2, &isnull));
	s->accrued_to = DatumGetTimestampTz(tm_getcol(3, &isnull));
	s->idle_until = DatumGetTimestampTz(tm_getcol(4, &isnull));
	s->duration = DatumGetInt64(tm_getcol(5, &isnull));
	s->counted = DatumGetInt64(tm_getcol(6, &isnull));
	return true;
}

/*
 * The org's sessions active at `at` (not ended, idle_until >= at), counted
 * by a scan of the partial index of its open sessions, as PostgreSQL reads
 * its own catalogs: the executor a query would start costs more than the
 * scan.  The snapshot is the one a statement run now would get (a new one
 * under READ COMMITTED, the transaction's under REPEATABLE READ and
 * SERIALIZABLE, with its predicate locks), and sees this call's update.
 */
static TmRelName tm_sessions_name = TM_RELNAME("sessions");
static TmRelName tm_sessions_open_name = TM_RELNAME("sessions_open");

static int32
tm_active_sessions(Datum org_id, TimestampTz at)
{
	Relation	rel = tm_relname_open(&tm_sessions_name, AccessShareLock);
	Relation	index = rel != NULL ?
		tm_relname_open(&tm_sessions_open_name, AccessShareLock) : NULL;
	Oid			relid;
	AttrNumber	idle_col;
	AttrNumber	ended_col;
	ScanKeyData skey;
	Snapshot	snapshot;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	int32		n = 0;

	if (rel == NULL || index == NULL || rel->rd_rel->relkind != RELKIND_RELATION ||
		index->rd_rel->relkind != RELKIND_INDEX)
		elog(ERROR, "tiermeter: table sessions or its index sessions_open is missing");
	relid = RelationGetRelid(rel);
	idle_col = get_attnum(relid, "idle_until");
	ended_col = get_attnum(relid, "ended_at");
	if (idle_col == InvalidAttrNumber || ended_col == InvalidAttrNumber ||
		index->rd_index->indrelid != relid ||
		index->rd_rel->relam != BTREE_AM_OID || !index->rd_index->indisvalid ||
		index->rd_index->indnkeyatts != 1 ||
		index->rd_index->indkey.values[0] != get_attnum(relid, "org_id"))
		elog(ERROR, "tiermeter: index sessions_open is not a valid btree index on sessions (org_id)");

	ScanKeyEntryInitialize(&skey, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   index->rd_indcollation[0], F_TEXTEQ, org_id);
	PushCopiedSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	snapshot = GetActiveSnapshot();
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, index, snapshot, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		idle_until = slot_getattr(slot, idle_col, &isnull);

		(void) slot_getattr(slot, ended_col, &isnull);
		if (isnull && DatumGetTimestampTz(idle_until) >= at)
			n++;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	PopActiveSnapshot();
	relation_close(index, AccessShareLock);
	relation_close(rel, AccessShareLock);
	return n;
}

/* The PL/pgSQL way, _touch_session_admit; its result in the caller's context. */
static Datum
tm_session_admit(Datum *key, bool clock, TimestampTz at)
{
	Datum		values[3] = {key[0], key[1], TimestampTzGetDatum(at)};
	char		nulls[3] = {' ', ' ', clock ? 'n' : ' '};
	bool		isnull;
	Datum		result;

	if (SPI_execute_plan(tm_plan(TM_PLAN_SESSION_ADMIT), values, nulls, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "tiermeter: touch_session failed");
	result = tm_getcol(1, &isnull);
	if (isnull)
		elog(ERROR, "tiermeter: _touch_session_admit returned NULL");
	return SPI_datumTransfer(result, false, -1);
}

static const Oid tm_session_status_types[SS_NATTS] = {
	[SS_ORG_ID] = TEXTOID,
	[SS_CONVERSATION_ID] = TEXTOID,
	[SS_ALLOWED] = BOOLOID,
	[SS_REASON] = TEXTOID,
	[SS_ACTIVE] = BOOLOID,
	[SS_STARTED_AT] = TIMESTAMPTZOID,
	[SS_LAST_ACTIVE_AT] = TIMESTAMPTZOID,
	[SS_DURATION_SECONDS] = INT8OID,
	[SS_SESSION_QUOTA] = INT8OID,
	[SS_SESSION_REMAINING] = INT8OID,
	[SS_ACTIVE_SESSIONS] = INT4OID,
	[SS_MAX_ACTIVE_SESSIONS] = INT4OID,
	[SS_USED] = INT8OID,
	[SS_QUOTA] = INT8OID,
	[SS_PERIOD_END] = TIMESTAMPTZOID
};

/* The session_status of a session active after a touch. */
static Datum
tm_session_status(FunctionCallInfo fcinfo, const char *org_id, const char *conversation_id,
				  const TmSession *s, int32 active_sessions,
				  const TmOrgFeature *of, const TmSums *sums)
{
	TupleDesc	tupdesc;
	Datum		values[SS_NATTS];
	bool		nulls[SS_NATTS];
	int64		quota;
	const char *reason = NULL;

	tupdesc = tm_result_desc(fcinfo, "session_status", tm_session_status_types, SS_NATTS, SS_NATTS);

	memset(nulls, 0, sizeof(nulls));
	if (!tm_limit_allowed(of, sums, &quota))
		reason = "limit_exceeded";
	else if (of->max_session_seconds >= 0 && s->duration >= of->max_session_seconds)
		reason = "session_limit_exceeded";

	values[SS_ORG_ID] = CStringGetTextDatum(org_id);
	values[SS_CONVERSATION_ID] = CStringGetTextDatum(conversation_id);
	values[SS_ALLOWED] = BoolGetDatum(reason == NULL);
	if (reason)
		values[SS_REASON] = CStringGetTextDatum(reason);
	else
		nulls[SS_REASON] = true;
	values[SS_ACTIVE] = BoolGetDatum(true);
	values[SS_STARTED_AT] = TimestampTzGetDatum(s->started_at);
	values[SS_LAST_ACTIVE_AT] = TimestampTzGetDatum(s->last_active_at);
	values[SS_DURATION_SECONDS] = Int64GetDatum(s->duration);
	if (of->max_session_seconds < 0)
	{
		nulls[SS_SESSION_QUOTA] = true;
		nulls[SS_SESSION_REMAINING] = true;
	}
	else
	{
		values[SS_SESSION_QUOTA] = Int64GetDatum(of->max_session_seconds);
		values[SS_SESSION_REMAINING] =
			Int64GetDatum(Max(of->max_session_seconds - s->duration, 0));
	}
	values[SS_ACTIVE_SESSIONS] = Int32GetDatum(active_sessions);
	if (of->max_active_sessions < 0)
		nulls[SS_MAX_ACTIVE_SESSIONS] = true;
	else
		values[SS_MAX_ACTIVE_SESSIONS] = Int32GetDatum(of->max_active_sessions);
	values[SS_USED] = Int64GetDatum(sums->used);
	if (of->unlimited)
		nulls[SS_QUOTA] = true;
	else
		values[SS_QUOTA] = Int64GetDatum(quota);
	values[SS_PERIOD_END] = TimestampTzGetDatum(of->period.end);
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/*
 * touch_session(org_id, conversation_id), and the owner's
 * _touch_session(org_id, conversation_id, at) (NULL at: the clock, read once
 * the org's session lock is held).
 */
Datum
tiermeter_touch_session(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	char	   *conversation_id = tm_arg_id(fcinfo, 1, "conversation_id");
	bool		clock = PG_NARGS() < 3 || PG_ARGISNULL(2);
	TimestampTz at = clock ? 0 : PG_GETARG_TIMESTAMPTZ(2);	/* clock: read below */
	MemoryContext cxt = CurrentMemoryContext;
	Datum		key[2];
	TmOwnerSave save;
	TmSession	s;
	TmOrgFeature of;
	TmSums		sums;
	Datum		result;
	int32		active;
	LOCKTAG		tag;

	if (!clock && TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: at must be a finite timestamp")));
	key[0] = CStringGetTextDatum(org_id);
	key[1] = CStringGetTextDatum(conversation_id);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, TM_SESSION_LOCK_KEY,
						 DatumGetUInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID, key[0])),
						 2);
	(void) LockAcquire(&tag, ShareLock, false, false);
	if (clock)
		at = GetCurrentTimestamp();

	tm_spi_begin(&save);
	if (!tm_session_touch(key, at, &s))
	{
		/* not the common case: the PL/pgSQL way, which takes its own locks */
		LockRelease(&tag, ShareLock, false);
		result = tm_session_admit(key, clock, at);
		tm_spi_end(&save);
		PG_RETURN_DATUM(result);
	}
	if (s.counted > 0)
		tm_record_usage(org_id, s.counted, "conversation_seconds", conversation_id,
						s.accrued_to, &of, &sums, cxt);
	else
		tm_check_limits(org_id, "conversation_seconds", &of, &sums, cxt);
	if (clock && s.idle_until < GetCurrentTimestamp())
	{
		/*
		 * We waited for another touch of the session longer than its idle
		 * timeout (rare): counted up to `at`, it is idle now, and goes on
		 * only if re-admitted.  That needs the org's admission lock, and
		 * waiting for it while holding the shared one could deadlock with
		 * another such touch: take it only if free, trying for a while
		 * (the touch we waited for may still be releasing its own shared
		 * lock as it commits), else the caller retries.
		 */
		int			tries = 0;

		while (!LockAcquireExtended(&tag, ExclusiveLock, false, true, true, NULL) &&
			   ++tries < TM_READMIT_TRIES)
		{
			CHECK_FOR_INTERRUPTS();
			pg_usleep(1000L);
		}
		if (tries == TM_READMIT_TRIES)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("tiermeter: could not re-admit the idle session of conversation \"%s\" of org \"%s\"",
							conversation_id, org_id),
					 errdetail("It went idle while the call waited for another touch of it."),
					 errhint("Retry the transaction.")));
		result = tm_session_admit(key, clock, at);
		tm_spi_end(&save);
		PG_RETURN_DATUM(result);
	}
	active = tm_active_sessions(key[0], at);
	tm_spi_end(&save);

	PG_RETURN_DATUM(tm_session_status(fcinfo, org_id, conversation_id, &s, active, &of, &sums));
}
