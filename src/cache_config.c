/*
 * cache_config.c
 *		The backend's copy of the configuration tables (features, tiers,
 *		tier_quotas, alert_thresholds), for the cache's builds.
 *
 * A build answers one org and feature from the tables.  What is the same
 * for every org (the feature's kind, the tiers and their quotas, the alert
 * thresholds) each backend keeps a copy of, read again whenever a commit
 * changed a config table, in any session.  A build then reads only the
 * org's own rows and its sums, in one query, instead of the lookup's join of
 * six relations and then the sums.
 *
 * The copy must agree with the snapshot the build reads the org under.  A
 * commit that changed a config table counts itself in config_inflight at
 * PRE_COMMIT, before it becomes visible, and at COMMIT (or ABORT), once
 * visible, bumps config_gen and leaves config_inflight, before COMMIT
 * returns to its client.  A build reads config_gen, takes its snapshot, and
 * uses the copy only if no such commit is in flight and config_gen has not
 * moved: then every config commit its snapshot sees has bumped config_gen
 * before it was read, and the copy, read under a snapshot taken under the
 * same conditions at that generation, has them too.  Otherwise the build
 * reads the tables (tm_lookup), as do a transaction that changed config
 * itself (it bypasses the cache) and every call without the preloaded
 * library.
 */
#include "cache.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct TmCfgQuota
{
	char	   *tier_id;
	char	   *feature;
	bool		unlimited;
	int64		quota;
} TmCfgQuota;

typedef struct TmCfgTier
{
	char	   *tier_id;
	int64		max_session_seconds;	/* -1: unlimited */
	int32		max_active_sessions;	/* -1: unlimited */
} TmCfgTier;

static struct
{
	bool		valid;
	Oid			dbid;
	uint64		gen;
	MemoryContext cxt;
	int			nfeatures;
	char	  **features;
	bool	   *is_gauge;
	int			ntiers;
	TmCfgTier  *tiers;
	const char *default_tier;	/* NULL: none */
	int			nquotas;
	TmCfgQuota *quotas;
	int			nthresholds;
	int32		thresholds[TM_MAX_THRESHOLDS];
	bool		has_warning;
	int32		warning_percent;
} cfg;

/* The generation of the config tables now (read before the snapshot). */
uint64
tm_config_gen(void)
{
	return pg_atomic_read_u64(&tm_shared->config_gen);
}

/* this transaction counted itself in config_inflight */
static bool tm_config_announced = false;

/* PRE_COMMIT of a transaction: if it changed a config table, say so. */
void
tm_config_pre_commit(void)
{
	if (tm_inval_all && !tm_config_announced)
	{
		pg_atomic_fetch_add_u32(&tm_shared->config_inflight, 1);
		tm_config_announced = true;
	}
}

/* COMMIT (visible now) or ABORT: every backend reads its copy again. */
void
tm_config_end_xact(void)
{
	if (tm_config_announced && tm_shared != NULL)
	{
		pg_atomic_fetch_add_u64(&tm_shared->config_gen, 1);
		pg_atomic_fetch_sub_u32(&tm_shared->config_inflight, 1);
	}
	tm_config_announced = false;
}

