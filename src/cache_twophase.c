/*
 * cache_twophase.c
 *		Prepared transactions (two-phase commit) and the cache.
 *
 * A prepared transaction's rows become visible at COMMIT PREPARED, which
 * any session may run, at any time, even after a restart; its backend's
 * notes cannot wait for that.  So from PRE_PREPARE until it is resolved,
 * every org it touched is answered from the tables, in every session:
 * MVCC keeps that answer right before and after the commit.  A registry in
 * shared memory holds, per prepared transaction, its GID, its database and
 * the orgs it touched (or "all of them": too many orgs, a config change,
 * or one recovered from disk after a restart, whose orgs nobody knows).
 *
 * consume stays exact: a prepared transaction that reserved quota takes
 * the table path's advisory lock of that (org, feature) at PRE_PREPARE, and
 * prepared transactions keep their locks, across a restart too.  Another
 * consumer of the org takes the table path (the registry says so; a
 * reservation already under way checks it under the partition lock) and
 * waits on that lock until the prepared transaction is resolved.
 *
 * A slot is keyed by the transaction's xid.  Once that is no longer in
 * progress (COMMIT or ROLLBACK PREPARED ran, in any session, or in a
 * logical replication apply worker, which runs no statement), whoever
 * notices first resolves the slot: it bumps the config generation (if the
 * transaction changed config), invalidates the orgs' entries, and only
 * then frees the slot, so no entry built before the commit survives it.
 * The session that ran COMMIT or ROLLBACK PREPARED does so at once
 * (twophase.c); any backend that calls the functions looks for ended
 * transactions at most once a second otherwise.  After a restart nothing is known:
 * until the first check has registered every prepared transaction
 * recovered from disk (as touching all orgs, with events to announce),
 * every org is answered from the tables.
 */
#include "cache.h"

#include "access/transam.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define TM_PREPARED_ORGS	32	/* orgs per slot; more: all of the database */

typedef enum TmPreparedState
{
	TM_PREP_FREE,
	TM_PREP_PREPARING,			/* between PRE_PREPARE and PREPARE */
	TM_PREP_PREPARED,
	TM_PREP_RESOLVING			/* resolved, its entries being invalidated */
} TmPreparedState;

typedef struct TmPrepared
{
	TmPreparedState state;
	TransactionId xid;			/* the prepared transaction's top xid */
	Oid			dbid;
	bool		all_orgs;
	bool		config;			/* changed config: bump the generation */
	bool		events;			/* wrote limit events to announce */
	int			norgs;
	char		gid[GIDSIZE];	/* when known: '' in an apply worker */
	char		orgs[TM_PREPARED_ORGS][TM_KEY_LEN];
} TmPrepared;

static TmPrepared *tm_prepared = NULL;

/* the slot this backend is preparing, or -1 */
static int	tm_my_slot = -1;

static LWLock *
tm_prepared_lock(void)
{
	return &tm_shared->locks[TM_PREPARED_LOCK].lock;
}

/*
 * Twice max_prepared_transactions: PostgreSQL counts a transaction once it
 * is past PRE_PREPARE, we count it from there.
 */
static int32
tm_prepared_slots(void)
{
	return max_prepared_xacts > 0 ? 2 * max_prepared_xacts + 1 : 0;
}

Size
tm_prepared_shmem_size(void)
{
	return MAXALIGN(mul_size(Max(tm_prepared_slots(), 1), sizeof(TmPrepared)));
}

/* At shared memory creation (caller holds AddinShmemInitLock). */
void
tm_prepared_shmem_init(void)
{
	bool		found;
	int32		n = tm_prepared_slots();

	tm_prepared = ShmemInitStruct("tiermeter prepared transactions",
								  tm_prepared_shmem_size(), &found);
	if (!found)
	{
		int			i;

		for (i = 0; i < n; i++)
			tm_prepared[i].state = TM_PREP_FREE;
		tm_shared->nprepared_slots = n;
		tm_shared->nprepared_hw = 0;
		/* without prepared transactions, none was recovered from disk */
		pg_atomic_init_u32(&tm_shared->prepared_checked, n == 0);
		pg_atomic_init_u32(&tm_shared->nprepared, n > 0);
	}
}

static bool
tm_slot_has_org(const TmPrepared *p, const char *org_id)
{
	int			i;

	if (p->all_orgs)
		return true;
	for (i = 0; i < p->norgs; i++)
		if (strncmp(p->orgs[i], org_id, TM_KEY_LEN) == 0)
			return true;
	return false;
}

