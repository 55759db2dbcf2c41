/*
 * cache_inval.c
 *		Invalidation of config: triggers note what changed; the commit applies
 *		it (tm_apply_invalidations, called from tm_end_xact in cache_local.c).
 *		Until then this transaction answers for those orgs from the tables
 *		(tm_cache_bypass).
 */
#include "cache.h"

#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/rel.h"

TM_FUNCTION(tiermeter_invalidate_trigger);
TM_FUNCTION(tiermeter_invalidate_database);
TM_FUNCTION(tiermeter_invalidate_insert_trigger);

bool		tm_inval_all = false;
HTAB	   *tm_inval_orgs = NULL;	/* org ids, in TopTransactionContext */

/* Did this transaction change the config of this org (or all)? */
bool
tm_cache_bypass(const char *org_id)
{
	if (tm_inval_all)
		return true;
	if (tm_inval_orgs != NULL)
	{
		char		buf[TM_KEY_LEN];

		memset(buf, 0, sizeof(buf));
		strlcpy(buf, org_id, sizeof(buf));
		return hash_search(tm_inval_orgs, buf, HASH_FIND, NULL) != NULL;
	}
	return false;
}

static void
tm_inval_org(const char *org_id)
{
	char		buf[TM_KEY_LEN];

	if (strlen(org_id) >= TM_KEY_LEN)
		return;					/* never cached */
	if (tm_inval_orgs == NULL)
	{
		HASHCTL		info;

		info.keysize = TM_KEY_LEN;
		info.entrysize = TM_KEY_LEN;
		info.hcxt = TopTransactionContext;
		tm_inval_orgs = hash_create("tiermeter invalidations", 16, &info,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(buf, 0, sizeof(buf));
	strlcpy(buf, org_id, sizeof(buf));
	(void) hash_search(tm_inval_orgs, buf, HASH_ENTER, NULL);
}

static void
tm_inval_tuple_org(TriggerData *td, HeapTuple tuple)
{
	int			attno = SPI_fnumber(td->tg_relation->rd_att, "org_id");
	char	   *org;

	if (attno <= 0 || tuple == NULL)
	{
		tm_inval_all = true;
		return;
	}
	org = SPI_getvalue(tuple, td->tg_relation->rd_att, attno);
	if (org != NULL)
		tm_inval_org(org);
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

	if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
	{
		if (!TRIGGER_FIRED_BY_INSERT(td->tg_event))
			tm_inval_tuple_org(td, td->tg_trigtuple);
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
			tm_inval_tuple_org(td, td->tg_newtuple);
		if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
			tm_inval_tuple_org(td, td->tg_trigtuple);
	}
	else
		tm_inval_all = true;
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
	if (!tm_own_write)
		tm_inval_tuple_org(td, td->tg_trigtuple);
	return PointerGetDatum(td->tg_trigtuple);
}

/* _invalidate_database(): forget every entry of this database at commit. */
Datum
tiermeter_invalidate_database(PG_FUNCTION_ARGS)
{
	tm_inval_all = true;
	PG_RETURN_VOID();
}

void
tm_apply_invalidations(void)
{
	HASH_SEQ_STATUS seq;
	TmEntry    *e;
	int			i;

	pg_atomic_fetch_add_u64(&tm_shared->generation, 1);
	for (i = 0; i < TM_PARTITIONS; i++)
		LWLockAcquire(&tm_shared->locks[i].lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, tm_htab);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dbid != MyDatabaseId)
			continue;
		if (tm_inval_all ||
			hash_search(tm_inval_orgs, e->key.org_id, HASH_FIND, NULL) != NULL)
		{
			e->valid = false;
			if (e->build >= 0)
				tm_shared->builds[e->build].spoiled = true;
		}
	}
	for (i = TM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&tm_shared->locks[i].lock);
}