static SPITupleTable *
tm_cfg_query(TmPlanId id, Snapshot snapshot)
{
	if (SPI_execute_snapshot(tm_plan(id), NULL, NULL, snapshot, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: reading the config tables failed");
	return SPI_tuptable;
}

static int64
tm_cfg_int(HeapTuple tup, TupleDesc desc, int col, int64 if_null)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return if_null;
	return TupleDescAttr(desc, col - 1)->atttypid == INT8OID ?
		DatumGetInt64(d) : (int64) DatumGetInt32(d);	/* int4 */
}

static char *
tm_cfg_str(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : MemoryContextStrdup(cfg.cxt, TextDatumGetCString(d));
}

/* Reads the copy again (inside SPI). */
static void
tm_cfg_load(Snapshot snapshot, uint64 gen)
{
	SPITupleTable *t;
	uint64		i;

	cfg.valid = false;
	if (cfg.cxt == NULL)
		cfg.cxt = AllocSetContextCreate(TopMemoryContext, "tiermeter config",
										ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(cfg.cxt);
	/* (every SPI call ends in SPI's own context: allocate in cfg.cxt by name) */

	t = tm_cfg_query(TM_PLAN_CFG_FEATURES, snapshot);
	cfg.nfeatures = (int) SPI_processed;
	cfg.features = MemoryContextAlloc(cfg.cxt, sizeof(char *) * (cfg.nfeatures + 1));
	cfg.is_gauge = MemoryContextAlloc(cfg.cxt, sizeof(bool) * (cfg.nfeatures + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		cfg.features[i] = tm_cfg_str(t->vals[i], t->tupdesc, 1);
		cfg.is_gauge[i] = tm_cfg_int(t->vals[i], t->tupdesc, 2, 0) != 0;
	}

	t = tm_cfg_query(TM_PLAN_CFG_TIERS, snapshot);
	cfg.ntiers = (int) SPI_processed;
	cfg.tiers = MemoryContextAlloc(cfg.cxt, sizeof(TmCfgTier) * (cfg.ntiers + 1));
	cfg.default_tier = NULL;
	for (i = 0; i < SPI_processed; i++)
	{
		cfg.tiers[i].tier_id = tm_cfg_str(t->vals[i], t->tupdesc, 1);
		cfg.tiers[i].max_session_seconds = tm_cfg_int(t->vals[i], t->tupdesc, 2, -1);
		cfg.tiers[i].max_active_sessions = (int32) tm_cfg_int(t->vals[i], t->tupdesc, 3, -1);
		if (tm_cfg_int(t->vals[i], t->tupdesc, 4, 0) != 0 && cfg.default_tier == NULL)
			cfg.default_tier = cfg.tiers[i].tier_id;
	}

	t = tm_cfg_query(TM_PLAN_CFG_QUOTAS, snapshot);
	cfg.nquotas = (int) SPI_processed;
	cfg.quotas = MemoryContextAlloc(cfg.cxt, sizeof(TmCfgQuota) * (cfg.nquotas + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		TmCfgQuota *q = &cfg.quotas[i];
		bool		isnull;

		q->tier_id = tm_cfg_str(t->vals[i], t->tupdesc, 1);
		q->feature = tm_cfg_str(t->vals[i], t->tupdesc, 2);
		(void) SPI_getbinval(t->vals[i], t->tupdesc, 3, &isnull);
		q->unlimited = isnull;
		q->quota = tm_cfg_int(t->vals[i], t->tupdesc, 3, 0);
	}

	/* ascending: the lowest below 100 warns, the lowest few get events */
	t = tm_cfg_query(TM_PLAN_CFG_THRESHOLDS, snapshot);
	cfg.nthresholds = 0;
	cfg.has_warning = false;
	cfg.warning_percent = 0;
	for (i = 0; i < SPI_processed; i++)
	{
		int32		p = (int32) tm_cfg_int(t->vals[i], t->tupdesc, 1, 0);

		if (i == 0 && p < 100)
		{
			cfg.has_warning = true;
			cfg.warning_percent = p;
		}
		if (cfg.nthresholds < TM_MAX_THRESHOLDS)
			cfg.thresholds[cfg.nthresholds++] = p;
	}

	cfg.dbid = MyDatabaseId;
	cfg.gen = gen;
	cfg.valid = true;
}

static int
tm_cfg_feature(const char *feature)
{
	int			i;

	for (i = 0; i < cfg.nfeatures; i++)
		if (strcmp(cfg.features[i], feature) == 0)
			return i;
	return -1;
}

static const TmCfgTier *
tm_cfg_tier(const char *tier_id)
{
	int			i;

	for (i = 0; i < cfg.ntiers; i++)
		if (strcmp(cfg.tiers[i].tier_id, tier_id) == 0)
			return &cfg.tiers[i];
	return NULL;
}

static const TmCfgQuota *
tm_cfg_quota(const char *tier_id, const char *feature)
{
	int			i;

	for (i = 0; i < cfg.nquotas; i++)
		if (strcmp(cfg.quotas[i].feature, feature) == 0 &&
			strcmp(cfg.quotas[i].tier_id, tier_id) == 0)
			return &cfg.quotas[i];
	return NULL;
}

/*
 * What tm_scan_org_sums reads, by the query TM_PLAN_ORG_SUMS: when the
 * indexes cannot be read directly (the tables distributed with Citus, or
 * not as the install script made them).
 */
static void
tm_query_org_sums(const char *org_id, const char *feature, bool is_gauge,
				  TimestampTz now, Snapshot snapshot, TmScanOrg *r)
{
	Datum		values[5];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	values[0] = CStringGetTextDatum(org_id);
	values[1] = CStringGetTextDatum(feature);
	values[2] = TimestampTzGetDatum(now);
	values[3] = BoolGetDatum(is_gauge);
	values[4] = TimestampTzGetDatum(tm_month_start_utc(now));
	if (SPI_execute_snapshot(tm_plan(TM_PLAN_ORG_SUMS), values, NULL, snapshot,
							 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "tiermeter: org lookup failed");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	r->org_exists = !heap_attisnull(tup, 1, desc);
	r->tier_id = r->org_exists ? TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull)) : NULL;
	r->period.start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	r->period.end = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
	if (r->org_exists)
	{
		r->anchor = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		r->stored.start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		r->stored.end = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	}
	else
	{
		r->anchor = tm_month_start_utc(now);
		r->stored = r->period;
	}
	r->has_override = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	(void) SPI_getbinval(tup, desc, 8, &isnull);
	r->override_unlimited = r->has_override && isnull;
	r->override_quota = r->has_override && !isnull ?
		DatumGetInt64(SPI_getbinval(tup, desc, 8, &isnull)) : 0;
	r->used = DatumGetInt64(SPI_getbinval(tup, desc, 9, &isnull));
	r->granted = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));
}

/*
 * What tm_lookup and tm_sums answer for a build, from the copy of the
 * config tables and one query for the org's rows and sums, under snapshot
 * (taken after gen was read).  False if the copy cannot answer (a config
 * commit in flight or since gen, a feature it does not know, no default
 * tier): the caller reads the tables, which give any error.
 */
bool
tm_lookup_sums_cached(TmOrgFeature *of, TmSums *sums, const char *org_id,
					  const char *feature, Snapshot snapshot, uint64 gen,
					  MemoryContext cxt)
{
	int			f;
	TmScanOrg	r;
	char	   *tier_id;
	const TmCfgTier *tier;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	pg_memory_barrier();
	if (pg_atomic_read_u32(&tm_shared->config_inflight) != 0 || tm_config_gen() != gen)
		return false;
	if (!cfg.valid || cfg.gen != gen || cfg.dbid != MyDatabaseId)
		tm_cfg_load(snapshot, gen);
	f = tm_cfg_feature(feature);
	if (f < 0)
		return false;

	if (!tm_scan_org_sums(org_id, feature, cfg.is_gauge[f], now,
						  tm_month_start_utc(now), snapshot, &r))
		tm_query_org_sums(org_id, feature, cfg.is_gauge[f], now, snapshot, &r);

	tier_id = r.org_exists ? r.tier_id : (char *) cfg.default_tier;
	if (tier_id == NULL || (tier = tm_cfg_tier(tier_id)) == NULL)
		return false;
	of->org_id = MemoryContextStrdup(cxt, org_id);
	of->feature = MemoryContextStrdup(cxt, feature);
	of->tier_id = MemoryContextStrdup(cxt, tier_id);
	of->org_exists = r.org_exists;
	of->is_gauge = cfg.is_gauge[f];
	of->period = r.period;
	of->anchor = r.anchor;
	/* a new org: anchored at the first of this calendar month, UTC */
	of->stored = r.org_exists ? r.stored : r.period;

	/* the org's override, else the tier's quota (none: not included) */
	if (r.has_override)
	{
		of->unlimited = r.override_unlimited;
		of->base_quota = r.override_quota;
	}
	else
	{
		const TmCfgQuota *q = tm_cfg_quota(tier_id, feature);

		of->unlimited = q != NULL && q->unlimited;
		of->base_quota = q != NULL ? q->quota : 0;
	}
	of->has_warning = cfg.has_warning;
	of->warning_percent = cfg.warning_percent;
	of->nthresholds = cfg.nthresholds;
	memcpy(of->thresholds, cfg.thresholds, sizeof(int32) * cfg.nthresholds);
	of->alerted_known = false;
	of->alerted = 0;
	of->max_session_seconds = tier->max_session_seconds;
	of->max_active_sessions = tier->max_active_sessions;

	sums->used = r.used;
	sums->granted = r.granted;
	sums->reserved = 0;
	return true;
}