/* Does a slot of this database touch org_id?  (registry lock held) */
static bool
tm_slot_match(const char *org_id)
{
	int			i;

	for (i = 0; i < tm_shared->nprepared_hw; i++)
	{
		TmPrepared *p = &tm_prepared[i];

		if (p->state != TM_PREP_FREE && p->dbid == MyDatabaseId &&
			tm_slot_has_org(p, org_id))
			return true;
	}
	return false;
}

/*
 * Is the org touched by a prepared transaction (or may it be)?  Without a
 * check yet, every org may be.  Takes the registry lock: callable under a
 * partition lock (it is always taken after those).
 */
bool
tm_prepared_bypass_locked(const char *org_id)
{
	bool		found;

	if (likely(pg_atomic_read_u32(&tm_shared->nprepared) == 0))
		return false;
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
		return true;
	LWLockAcquire(tm_prepared_lock(), LW_SHARED);
	found = tm_slot_match(org_id);
	LWLockRelease(tm_prepared_lock());
	return found;
}

/* Takes a free slot (registry lock held exclusively); -1 if none. */
static int
tm_slot_take(Oid dbid, TransactionId xid, const char *gid)
{
	int			i;

	for (i = 0; i < tm_shared->nprepared_slots; i++)
	{
		TmPrepared *p = &tm_prepared[i];

		if (p->state != TM_PREP_FREE)
			continue;
		tm_shared->nprepared_hw = Max(tm_shared->nprepared_hw, i + 1);
		p->xid = xid;
		p->dbid = dbid;
		p->all_orgs = false;
		p->config = false;
		p->events = false;
		p->norgs = 0;
		strlcpy(p->gid, gid ? gid : "", GIDSIZE);
		pg_atomic_fetch_add_u32(&tm_shared->nprepared, 1);
		return i;
	}
	return -1;
}

/* Frees a slot (registry lock held exclusively). */
static void
tm_slot_free(int i)
{
	tm_prepared[i].state = TM_PREP_FREE;
	pg_atomic_fetch_sub_u32(&tm_shared->nprepared, 1);
	while (tm_shared->nprepared_hw > 0 &&
		   tm_prepared[tm_shared->nprepared_hw - 1].state == TM_PREP_FREE)
		tm_shared->nprepared_hw--;
}

/*
 * Resolves slot i, of any database, if its transaction is no longer in
 * progress: the config generation moves if it changed config, its orgs'
 * entries are invalidated, then the slot goes.  Whether it committed is
 * not asked (its clog may be gone for a very old one): a rollback's orgs
 * are rebuilt too, which is only slower.  Allocates nothing, raises
 * nothing, and holds no lock when called.
 */
static void
tm_slot_resolve(int i)
{
	TmPrepared	copy;
	TransactionId xid;

	LWLockAcquire(tm_prepared_lock(), LW_SHARED);
	xid = tm_prepared[i].state == TM_PREP_PREPARED ? tm_prepared[i].xid : InvalidTransactionId;
	LWLockRelease(tm_prepared_lock());
	/* a prepared transaction is in progress until COMMIT/ROLLBACK PREPARED */
	if (!TransactionIdIsValid(xid) || TransactionIdIsInProgress(xid))
		return;

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	if (tm_prepared[i].state != TM_PREP_PREPARED || tm_prepared[i].xid != xid)
	{
		LWLockRelease(tm_prepared_lock());
		return;					/* someone else resolves it */
	}
	tm_prepared[i].state = TM_PREP_RESOLVING;	/* its orgs still bypass */
	memcpy(&copy, &tm_prepared[i], sizeof(copy));
	LWLockRelease(tm_prepared_lock());

	if (copy.config || copy.all_orgs)
		pg_atomic_fetch_add_u64(&tm_shared->config_gen, 1);
	tm_inval_now(copy.dbid, copy.all_orgs, (const char (*)[TM_KEY_LEN]) copy.orgs, copy.norgs);

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	tm_slot_free(i);
	LWLockRelease(tm_prepared_lock());
}

/* Resolves every slot, of every database, whose transaction ended. */
void
tm_cache_prepared_resolve(void)
{
	int			i;

	int			hw;

	if (tm_shared == NULL || pg_atomic_read_u32(&tm_shared->nprepared) == 0)
		return;
	LWLockAcquire(tm_prepared_lock(), LW_SHARED);
	hw = tm_shared->nprepared_hw;
	LWLockRelease(tm_prepared_lock());
	for (i = 0; i < hw; i++)
		tm_slot_resolve(i);
}

/*
 * Will COMMIT PREPARED of gid (in this database) leave limit events to
 * announce?  Also true when unknown: before the check after a restart.
 */
