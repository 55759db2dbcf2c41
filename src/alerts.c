/*
 * alerts.c
 *		threshold_reached events: one row of limit_events per (org, period
 *		feature, period, threshold of alert_thresholds), written by the
 *		transaction that records usage and sees the threshold reached (its
 *		own usage included).
 *
 * Exactly once, and no writer ever waits: a crosser tries a transaction
 * advisory lock of the event; the one that gets it looks again (a previous
 * holder's commit is visible before its lock is released) and inserts it if
 * it is still missing (ON CONFLICT DO NOTHING on the unique index
 * limit_events_threshold_once); the others go on without it.  A crossing rolled back (with its transaction or its
 * savepoint) leaves no row, and the next writer that sees the threshold
 * reached writes it.  Each row sends NOTIFY tiermeter through the table's
 * trigger.
 *
 * The hot path stays hot: a call that reaches no threshold compares a few
 * integers; one above a threshold whose event the cache entry knows to be
 * committed (TmOrgFeature.alerted) does the same.  Only an unknown state
 * costs a query: on the table path, or once after a crossing.
 */
#include "tiermeter.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "common/int128.h"
#include "lib/stringinfo.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/* advisory lock space of the event locks (usage.c uses 3) */
#define TM_ALERT_LOCK_SPACE	4

/* Is used at least percent % of quota?  Exact, whatever the magnitudes. */
static bool
tm_reached(int64 used, int64 quota, int32 percent)
{
	INT128		lhs = int64_to_int128(0);
	INT128		rhs = int64_to_int128(0);

	int128_add_int64_mul_int64(&lhs, used, 100);
	int128_add_int64_mul_int64(&rhs, quota, percent);
	return int128_compare(lhs, rhs) >= 0;
}

/*
 * Tries the lock of one event (org, feature, period, threshold), held to the
 * end of the transaction; false if another transaction holds it.
 */
static bool
tm_alert_lock(const TmOrgFeature *of, int32 threshold)
{
	LOCKTAG		tag;
	StringInfoData key;
	uint64		h;

	initStringInfo(&key);
	appendBinaryStringInfo(&key, of->org_id, strlen(of->org_id) + 1);
	appendBinaryStringInfo(&key, of->feature, strlen(of->feature) + 1);
	appendBinaryStringInfo(&key, (const char *) &of->period.start, sizeof(TimestampTz));
	appendBinaryStringInfo(&key, (const char *) &threshold, sizeof(int32));
	h = hash_bytes_extended((const unsigned char *) key.data, key.len, 0);
	pfree(key.data);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, TM_ALERT_LOCK_SPACE);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * The thresholds of of->thresholds whose event of the current period is
 * committed (as the snapshot sees it), as a mask.
 */
uint32
tm_alerted_mask(const TmOrgFeature *of, Snapshot snapshot)
{
	Datum		values[3];
	uint32		mask = 0;
	uint64		r;

	if (of->is_gauge || of->nthresholds == 0)
		return 0;
	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = CStringGetTextDatum(of->feature);
	values[2] = TimestampTzGetDatum(of->period.start);
	if (SPI_execute_snapshot(tm_plan(TM_PLAN_ALERTED), values, NULL,
							 snapshot, InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: threshold event lookup failed");
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int32		t = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r],
												   SPI_tuptable->tupdesc, 1, &isnull));
		int			i;

		for (i = 0; i < of->nthresholds; i++)
			if (!isnull && of->thresholds[i] == t)
				mask |= ((uint32) 1) << i;
	}
	return mask;
}

/* The thresholds used reaches, as a mask (0 for gauges and unlimited). */
static uint32
tm_reached_mask(const TmOrgFeature *of, int64 used, int64 granted)
{
	int64		quota;
	uint32		reached = 0;
	int			i;

	if (of->is_gauge || of->unlimited || of->nthresholds == 0)
		return 0;
	quota = tm_add_sat(of->base_quota, granted);
	if (quota <= 0)
		return 0;				/* not included: nothing to reach */
	for (i = 0; i < of->nthresholds; i++)
		if (tm_reached(used, quota, of->thresholds[i]))
			reached |= ((uint32) 1) << i;
	return reached;
}

/*
 * For a build: the events known, looked up only when usage reaches a
 * threshold (below them a missing bit costs nothing: a writer that reaches
 * one looks again).
 */
uint32
tm_alerted_for_build(const TmOrgFeature *of, int64 used, int64 granted, Snapshot snapshot)
{
	if (tm_reached_mask(of, used, granted) == 0)
		return 0;
	return tm_alerted_mask(of, snapshot);
}

/* Inserts one event (its lock held, so no concurrent writer of it). */
static void
tm_alert_insert(const TmOrgFeature *of, const TmSums *sums, int32 threshold)
{
	Datum		values[5];

	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = CStringGetTextDatum(of->feature);
	values[2] = Int32GetDatum(threshold);
	values[3] = TimestampTzGetDatum(of->period.start);
	values[4] = CStringGetTextDatum(psprintf("{\"used\": " INT64_FORMAT ", \"quota\": " INT64_FORMAT "}",
											 sums->used, tm_add_sat(of->base_quota, sums->granted)));
	if (SPI_execute_plan(tm_plan(TM_PLAN_INSERT_ALERT), values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "tiermeter: writing a threshold event failed");
}

/*
 * After this call recorded usage: writes the threshold_reached events the
 * period's usage now reaches and that are not known to exist.  Inside SPI,
 * as the extension's owner.  sums->used includes this transaction's usage.
 */
void
tm_alert(TmOrgFeature *of, const TmSums *sums, const TmCacheKey *key, uint32 hash,
		 bool cached)
{
	uint32		reached = tm_reached_mask(of, sums->used, sums->granted);
	uint32		known;
	int32		percents[TM_MAX_THRESHOLDS];
	int			n = 0;
	int			i;

	if (reached == 0)
		return;
	if (of->alerted_known && (reached & ~of->alerted) == 0)
		return;					/* every event is there already */
	if (cached && key != NULL &&
		(reached & ~(of->alerted | tm_cache_own_alerted(key, of))) == 0)
		return;					/* this transaction wrote the others */

	/* on the table path, or after a crossing: look */
	known = tm_alerted_mask(of, tm_latest_snapshot());
	for (i = 0; i < of->nthresholds; i++)
	{
		uint32		bit = ((uint32) 1) << i;

		if (!(reached & bit))
			continue;
		/*
		 * Never wait for another crosser: whoever holds this event's lock
		 * writes it (or, if it rolls back, a later writer does).  Its commit
		 * is visible before its lock goes, so a holder looks again.
		 */
		if (!(known & bit))
		{
			if (!tm_alert_lock(of, of->thresholds[i]))
				continue;
			if (!(tm_alerted_mask(of, tm_latest_snapshot()) & bit))
				tm_alert_insert(of, sums, of->thresholds[i]);
		}
		percents[n++] = of->thresholds[i];
	}
	/* the entry learns of them when (and if) this transaction commits */
	if (cached && key != NULL)
		tm_cache_note_alerted(key, hash, of->period.start, percents, n);
}
