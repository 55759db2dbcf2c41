/*
 * cache_stats.c
 *		cache_stats() and cache_stats_reset(): the shared-memory cache's own
 *		statistics, cluster-wide, as pg_stat_statements_info reports its own.
 *
 * Each backend counts in its own slot (tm_count, cache.h), so the hit path
 * touches no shared counter; a read sums the slots.  A reset records the
 * sums at that moment and later reads subtract them.
 */
#include "cache.h"

#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

TM_FUNCTION(tiermeter_cache_stats);
TM_FUNCTION(tiermeter_cache_stats_reset);
TM_FUNCTION(tiermeter_undo_visits);

static void
tm_stats_sum(uint64 *sum)
{
	int			i;
	int			j;

	memset(sum, 0, sizeof(uint64) * TM_NSTATS);
	for (i = 0; i < tm_shared->nstat_slots; i++)
		for (j = 0; j < TM_NSTATS; j++)
			sum[j] += pg_atomic_read_u64(&tm_stats[i].n[j]);
}

/*
 * cache_stats(): entries, capacity, hits, misses, builds, refreshes,
 * evictions, fallbacks, invalidations, stats_reset.  Without the library
 * preloaded there is no cache: capacity 0, every count 0, stats_reset NULL.
 */
Datum
tiermeter_cache_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[3 + TM_NSTATS];
	bool		nulls[3 + TM_NSTATS];
	uint64		sum[TM_NSTATS];
	int			j;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "tiermeter: cache_stats must return a record");
	if (desc->natts != 3 + TM_NSTATS)
		elog(ERROR, "tiermeter: cache_stats returns %d columns, expected %d",
			 desc->natts, 3 + TM_NSTATS);
	memset(nulls, 0, sizeof(nulls));

	if (tm_shared != NULL)
	{
		uint64		base[TM_NSTATS];
		TimestampTz reset;

		tm_stats_sum(sum);
		SpinLockAcquire(&tm_shared->stats_mutex);
		memcpy(base, tm_shared->stats_base, sizeof(base));
		reset = tm_shared->stats_reset;
		SpinLockRelease(&tm_shared->stats_mutex);
		for (j = 0; j < TM_NSTATS; j++)
			sum[j] = sum[j] > base[j] ? sum[j] - base[j] : 0;
		values[0] = Int64GetDatum((int64) hash_get_num_entries(tm_htab));
		values[1] = Int64GetDatum((int64) tm_cache_capacity());
		values[2 + TM_NSTATS] = TimestampTzGetDatum(reset);
	}
	else
	{
		memset(sum, 0, sizeof(sum));
		values[0] = Int64GetDatum(0);
		values[1] = Int64GetDatum(0);
		values[2 + TM_NSTATS] = (Datum) 0;
		nulls[2 + TM_NSTATS] = true;
	}
	for (j = 0; j < TM_NSTATS; j++)
		values[2 + j] = Int64GetDatum((int64) Min(sum[j], (uint64) PG_INT64_MAX));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* cache_stats_reset(): counts start again from 0 (entries stay). */
Datum
tiermeter_cache_stats_reset(PG_FUNCTION_ARGS)
{
	uint64		sum[TM_NSTATS];

	if (tm_shared == NULL)
		PG_RETURN_VOID();
	tm_stats_sum(sum);
	SpinLockAcquire(&tm_shared->stats_mutex);
	memcpy(tm_shared->stats_base, sum, sizeof(sum));
	tm_shared->stats_reset = GetCurrentTimestamp();
	SpinLockRelease(&tm_shared->stats_mutex);
	PG_RETURN_VOID();
}

/*
 * _undo_visits(): the undo records this backend looked at when its
 * subtransactions rolled back.  The tests check that it grows with the
 * records, not with records times subtransactions.
 */
Datum
tiermeter_undo_visits(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) tm_cache_undo_visits());
}
