/*
 * citus.c
 *		Where an org's rows live once distribute() has spread tiermeter's
 *		tables over a Citus cluster.
 *
 * On such a node the shared-memory cache may answer for an org only if the
 * org's shard of the co-located tables (orgs, usage_log, ...) is placed on
 * this node: every write to those rows, from whatever node it came, fires
 * this node's triggers and commits here, so the entries stay right.  Any
 * other org is answered from the tables, which Citus routes to the node
 * that holds them.  consume (and a negative gauge delta) rests on this
 * node's locks for its exactness, so it refuses an org held elsewhere: Citus
 * delegates it to the right node when it is called as a statement of its
 * own outside a transaction block.
 *
 * The placement map (the hash ranges of orgs' shards, and whether each is
 * placed here) is read once per backend, and again after a relcache
 * invalidation of orgs, which Citus sends whenever it adds or removes a
 * placement of one of its shards.  A backend that finds the placements
 * held here changed (the first distribution, a shard moved in or out)
 * drops every entry of the database and makes every backend read the
 * configuration again: entries built before from other rows (the node's
 * own tables before distribute(), or the shard's rows before it moved
 * away and back) are never served.
 */
#include "cache.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "storage/spin.h"
#include "utils/memutils.h"

typedef struct TmShardRange
{
	int32		min;
	int32		max;
	bool		local;
	int64		shard;			/* the local shard table's oid, or 0 */
} TmShardRange;

static bool tm_citus_valid = false;
static bool tm_citus_registered = false;
static Oid	tm_citus_orgs = InvalidOid;
static bool tm_citus_distributed = false;
static TmShardRange *tm_citus_ranges = NULL;	/* in TopMemoryContext */
static int	tm_citus_nranges = 0;

static void
tm_citus_relcache(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == tm_citus_orgs)
		tm_citus_valid = false;
}

/*
 * A signature of what this node holds: 0 when nothing is distributed.  It
 * is made of the local shard tables' oids: a shard that moves away and
 * back comes back as a new table (Citus keeps the placement's id, and a
 * backend here need not have looked while it was gone), and changes it.
 */
static uint64
tm_citus_signature(void)
{
	uint64		sig = 1;
	int			i;

	if (!tm_citus_distributed)
		return 0;
	for (i = 0; i < tm_citus_nranges; i++)
		if (tm_citus_ranges[i].local)
			sig = hash_combine64(sig, (uint64) tm_citus_ranges[i].shard);
	return sig == 0 ? 1 : sig;
}

/*
 * Stores this database's signature in shared memory; true if it changed
 * (or no slot was free, when more databases than TM_CITUS_DBS hold a
 * distributed tiermeter: then every load drops the entries, which costs
 * rebuilds only).
 */
static bool
tm_citus_swap_signature(uint64 sig)
{
	int			i;
	int			free_slot = -1;
	bool		changed = true;

	SpinLockAcquire(&tm_shared->citus_mutex);
	for (i = 0; i < TM_CITUS_DBS; i++)
	{
		if (tm_shared->citus_db[i] == MyDatabaseId)
			break;
		if (free_slot < 0 && !OidIsValid(tm_shared->citus_db[i]))
			free_slot = i;
	}
	if (i == TM_CITUS_DBS && sig != 0 && free_slot >= 0)
	{
		i = free_slot;
		tm_shared->citus_db[i] = MyDatabaseId;
		tm_shared->citus_sig[i] = 0;
	}
	if (i < TM_CITUS_DBS)
	{
		changed = tm_shared->citus_sig[i] != sig;
		tm_shared->citus_sig[i] = sig;
	}
	else
		changed = sig != 0;		/* nothing distributed, nothing recorded */
	SpinLockRelease(&tm_shared->citus_mutex);
	return changed;
}

