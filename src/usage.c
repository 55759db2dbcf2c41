/*
 * usage.c
 *		record_usage and consume: writing to the usage ledger.
 *
 * record_usage appends one row and takes no lock beyond the insert itself,
 * so any number of writers of one org proceed in parallel; with the cache
 * (cache.c) it reads nothing either, and its amount reaches the shared
 * counter when the transaction commits.
 *
 * consume must not pass the quota.  With the cache it reserves the amount in
 * shared memory against used + reserved, and the commit turns the
 * reservation into usage.  On the table path (no preload, or no current
 * entry) it serializes the consumers of one (org, feature) on a
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

TM_FUNCTION(tiermeter_record_usage);
TM_FUNCTION(tiermeter_consume);

/* advisory lock tags with field4 = 1 or 2 are SQL's; tiermeter uses 3 */
#define TM_LOCK_SPACE	3

/* One call of record_usage or consume. */
typedef struct TmCall
{
	char	   *org_id;
	char	   *feature;
	char	   *conversation_id;
	char	   *key;
	int64		amount;
	MemoryContext cxt;
	TmOrgFeature of;
	TmSums		sums;			/* with the cache: before this call */
	bool		cached;			/* answered from the cache */
	bool		can_reserve;	/* the cache is there for this key (consume
								 * reserves in it even when this transaction
								 * bypasses it) */
	bool		reserved;		/* holds a reservation in the cache */
	TmCacheKey	ckey;
	uint32		hash;
} TmCall;

static void
tm_call_args(TmCall *c, FunctionCallInfo fcinfo)
{
	c->org_id = tm_arg_id(fcinfo, 0, "org_id");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: amount must not be NULL")));
	c->amount = PG_GETARG_INT64(1);
	c->feature = tm_arg_id(fcinfo, 2, "feature");
	c->conversation_id = tm_arg_text_or_null(fcinfo, 3, "conversation_id");
	c->key = tm_arg_text_or_null(fcinfo, 4, "idempotency_key");
	c->cxt = CurrentMemoryContext;
	c->reserved = false;
}

/*
 * Inside SPI: the org, feature and quota, from the cache when it can.  A
 * miss makes an entry if may_enter.
 */
static void
tm_call_load(TmCall *c, bool may_enter)
{
	c->can_reserve = tm_cache_enabled() &&
		tm_cache_key(&c->ckey, c->org_id, c->feature, &c->hash);
	c->cached = c->can_reserve && !tm_cache_bypass(c->org_id);
	if (c->cached)
	{
		if (!tm_cache_get(&c->ckey, c->hash, c->org_id, c->feature, &c->of, &c->sums, c->cxt))
			(void) tm_cache_build(&c->ckey, c->hash, c->org_id, c->feature,
								  &c->of, &c->sums, c->cxt, may_enter);
	}
	else
		tm_lookup(&c->of, c->org_id, c->feature, InvalidSnapshot, c->cxt);
	tm_check_amount(c->amount, c->of.is_gauge, c->feature);
}

/* With the cache: the current answer again (after waiting for another call). */
static void
tm_call_refresh(TmCall *c)
{
	if (c->cached &&
		!tm_cache_get(&c->ckey, c->hash, c->org_id, c->feature, &c->of, &c->sums, c->cxt))
		(void) tm_cache_build(&c->ckey, c->hash, c->org_id, c->feature,
							  &c->of, &c->sums, c->cxt, true);
}

/*
 * Creates the org if unknown; true if this call created it.  Another call
 * creating it at the same time makes this one wait for it: answer anew.
 */
static bool
tm_call_ensure_org(TmCall *c)
{
	bool		was_known = c->of.org_exists;
	bool		created = tm_ensure_org(&c->of);

	if (!was_known && !created)
		tm_call_refresh(c);
	return created;
}

static bool
tm_in_period(const TmOrgFeature *of, TimestampTz t)
{
	return of->is_gauge || (of->period.start <= t && t < of->period.end);
}

/*
 * Serializes the writers that must see each other's committed usage of one
 * (org, feature) on the table path: consume, and negative gauge deltas.
 * Held to the end of the transaction (a prepared one keeps it until COMMIT
 * or ROLLBACK PREPARED).  tm_lock_org_feature returns the snapshot to sum
 * under.
 */
void
tm_lock_org_feature_ids(const char *org_id, const char *feature)
{
	LOCKTAG		tag;
	StringInfoData key;
	uint64		h;

	initStringInfo(&key);
	appendBinaryStringInfo(&key, org_id, strlen(org_id) + 1);
	appendStringInfoString(&key, feature);
	h = hash_bytes_extended((const unsigned char *) key.data, key.len, 0);
	pfree(key.data);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, TM_LOCK_SPACE);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

