/*
 * cache_inval.c
 *		Invalidation of config: triggers note what changed; the commit applies
 *		it (tm_apply_invalidations, called from tm_end_xact in cache_local.c).
 *		Until then this transaction answers for those orgs from the tables
 *		(tm_cache_bypass).
 *
 * Two kinds.  A change that may change an entry's usage or period (the
 * ledger, a feature, an org's anchor or stored period, an org inserted or
 * deleted) makes the entry invalid: it is rebuilt from the ledger.  A change
 * of quotas, tiers, thresholds, grants or an org's tier only marks it
 * config_stale: its quota, tier and thresholds are read again and its used,
 * which commits keep exact, is kept (no ledger sum, however big the org).
 */
#include "cache.h"

#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/rel.h"

TM_FUNCTION(tiermeter_invalidate_trigger);
TM_FUNCTION(tiermeter_invalidate_database);
TM_FUNCTION(tiermeter_invalidate_insert_trigger);

bool		tm_inval_all = false;		/* every org's config */
bool		tm_inval_all_usage = false;	/* every org's usage too */
HTAB	   *tm_inval_orgs = NULL;	/* TmInvalOrg, in TopTransactionContext */

/*
 * Is the org answered from the tables?  When this transaction changed its
 * config (or all), while a prepared transaction that touched it is
 * unresolved (cache_twophase.c), and when its rows are on another node of
 * a Citus cluster (citus.c).
 */
bool
tm_cache_bypass(const char *org_id)
{
	bool		bypass = tm_inval_all;

	if (!bypass && tm_inval_orgs != NULL)
	{
		char		buf[TM_KEY_LEN];

		memset(buf, 0, sizeof(buf));
		strlcpy(buf, org_id, sizeof(buf));
		bypass = hash_search(tm_inval_orgs, buf, HASH_FIND, NULL) != NULL;
	}
	if (!bypass && tm_shared != NULL)
		bypass = tm_cache_prepared_bypass(org_id);
	if (!bypass)
		bypass = tm_org_elsewhere(org_id);
	if (bypass && tm_shared != NULL)
		tm_count(TM_STAT_FALLBACKS);
	return bypass;
}

/*
 * An org's config (or, with usage, its usage too) changed in a way the
 * cache's notes do not carry: invalidate it when this transaction commits.
 */
void
tm_cache_org_changed(const char *org_id, bool usage)
{
	tm_inval_org(org_id, usage);
}