bool
tm_cache_prepared_events(const char *gid)
{
	bool		events = false;
	int			i;

	if (tm_shared == NULL)
		return true;
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
		return true;
	LWLockAcquire(tm_prepared_lock(), LW_SHARED);
	for (i = 0; i < tm_shared->nprepared_hw; i++)
	{
		TmPrepared *p = &tm_prepared[i];

		if (p->state != TM_PREP_FREE && p->dbid == MyDatabaseId &&
			strcmp(p->gid, gid) == 0)
			events |= p->events;
	}
	LWLockRelease(tm_prepared_lock());
	return events;
}

/*
 * After a start: registers every prepared transaction recovered from disk
 * that may have touched an org as touching every org of its database.
 * Runs once.  One resolved before
 * the check is not listed: its rows are visible, and nothing was cached
 * meanwhile.
 */
static void
tm_prepared_check(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	TmOwnerSave save;
	int			n;
	int			i;
	char	  **gids;
	Oid		   *dbids;
	TransactionId *xids;

	/* as the owner, a query with nothing the caller's search_path can reach */
	tm_spi_begin(&save);
	{
		/*
		 * Those of this database that hold no lock on a relation of the
		 * extension (its tables, as every write to them takes one) touched
		 * no org: left out.  Those of another database may have.
		 */
		Oid			argtypes[2] = {OIDOID, OIDOID};
		Datum		args[2];

		args[0] = ObjectIdGetDatum(MyDatabaseId);
		args[1] = ObjectIdGetDatum(get_namespace_oid("tiermeter", false));
		if (SPI_execute_with_args(
				"SELECT p.gid, p.dbid, p.transaction"
				"  FROM pg_catalog.pg_prepared_xact() p"
				" WHERE p.dbid OPERATOR(pg_catalog.<>) $1"
				"    OR EXISTS (SELECT 1 FROM pg_catalog.pg_locks x, pg_catalog.pg_locks l,"
				"                             pg_catalog.pg_class c"
				"                WHERE x.locktype OPERATOR(pg_catalog.=) 'transactionid'"
				"                  AND x.transactionid OPERATOR(pg_catalog.=) p.transaction"
				"                  AND l.virtualtransaction OPERATOR(pg_catalog.=) x.virtualtransaction"
				"                  AND l.locktype OPERATOR(pg_catalog.=) 'relation'"
				"                  AND l.database OPERATOR(pg_catalog.=) $1"
				"                  AND c.oid OPERATOR(pg_catalog.=) l.relation"
				"                  AND c.relnamespace OPERATOR(pg_catalog.=) $2)",
				2, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "tiermeter: reading the prepared transactions failed");
	}
	n = (int) SPI_processed;
	gids = MemoryContextAlloc(cxt, sizeof(char *) * Max(n, 1));
	dbids = MemoryContextAlloc(cxt, sizeof(Oid) * Max(n, 1));
	xids = MemoryContextAlloc(cxt, sizeof(TransactionId) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		gids[i] = MemoryContextStrdup(cxt, SPI_getvalue(row, desc, 1));
		dbids[i] = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
		xids[i] = DatumGetTransactionId(SPI_getbinval(row, desc, 3, &isnull));
	}
	tm_spi_end(&save);

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
	{
		for (i = 0; i < n; i++)
		{
			int			slot;
			int			j;
			bool		known = false;

			/* prepared since the start: registered at its PRE_PREPARE */
			for (j = 0; j < tm_shared->nprepared_hw && !known; j++)
				known = tm_prepared[j].state != TM_PREP_FREE && tm_prepared[j].xid == xids[i];
			if (known)
				continue;
			slot = tm_slot_take(dbids[i], xids[i], gids[i]);
			if (slot < 0)
				break;			/* cannot happen: twice the maximum */
			tm_prepared[slot].all_orgs = true;
			tm_prepared[slot].config = true;
			tm_prepared[slot].events = true;
			tm_prepared[slot].state = TM_PREP_PREPARED;
		}
		/* every org stays answered from the tables if one did not fit */
		if (i == n)
		{
			pg_atomic_write_u32(&tm_shared->prepared_checked, 1);
			pg_atomic_fetch_sub_u32(&tm_shared->nprepared, 1);
		}
	}
	LWLockRelease(tm_prepared_lock());
}

/* when this backend last looked for ended prepared transactions */
static TimestampTz tm_last_sweep = 0;

/*
 * Is the org touched by a prepared transaction?  Runs the check first, and
 * at most once a second resolves the slots whose transaction ended, where
 * no COMMIT or ROLLBACK PREPARED statement did (an apply worker's): until
 * then their orgs are answered from the tables, which is right, only
 * slower.  Without a match, one shared lock of the registry.
 */
bool
tm_cache_prepared_bypass(const char *org_id)
{
	TimestampTz now;

	if (likely(pg_atomic_read_u32(&tm_shared->nprepared) == 0))
		return false;
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
		tm_prepared_check();
	now = GetCurrentTransactionStartTimestamp();
	if (now - tm_last_sweep >= USECS_PER_SEC || now < tm_last_sweep)
	{
		tm_last_sweep = now;
		tm_cache_prepared_resolve();
	}
	return tm_prepared_bypass_locked(org_id);
}

static void
tm_slot_add_org(TmPrepared *p, const char *org_id)
{
	if (p->all_orgs || tm_slot_has_org(p, org_id))
		return;
	if (p->norgs == TM_PREPARED_ORGS)
		p->all_orgs = true;
	else
		strlcpy(p->orgs[p->norgs++], org_id, TM_KEY_LEN);
}

static int
tm_key_cmp(const void *a, const void *b)
{
	return memcmp(*(const TmCacheKey *const *) a, *(const TmCacheKey *const *) b,
				  sizeof(TmCacheKey));
}

/*
 * PRE_PREPARE: registers the orgs this transaction touched, and turns its
 * reservations into locks.  May fail: the PREPARE fails with it.
 */
void
tm_prepared_pre_prepare(void)
{
	TmLocalIter it = {0};
	TmLocal    *l;
	TmPrepared *p;
	TransactionId xid = GetTopTransactionIdIfAny();
	bool		events = tm_notify_pending();
	const TmCacheKey **keys;
	int			nkeys = 0;
	int			i;

	if (!tm_local_next(&it) && !tm_inval_all && tm_inval_orgs == NULL && !events)
		return;					/* touched nothing the cache holds */
	if (tm_shared->nprepared_slots == 0 || !TransactionIdIsValid(xid))
		return;					/* max_prepared_transactions = 0, or wrote nothing */

	/*
	 * consume's reservations: the prepared transaction holds the table
	 * path's lock of each, taken in a fixed order
	 */
	memset(&it, 0, sizeof(it));
	while ((l = tm_local_next(&it)) != NULL)
		nkeys++;
	keys = palloc(sizeof(TmCacheKey *) * Max(nkeys, 1));
	nkeys = 0;
	memset(&it, 0, sizeof(it));
	while ((l = tm_local_next(&it)) != NULL)
		if (l->reserved != 0)
			keys[nkeys++] = &l->key;
	qsort(keys, nkeys, sizeof(TmCacheKey *), tm_key_cmp);
	for (i = 0; i < nkeys; i++)
		tm_lock_org_feature_ids(keys[i]->org_id, keys[i]->feature);
	pfree(keys);

	for (i = 0; i < 2 && tm_my_slot < 0; i++)
	{
		if (i > 0)
			tm_cache_prepared_resolve();	/* ended ones nobody noticed */
		LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
		tm_my_slot = tm_slot_take(MyDatabaseId, xid, tm_twophase_gid());
		if (tm_my_slot >= 0)
			tm_prepared[tm_my_slot].state = TM_PREP_PREPARING;
		LWLockRelease(tm_prepared_lock());
	}
	if (tm_my_slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("tiermeter: too many prepared transactions"),
				 errdetail("Every slot (twice max_prepared_transactions, plus one) holds a transaction being prepared or prepared."),
				 errhint("Resolve prepared transactions with COMMIT PREPARED or ROLLBACK PREPARED.")));

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	p = &tm_prepared[tm_my_slot];
	p->events = events;
	if (tm_inval_all)
		p->all_orgs = p->config = true;
	if (tm_inval_orgs != NULL)
	{
		HASH_SEQ_STATUS seq;
		TmInvalOrg *o;

		hash_seq_init(&seq, tm_inval_orgs);
		while ((o = hash_seq_search(&seq)) != NULL)
			tm_slot_add_org(p, o->org_id);
	}
	memset(&it, 0, sizeof(it));
	while ((l = tm_local_next(&it)) != NULL)
		if (tm_needs_registration(l))
			tm_slot_add_org(p, l->key.org_id);
	LWLockRelease(tm_prepared_lock());
}

/*
 * PREPARE done, or the transaction aborted.  Either way the slot becomes an
 * ordinary prepared one: after an abort the transaction is no longer in
 * progress and the slot is resolved at once, unless the abort came after
 * the transaction was prepared (an error in a later PREPARE callback),
 * which leaves it prepared, and the slot with it.
 */
void
tm_prepared_end_xact(bool prepared)
{
	int			slot = tm_my_slot;

	if (slot < 0)
		return;
	tm_my_slot = -1;
	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	tm_prepared[slot].state = TM_PREP_PREPARED;
	LWLockRelease(tm_prepared_lock());
	if (!prepared)
		tm_slot_resolve(slot);
}