static Snapshot
tm_lock_org_feature(const TmOrgFeature *of)
{
	tm_lock_org_feature_ids(of->org_id, of->feature);
	return tm_latest_snapshot();
}

/* The latest snapshot, with our own earlier writes visible. */
Snapshot
tm_latest_snapshot(void)
{
	CommandCounterIncrement();
	return GetLatestSnapshot();
}

/*
 * Was this call's idempotency key used already?  A key names one call: used
 * again with another feature or amount, it is an error (the first call's
 * values in the DETAIL), never a silent no-op.
 */
static bool
tm_key_exists(const TmCall *c, Snapshot snapshot)
{
	Datum		values[2];
	HeapTuple	row;
	TupleDesc	desc;
	char	   *feature;
	int64		amount;
	bool		isnull;

	values[0] = CStringGetTextDatum(c->of.org_id);
	values[1] = CStringGetTextDatum(c->key);
	if (SPI_execute_snapshot(tm_plan(TM_PLAN_KEY_EXISTS), values, NULL,
							 snapshot, InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: idempotency key lookup failed");
	if (SPI_processed == 0)
		return false;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	feature = SPI_getvalue(row, desc, 1);
	amount = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
	if (strcmp(feature, c->feature) != 0 || amount != c->amount)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: idempotency key \"%s\" was used for another call", c->key),
				 errdetail("The first call recorded " INT64_FORMAT " of \"%s\"; this one asks for " INT64_FORMAT " of \"%s\".",
						   amount, feature, c->amount, c->feature),
				 errhint("Repeat a call with exactly its values, or use a new key for a new call.")));
	return true;
}

/*
 * Is the row the INSERT returned (org_id, feature, amount, occurred_at) the
 * one the call asked for?  A user's BEFORE INSERT trigger may have changed
 * it; then the org it went to is marked too.
 */
static bool
tm_row_as_given(const TmCall *c, TimestampTz occurred_at)
{
	HeapTuple	row = SPI_tuptable->vals[0];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;
	char	   *org_id = SPI_getvalue(row, desc, 1);
	char	   *feature = SPI_getvalue(row, desc, 2);
	bool		amount_null;
	Datum		amount = SPI_getbinval(row, desc, 3, &amount_null);
	Datum		at = SPI_getbinval(row, desc, 4, &isnull);
	bool		same_org = org_id != NULL && strcmp(org_id, c->org_id) == 0;

	if (!same_org && org_id != NULL)
		tm_cache_org_changed(org_id, true);
	/* the columns retyped by hand: not a row a note could carry */
	if (SPI_gettypeid(desc, 3) != INT8OID || SPI_gettypeid(desc, 4) != TIMESTAMPTZOID)
		return false;
	return same_org && feature != NULL && strcmp(feature, c->feature) == 0 &&
		!amount_null && DatumGetInt64(amount) == c->amount &&
		!isnull && DatumGetTimestampTz(at) == occurred_at;
}

/*
 * Appends a ledger row; false if the idempotency key was already there (or
 * a trigger skipped the row).  *as_given is false if a trigger changed it.
 */
static bool
tm_insert_usage(const TmCall *c, TimestampTz occurred_at, bool *as_given)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	TmPlanId	plan = c->key ? TM_PLAN_INSERT_USAGE_KEYED : TM_PLAN_INSERT_USAGE;
	uint64		foreign = tm_foreign_rows;
	int			rc;

	*as_given = true;
	if (c->key == NULL &&
		tm_ledger_insert(c->org_id, c->feature, c->amount, occurred_at, c->conversation_id))
	{
		tm_memo_own_row(c->org_id, c->feature, occurred_at, c->amount, !c->cached);
		return true;
	}
	values[0] = CStringGetTextDatum(c->org_id);
	values[1] = CStringGetTextDatum(c->feature);
	values[2] = Int64GetDatum(c->amount);
	values[3] = TimestampTzGetDatum(occurred_at);
	if (c->conversation_id)
		values[4] = CStringGetTextDatum(c->conversation_id);
	else
		nulls[4] = 'n';
	if (c->key)
		values[5] = CStringGetTextDatum(c->key);
	/* a rule may rewrite the INSERT, which refuses RETURNING then */
	if (c->key == NULL && tm_ledger_has_rules())
		plan = TM_PLAN_INSERT_USAGE_RULES;
	rc = tm_execute_own_write(plan, values, nulls);
	if (rc != SPI_OK_INSERT_RETURNING && rc != SPI_OK_INSERT)
		elog(ERROR, "tiermeter: recording usage failed");
	if (SPI_processed == 0)
		return false;
	/*
	 * What the row became is known only from RETURNING (which also marks the
	 * org a trigger moved it to), and stands alone only if no trigger wrote
	 * other rows meanwhile.
	 */
	*as_given = rc == SPI_OK_INSERT_RETURNING &&
		tm_row_as_given(c, occurred_at) && tm_foreign_rows == foreign;
	if (*as_given)
		tm_memo_own_row(c->org_id, c->feature, occurred_at, c->amount, !c->cached);
	else
		tm_memo_forget();
	return true;
}