void
tm_inval_org(const char *org_id, bool usage)
{
	char		buf[TM_KEY_LEN];
	TmInvalOrg *o;
	bool		found;

	if (strlen(org_id) >= TM_KEY_LEN)
		return;					/* never cached */
	if (tm_inval_orgs == NULL)
	{
		HASHCTL		info;

		info.keysize = TM_KEY_LEN;
		info.entrysize = sizeof(TmInvalOrg);
		info.hcxt = TopTransactionContext;
		tm_inval_orgs = hash_create("tiermeter invalidations", 16, &info,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(buf, 0, sizeof(buf));
	strlcpy(buf, org_id, sizeof(buf));
	o = hash_search(tm_inval_orgs, buf, HASH_ENTER, &found);
	if (!found)
		o->usage = false;
	o->usage |= usage;
}

static void
tm_inval_tuple_org(TriggerData *td, HeapTuple tuple, bool usage)
{
	int			attno = SPI_fnumber(td->tg_relation->rd_att, "org_id");
	char	   *org;

	if (attno <= 0 || tuple == NULL)
	{
		/* a config table's row (replication fires row triggers only) */
		tm_inval_all = true;
		if (usage)
			tm_inval_all_usage = true;
		return;
	}
	org = SPI_getvalue(tuple, td->tg_relation->rd_att, attno);
	if (org != NULL)
		tm_inval_org(org, usage);
}

/*
 * Is rel the table name, or one of its shards on a Citus node (the name,
 * an underscore and the shard id)?  The triggers fire on the shards there.
 */
static bool
tm_rel_is(Relation rel, const char *name)
{
	const char *rel_name = RelationGetRelationName(rel);
	size_t		len = strlen(name);
	const char *p;

	if (strncmp(rel_name, name, len) != 0)
		return false;
	p = rel_name + len;
	if (*p == '\0')
		return true;
	if (*p++ != '_' || *p == '\0')
		return false;
	for (; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

/* Does a change to this table change quotas, tiers or thresholds only? */
static bool
tm_config_only_table(Relation rel)
{
	return tm_rel_is(rel, "tiers") || tm_rel_is(rel, "tier_quotas") ||
		tm_rel_is(rel, "alert_thresholds") || tm_rel_is(rel, "org_quotas") ||
		tm_rel_is(rel, "usage_grants");
}

/* An update of orgs that keeps the anchor and stored period changes the tier only. */
static bool
tm_org_period_changed(TriggerData *td)
{
	TupleDesc	desc = td->tg_relation->rd_att;
	const char *cols[] = {"org_id", "billing_anchor", "period_start", "period_end"};
	int			i;

	for (i = 0; i < lengthof(cols); i++)
	{
		int			attno = SPI_fnumber(desc, cols[i]);
		char	   *a;
		char	   *b;

		if (attno <= 0)
			return true;
		a = SPI_getvalue(td->tg_trigtuple, desc, attno);
		b = SPI_getvalue(td->tg_newtuple, desc, attno);
		if (a == NULL || b == NULL || strcmp(a, b) != 0)
			return true;
	}
	return false;
}

/*
 * Trigger: a row-level trigger invalidates the org of the old and new row;
 * a statement-level one (config tables, TRUNCATE) invalidates everything.
 */
Datum
tiermeter_invalidate_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "tiermeter: not called as a trigger");
	/* this transaction's sums can no longer be remembered (memo.c) */
	if (tm_rel_is(td->tg_relation, "usage_log") || tm_rel_is(td->tg_relation, "usage_grants"))
		tm_memo_forget();

	if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
	{
		bool		usage = !tm_config_only_table(td->tg_relation);

		if (usage && TRIGGER_FIRED_BY_UPDATE(td->tg_event) &&
			tm_rel_is(td->tg_relation, "orgs"))
			usage = tm_org_period_changed(td);
		if (!TRIGGER_FIRED_BY_INSERT(td->tg_event))
			tm_inval_tuple_org(td, td->tg_trigtuple, usage);
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
			tm_inval_tuple_org(td, td->tg_newtuple, usage);
		if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
			tm_inval_tuple_org(td, td->tg_trigtuple, usage);
	}
	else
	{
		tm_inval_all = true;
		if (!tm_config_only_table(td->tg_relation))
			tm_inval_all_usage = true;
	}
	return PointerGetDatum(NULL);
}

/*
 * BEFORE INSERT trigger of usage_log and orgs: a row the functions did not
 * write themselves (a backfill, COPY, pg_restore --data-only, logical
 * replication) invalidates its org at commit, and this transaction answers
 * for that org from the tables.  A BEFORE trigger that returns at once for
 * the functions' own rows queues nothing: the hot path pays one call.
 */
Datum
tiermeter_invalidate_insert_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "tiermeter: not called as a BEFORE INSERT FOR EACH ROW trigger");
	/* a row a user's trigger inserts during the functions' own is not theirs */
	if (!tm_own_write || tm_trigger_depth() != tm_own_write_depth)
	{
		if (tm_rel_is(td->tg_relation, "usage_log"))
			tm_memo_forget();
		tm_inval_tuple_org(td, td->tg_trigtuple, true);
		tm_foreign_rows++;
	}
	return PointerGetDatum(td->tg_trigtuple);
}

/* _invalidate_database(): forget every entry of this database at commit. */
Datum
tiermeter_invalidate_database(PG_FUNCTION_ARGS)
{
	tm_inval_all = true;
	tm_inval_all_usage = true;
	PG_RETURN_VOID();
}

/*
 * Marks one entry: invalid (rebuild from the ledger) or config_stale
 * (re-read config, keep used).  Caller holds its partition lock exclusively.
 */
static void
tm_inval_entry(TmEntry *e, bool usage)
{
	if (usage)
		e->valid = false;
	else
		e->config_stale = true;
	e->changes = pg_atomic_fetch_add_u64(&tm_shared->change_seq, 1);
	if (e->build >= 0)
		tm_shared->builds[e->build].spoiled = true;
	tm_count(TM_STAT_INVALIDATIONS);
}