/* Inside a transaction: orgs' hash ranges and where they are placed. */
static void
tm_citus_read_placements(void)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1];
	int			i;
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tiermeter: SPI_connect failed");
	args[0] = ObjectIdGetDatum(tm_citus_orgs);
	/* every operator qualified: this may run as the schema's owner */
	ret = SPI_execute_with_args(
		"SELECT s.shardminvalue::pg_catalog.int4, s.shardmaxvalue::pg_catalog.int4,"
		" pg_catalog.bool_or(p.groupid OPERATOR(pg_catalog.=) g.groupid),"
		" COALESCE(pg_catalog.max(pg_catalog.to_regclass(pg_catalog.format('%I.%I', n.nspname,"
		"   c.relname OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s.shardid))::pg_catalog.oid::pg_catalog.int8)"
		"   FILTER (WHERE p.groupid OPERATOR(pg_catalog.=) g.groupid), 0)"
		" FROM pg_catalog.pg_dist_partition d"
		" JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.logicalrelid"
		" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
		" JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid OPERATOR(pg_catalog.=) d.logicalrelid"
		" JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid,"
		" pg_catalog.pg_dist_local_group g"
		" WHERE d.logicalrelid OPERATOR(pg_catalog.=) $1"
		"   AND d.partmethod OPERATOR(pg_catalog.=) 'h'::\"char\""
		" GROUP BY 1, 2 ORDER BY 1",
		1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: reading Citus's placements failed: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		TmShardRange *r;

		r = MemoryContextAlloc(TopMemoryContext, sizeof(TmShardRange) * SPI_processed);
		for (i = 0; i < (int) SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;

			r[i].min = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			r[i].max = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			r[i].local = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)) && !isnull;
			r[i].shard = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		}
		if (tm_citus_ranges != NULL)
			pfree(tm_citus_ranges);
		tm_citus_ranges = r;
		tm_citus_nranges = (int) SPI_processed;
		tm_citus_distributed = true;
	}
	SPI_finish();
}

static void
tm_citus_load(void)
{
	Oid			nsp = get_namespace_oid("tiermeter", true);
	uint64		sig;

	if (!tm_citus_registered)
	{
		CacheRegisterRelcacheCallback(tm_citus_relcache, (Datum) 0);
		tm_citus_registered = true;
	}
	tm_citus_valid = true;		/* an invalidation from here on reloads */
	tm_citus_distributed = false;
	tm_citus_nranges = 0;
	tm_citus_orgs = OidIsValid(nsp) ? get_relname_relid("orgs", nsp) : InvalidOid;

	if (OidIsValid(tm_citus_orgs) && OidIsValid(get_extension_oid("citus", true)))
	{
		PG_TRY();
		{
			tm_citus_read_placements();
		}
		PG_CATCH();
		{
			tm_citus_valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}

	/* the first backend to see a new placement drops what was built before */
	sig = tm_citus_signature();
	if (tm_shared != NULL && tm_citus_swap_signature(sig))
	{
		pg_atomic_fetch_add_u64(&tm_shared->config_gen, 1);
		tm_inval_now(MyDatabaseId, true, NULL, 0);
	}
}

/*
 * Are tiermeter's tables distributed, and this org's rows on another node?
 * Outside Citus: one test of a flag per call.
 */
bool
tm_org_elsewhere(const char *org_id)
{
	uint32		h;
	int			lo;
	int			hi;

	if (!tm_citus_valid)
		tm_citus_load();
	if (!tm_citus_distributed)
		return false;

	/*
	 * A call answered from the cache takes no lock that would make this
	 * backend read invalidations: inside a transaction block it would keep
	 * a map from before a shard moved away.  (Cheap when there are none.)
	 */
	AcceptInvalidationMessages();
	if (!tm_citus_valid)
	{
		tm_citus_load();
		if (!tm_citus_distributed)
			return false;
	}

	/* Citus hashes text with hashtext(), which is hash_any() of the bytes */
	h = DatumGetUInt32(hash_any((const unsigned char *) org_id, strlen(org_id)));
	lo = 0;
	hi = tm_citus_nranges - 1;
	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		TmShardRange *r = &tm_citus_ranges[mid];

		if ((int32) h < r->min)
			hi = mid - 1;
		else if ((int32) h > r->max)
			lo = mid + 1;
		else
			return !r->local;
	}
	return true;				/* no shard: not here */
}

/* Has distribute() spread tiermeter's tables (this node's are shells)? */
bool
tm_tables_distributed(void)
{
	if (!tm_citus_valid)
		tm_citus_load();
	return tm_citus_distributed;
}

/*
 * consume, and a negative gauge delta (which must not take the level below
 * zero), serialize an org's callers with this node's locks and
 * reservations: on a node that does not hold the org they would not see the
 * callers on the node that does.  what names the call in the message, func
 * the function in the hint.
 */
void
tm_require_org_here(const char *org_id, const char *func, const char *what)
{
	if (tm_org_elsewhere(org_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tiermeter: %s for org \"%s\" must run on the node that holds the org",
						what, org_id),
				 errdetail("tiermeter's tables are distributed with Citus, and this node does not hold that org's shard."),
				 errhint("Call it as a statement of its own, outside a transaction block (SELECT tiermeter.%s(...)): Citus then runs it on that node.",
						 func)));
}