/* A negative gauge delta must not take the level below zero. */
static void
tm_check_gauge_floor(TmCall *c)
{
	TmSums		s;

	tm_require_org_here(c->org_id, "record_usage", "a negative gauge delta");
	s = tm_sums(&c->of, tm_lock_org_feature(&c->of), false);

	if (s.used + c->amount < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: gauge \"%s\" cannot go below zero", c->feature),
				 errdetail("The level is " INT64_FORMAT "; the delta is " INT64_FORMAT ".",
						   s.used, c->amount)));
}

/* Records the row; with the cache, notes it for the commit. */
static bool
tm_record(TmCall *c, TimestampTz occurred_at, bool created_org)
{
	bool		as_given;
	bool		inserted = tm_insert_usage(c, occurred_at, &as_given);

	if (inserted && !as_given)
	{
		/*
		 * A trigger of the user's changed the row: no note could carry it.
		 * The org's entries are rebuilt from the ledger after the commit,
		 * and this call answers from it, the row included.
		 */
		tm_cache_org_changed(c->org_id, true);
		c->cached = false;
	}
	else if (inserted && c->cached)
	{
		tm_cache_note(&c->ckey, c->hash, &c->of, c->amount, occurred_at, created_org);
		if (tm_in_period(&c->of, occurred_at) && tm_at_bound(c->sums.used))
		{
			/* a saturated sum: the ledger's, this row included */
			int64		reserved = c->sums.reserved;

			c->sums = tm_sums(&c->of, InvalidSnapshot, false);
			c->sums.reserved = reserved;
		}
		else if (tm_in_period(&c->of, occurred_at))
			c->sums.used = tm_add_sat(c->sums.used, c->amount);
	}
	else if (inserted && c->can_reserve)
	{
		/*
		 * Recorded on the table path while the cache holds this key (this
		 * transaction changed the org's config): no note carries the amount,
		 * so the org's entries are rebuilt from the ledger after the commit.
		 */
		tm_cache_org_changed(c->org_id, true);
	}
	else
	{
		/* a repeated key may have waited for its first call */
		if (!inserted && c->key != NULL)
			(void) tm_key_exists(c, tm_latest_snapshot());
		tm_call_refresh(c);
	}
	return inserted;
}

/* occurred_at must be finite and at most 5 minutes ahead of now() */
static void
tm_check_occurred_at(TimestampTz occurred_at, TimestampTz now)
{
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
}

/* record_usage's work, between tm_spi_begin and tm_spi_end */
static void
tm_record_call(TmCall *c, TimestampTz occurred_at)
{
	bool		created;
	bool		inserted;

	/*
	 * A big transaction's keys would only evict others' entries: its commit
	 * invalidates their entries instead of adding to them (cache_local.c).
	 */
	tm_call_load(c, !tm_cache_big_transaction());
	/* a replayed key returns the current status, whatever the level now */
	if (c->of.is_gauge && c->amount < 0 &&
		!(c->key != NULL && tm_key_exists(c, tm_latest_snapshot())))
		tm_check_gauge_floor(c);
	created = tm_call_ensure_org(c);
	inserted = tm_record(c, occurred_at, created);
	if (!c->cached)
		c->sums = tm_sums(&c->of, InvalidSnapshot, false);
	if (inserted && tm_in_period(&c->of, occurred_at))
		tm_alert(&c->of, &c->sums, &c->ckey, c->hash, c->cached);
}

/*
 * record_usage for the other C functions (touch_session), with no
 * idempotency key, inside their SPI connection: of and sums get the status
 * after it, of's strings in cxt.
 */
void
tm_record_usage(const char *org_id, int64 amount, const char *feature,
				const char *conversation_id, TimestampTz occurred_at,
				TmOrgFeature *of, TmSums *sums, MemoryContext cxt)
{
	TmCall		c;

	tm_check_occurred_at(occurred_at, GetCurrentTransactionStartTimestamp());
	c.org_id = (char *) org_id;
	c.feature = (char *) feature;
	c.conversation_id = (char *) conversation_id;
	c.key = NULL;
	c.amount = amount;
	c.cxt = cxt;
	c.reserved = false;
	tm_record_call(&c, occurred_at);
	*of = c.of;
	*sums = c.sums;
}