/*
 * Every entry of this database (config tables, TRUNCATE): one scan.  With
 * all, every entry (invalid if all_usage); else those of orgs.
 */
static void
tm_inval_scan_for(Oid dbid, bool all, bool all_usage, HTAB *orgs)
{
	HASH_SEQ_STATUS seq;
	TmEntry    *e;
	int			i;

	for (i = 0; i < TM_PARTITIONS; i++)
		LWLockAcquire(&tm_shared->locks[i].lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, tm_htab);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		TmInvalOrg *o = NULL;

		if (e->key.dbid != dbid)
			continue;
		if (orgs != NULL)
			o = hash_search(orgs, e->key.org_id, HASH_FIND, NULL);
		if (!all && o == NULL)
			continue;
		tm_inval_entry(e, all_usage || (o != NULL && o->usage));
	}
	for (i = TM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&tm_shared->locks[i].lock);
}

static void
tm_inval_scan(void)
{
	tm_inval_scan_for(MyDatabaseId, tm_inval_all, tm_inval_all_usage, tm_inval_orgs);
}

/*
 * One org's entries, each (org, feature) looked up under its own partition
 * lock.  Allocates nothing: it cannot fail.
 */
static void
tm_inval_one_org(Oid dbid, const char *org_id, bool usage)
{
	TmCacheKey	key;
	int			nfeatures = tm_feature_count();
	int			f;

	memset(&key, 0, sizeof(key));
	key.dbid = dbid;
	strlcpy(key.org_id, org_id, TM_KEY_LEN);
	for (f = 0; f < nfeatures; f++)
	{
		uint32		hash;
		LWLock	   *lock;
		TmEntry    *e;

		memset(key.feature, 0, TM_KEY_LEN);
		strlcpy(key.feature, tm_feature_name(f), TM_KEY_LEN);
		hash = get_hash_value(tm_htab, &key);
		lock = tm_lock_for(hash);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = hash_search_with_hash_value(tm_htab, &key, hash, HASH_FIND, NULL);
		if (e != NULL)
			tm_inval_entry(e, usage);
		LWLockRelease(lock);
	}
}

/*
 * One key's entry, if there is one, made invalid: its usage is read from
 * the ledger again.  Allocates nothing: it cannot fail.
 */
void
tm_inval_key(const TmCacheKey *key, uint32 hash)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	if (e != NULL)
		tm_inval_entry(e, true);
	LWLockRelease(lock);
}

/*
 * The entries of the orgs this transaction changed: looked up one by one,
 * so the cost is the orgs' and no lock is held for long, whatever the cache
 * size.  An entry created after its lookup is built from a snapshot that
 * sees this commit (it is visible before the callback runs), so it needs
 * no mark.
 */
static void
tm_inval_lookup(void)
{
	HASH_SEQ_STATUS seq;
	TmInvalOrg *o;

	hash_seq_init(&seq, tm_inval_orgs);
	while ((o = hash_seq_search(&seq)) != NULL)
		tm_inval_one_org(MyDatabaseId, o->org_id, o->usage);
}

/*
 * Now, not at commit, and without allocating (a prepared transaction's
 * end, cache_twophase.c, in any database's backend): the usage of every
 * org of database dbid, or of each of orgs.
 */
void
tm_inval_now(Oid dbid, bool all, const char (*orgs)[TM_KEY_LEN], int norgs)
{
	int			i;

	if (all || tm_shared->features_overflow)
	{
		tm_inval_scan_for(dbid, true, true, NULL);
		return;
	}
	for (i = 0; i < norgs; i++)
		tm_inval_one_org(dbid, orgs[i], true);
}

/*
 * Looks the orgs' entries up, unless that would cost more than one scan of
 * the table (many orgs times many feature names).
 */
void
tm_apply_invalidations(void)
{
	if (tm_inval_all || tm_shared->features_overflow)
		tm_inval_scan();
	else if (tm_inval_orgs != NULL)
	{
		double		lookups = (double) hash_get_num_entries(tm_inval_orgs) * tm_feature_count();

		if (lookups > (double) hash_get_num_entries(tm_htab))
			tm_inval_scan();
		else
			tm_inval_lookup();
	}
}
