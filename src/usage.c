/*
 * usage.c
 *		record_usage and consume: writing to the usage ledger.
 *
 * record_usage appends one row and takes no lock beyond the insert itself,
 * so any number of writers of one org proceed in parallel.  consume must not
 * pass the quota, so it serializes the consumers of one (org, feature) on a
 * transaction-level advisory lock and sums under the latest snapshot: a
 * consumer that gets the lock sees everything its predecessors committed,
 * whatever the isolation level.
 */
#include "tiermeter.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(tiermeter_record_usage);
PG_FUNCTION_INFO_V1(tiermeter_consume);

/* advisory lock tags with field4 = 1 or 2 are SQL's; tiermeter uses 3 */
#define TM_LOCK_SPACE	3

/*
 * Serializes the writers that must see each other's committed usage of one
 * (org, feature): consume, and negative gauge deltas.  Held to the end of
 * the transaction.  Returns the snapshot to sum under.
 */
static Snapshot
tm_lock_org_feature(const TmOrgFeature *of)
{
	LOCKTAG		tag;
	StringInfoData key;
	uint64		h;

	initStringInfo(&key);
	appendBinaryStringInfo(&key, of->org_id, strlen(of->org_id) + 1);
	appendStringInfoString(&key, of->feature);
	h = hash_bytes_extended((const unsigned char *) key.data, key.len, 0);
	pfree(key.data);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, TM_LOCK_SPACE);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);

	/* our own earlier writes in this transaction must be visible too */
	CommandCounterIncrement();
	return GetLatestSnapshot();
}

static bool
tm_key_exists(const TmOrgFeature *of, const char *key, Snapshot snapshot)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = CStringGetTextDatum(key);
	if (SPI_execute_snapshot(tm_plan(TM_PLAN_KEY_EXISTS), values, NULL,
							 snapshot, InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: idempotency key lookup failed");
	return SPI_processed > 0;
}

/* Appends a ledger row; false if the idempotency key was already there. */
static bool
tm_insert_usage(const TmOrgFeature *of, int64 amount, TimestampTz occurred_at,
				const char *conversation_id, const char *key)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = CStringGetTextDatum(of->feature);
	values[2] = Int64GetDatum(amount);
	values[3] = TimestampTzGetDatum(occurred_at);
	if (conversation_id)
		values[4] = CStringGetTextDatum(conversation_id);
	else
		nulls[4] = 'n';
	if (key == NULL)
	{
		if (SPI_execute_plan(tm_plan(TM_PLAN_INSERT_USAGE), values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "tiermeter: recording usage failed");
		return true;
	}
	values[5] = CStringGetTextDatum(key);
	if (SPI_execute_plan(tm_plan(TM_PLAN_INSERT_USAGE_KEYED), values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "tiermeter: recording usage failed");
	return SPI_processed > 0;
}

static void
tm_check_gauge_floor(const TmOrgFeature *of, const TmSums *sums, int64 amount)
{
	if (sums->used + amount < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: gauge \"%s\" cannot go below zero", of->feature),
				 errdetail("The level is " INT64_FORMAT "; the delta is " INT64_FORMAT ".",
						   sums->used, amount)));
}

static int64
tm_arg_amount(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: amount must not be NULL")));
	return PG_GETARG_INT64(argno);
}

/*
 * record_usage(org_id, amount, feature, conversation_id, idempotency_key,
 *				occurred_at) RETURNS limit_status
 */
Datum
tiermeter_record_usage(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	int64		amount = tm_arg_amount(fcinfo, 1);
	char	   *feature = tm_arg_id(fcinfo, 2, "feature");
	char	   *conversation_id = tm_arg_text_or_null(fcinfo, 3, "conversation_id");
	char	   *key = tm_arg_text_or_null(fcinfo, 4, "idempotency_key");
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz occurred_at = PG_ARGISNULL(5) ? now : PG_GETARG_TIMESTAMPTZ(5);
	MemoryContext cxt = CurrentMemoryContext;
	TmOwnerSave save;
	TmOrgFeature of;
	TmSums		sums;

	if (TIMESTAMP_NOT_FINITE(occurred_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: occurred_at must be finite")));
	if (occurred_at > now + TM_MAX_FUTURE_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: occurred_at is more than 5 minutes in the future"),
				 errdetail("occurred_at is " INT64_FORMAT " seconds after now(); at most 300 are allowed.",
						   (occurred_at - now) / USECS_PER_SEC)));

	tm_spi_begin(&save);
	tm_lookup(&of, org_id, feature, false, cxt);
	tm_check_amount(amount, of.is_gauge, feature);

	if (of.is_gauge && amount < 0)
	{
		sums = tm_sums(&of, tm_lock_org_feature(&of), false);
		tm_check_gauge_floor(&of, &sums, amount);
	}

	tm_ensure_org(&of);
	(void) tm_insert_usage(&of, amount, occurred_at, conversation_id, key);
	sums = tm_sums(&of, InvalidSnapshot, false);
	tm_spi_end(&save);

	PG_RETURN_DATUM(tm_status_datum(fcinfo, &of, &sums, TM_REASON_AUTO));
}

/*
 * consume(org_id, amount, feature, conversation_id, idempotency_key)
 *		RETURNS limit_status
 *
 * Records only if used + amount <= quota.  A replayed idempotency key whose
 * first call was recorded answers allowed = true and records nothing more.
 */
Datum
tiermeter_consume(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	int64		amount = tm_arg_amount(fcinfo, 1);
	char	   *feature = tm_arg_id(fcinfo, 2, "feature");
	char	   *conversation_id = tm_arg_text_or_null(fcinfo, 3, "conversation_id");
	char	   *key = tm_arg_text_or_null(fcinfo, 4, "idempotency_key");
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	MemoryContext cxt = CurrentMemoryContext;
	TmOwnerSave save;
	TmOrgFeature of;
	TmSums		sums;
	Snapshot	snapshot;
	TmReason	outcome = TM_REASON_RECORDED;

	tm_spi_begin(&save);
	tm_lookup(&of, org_id, feature, false, cxt);
	tm_check_amount(amount, of.is_gauge, feature);
	tm_ensure_org(&of);

	snapshot = tm_lock_org_feature(&of);
	if (key != NULL && tm_key_exists(&of, key, snapshot))
	{
		/* a replay: the first call was recorded */
		sums = tm_sums(&of, snapshot, false);
		tm_spi_end(&save);
		PG_RETURN_DATUM(tm_status_datum(fcinfo, &of, &sums, TM_REASON_RECORDED));
	}

	sums = tm_sums(&of, snapshot, false);
	if (of.is_gauge && amount < 0)
		tm_check_gauge_floor(&of, &sums, amount);
	else if (!of.unlimited)
	{
		int64		quota = of.base_quota + sums.granted;

		if (quota == 0 || sums.used + amount > quota)
			outcome = TM_REASON_REFUSED;
	}

	if (outcome == TM_REASON_RECORDED)
	{
		if (tm_insert_usage(&of, amount, now, conversation_id, key))
			sums.used += amount;
		else
			sums = tm_sums(&of, GetLatestSnapshot(), false);	/* same key, other feature */
	}
	tm_spi_end(&save);

	PG_RETURN_DATUM(tm_status_datum(fcinfo, &of, &sums, outcome));
}