/*
 * record_usage(org_id, amount, feature, conversation_id, idempotency_key,
 *				occurred_at) RETURNS limit_status
 */
Datum
tiermeter_record_usage(PG_FUNCTION_ARGS)
{
	TmCall		c;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz occurred_at;
	TmOwnerSave save;

	tm_call_args(&c, fcinfo);
	occurred_at = PG_ARGISNULL(5) ? now : PG_GETARG_TIMESTAMPTZ(5);
	tm_check_occurred_at(occurred_at, now);

	tm_spi_begin(&save);
	tm_record_call(&c, occurred_at);
	tm_spi_end(&save);

	PG_RETURN_DATUM(tm_status_datum(fcinfo, &c.of, &c.sums, TM_REASON_AUTO));
}

/*
 * consume's decision on the table path, serialized by the advisory lock.
 * With the cache, the amount is reserved first, then the others' reservations
 * are read, then the ledger is summed: a cache-path consumer committing
 * meanwhile is counted (at worst twice, never not at all).
 */
static TmReason
tm_consume_table(TmCall *c)
{
	int64		others = 0;
	int64		quota;

	(void) tm_lock_org_feature(&c->of);
	if (c->can_reserve)
	{
		c->reserved = tm_cache_reserve_fallback(&c->ckey, c->hash, c->amount);
		others = tm_cache_reserved_by_others(&c->ckey, c->hash);
	}
	c->sums = tm_sums(&c->of, tm_latest_snapshot(), false);
	c->sums.reserved = others;
	if (c->of.unlimited)
		return TM_REASON_RECORDED;
	quota = tm_add_sat(c->of.base_quota, c->sums.granted);
	if (quota == 0 || tm_add_sat(tm_add_sat(c->sums.used, others), c->amount) > quota)
	{
		if (c->reserved)
			tm_cache_unreserve(&c->ckey, c->hash, c->amount);
		c->reserved = false;
		return TM_REASON_REFUSED;
	}
	return TM_REASON_RECORDED;
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
	TmCall		c;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TmOwnerSave save;
	TmReason	outcome = TM_REASON_RECORDED;
	bool		created;

	tm_call_args(&c, fcinfo);
	tm_require_org_here(c.org_id, "consume", "consume");

	tm_spi_begin(&save);
	tm_call_load(&c, true);		/* a reservation needs the entry */
	created = tm_call_ensure_org(&c);

	if (c.key != NULL)
	{
		Snapshot	snapshot = c.cached ? tm_latest_snapshot() : tm_lock_org_feature(&c.of);

		if (tm_key_exists(&c, snapshot))
		{
			/* a replay: the first call was recorded */
			if (!c.cached)
				c.sums = tm_sums(&c.of, snapshot, false);
			tm_spi_end(&save);
			PG_RETURN_DATUM(tm_status_datum(fcinfo, &c.of, &c.sums, TM_REASON_RECORDED));
		}
	}

	if (c.of.is_gauge && c.amount < 0)
		tm_check_gauge_floor(&c);	/* releasing: always allowed */
	else if (c.cached)
	{
		TmReserve	r = TM_RESERVE_MISS;
		int			attempt;

		for (attempt = 0; attempt < 3 && r == TM_RESERVE_MISS; attempt++)
		{
			if (attempt > 0)
				(void) tm_cache_build(&c.ckey, c.hash, c.org_id, c.feature,
									  &c.of, &c.sums, c.cxt, true);
			r = tm_cache_reserve(&c.ckey, c.hash, c.amount, &c.of, &c.sums);
		}
		if (r == TM_RESERVE_MISS)
			outcome = tm_consume_table(&c);
		else
		{
			outcome = (r == TM_RESERVE_OK) ? TM_REASON_RECORDED : TM_REASON_REFUSED;
			/* tm_record adds the amount itself */
			if (r == TM_RESERVE_OK)
			{
				c.sums.used -= c.amount;
				c.reserved = true;
			}
		}
	}
	else
		outcome = tm_consume_table(&c);

	if (outcome == TM_REASON_RECORDED)
	{
		/* false: the same key, recorded meanwhile by another call */
		bool		inserted = tm_record(&c, now, created);

		if (!inserted && c.reserved)
			tm_cache_unreserve(&c.ckey, c.hash, c.amount);
		if (!c.cached)
			c.sums = tm_sums(&c.of, tm_latest_snapshot(), false);
		if (inserted)
			tm_alert(&c.of, &c.sums, &c.ckey, c.hash, c.cached);
	}
	tm_spi_end(&save);

	PG_RETURN_DATUM(tm_status_datum(fcinfo, &c.of, &c.sums, outcome));
}
