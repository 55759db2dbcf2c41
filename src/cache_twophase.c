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
 * COMMIT PREPARED (twophase.c sees it run) bumps the config generation,
 * invalidates the orgs' entries, and only then frees the slot, so no
 * entry built before the commit survives it.  After a restart nothing is
 * known: until the first check has registered every prepared transaction
 * recovered from disk, every org is answered from the tables.
 */
#include "cache.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#define TM_PREPARED_ORGS	32	/* orgs per slot; more: all of the database */

typedef enum TmPreparedState
{
	TM_PREP_FREE,
	TM_PREP_PREPARING,			/* between PRE_PREPARE and PREPARE */
	TM_PREP_PREPARED
} TmPreparedState;

typedef struct TmPrepared
{
	TmPreparedState state;
	int			owner;			/* pgprocno of the preparing backend */
	Oid			dbid;
	bool		all_orgs;
	bool		config;			/* changed config: bump the generation */
	int			norgs;
	char		gid[GIDSIZE];
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
	return MAXALIGN(mul_size(tm_prepared_slots(), sizeof(TmPrepared)));
}

/* At shared memory creation (caller holds AddinShmemInitLock). */
void
tm_prepared_shmem_init(void)
{
	bool		found;
	int32		n = tm_prepared_slots();

	tm_prepared = ShmemInitStruct("tiermeter prepared transactions",
								  Max(tm_prepared_shmem_size(), sizeof(TmPrepared)), &found);
	if (!found)
	{
		int			i;

		for (i = 0; i < n; i++)
			tm_prepared[i].state = TM_PREP_FREE;
		tm_shared->nprepared_slots = n;
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

/*
 * Is the org touched by a prepared transaction (or may it be)?  Without a
 * check yet, every org may be.  Takes the registry lock: callable under a
 * partition lock (it is always taken after those).
 */
bool
tm_prepared_bypass_locked(const char *org_id)
{
	bool		found = false;
	int			i;

	if (likely(pg_atomic_read_u32(&tm_shared->nprepared) == 0))
		return false;
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
		return true;
	LWLockAcquire(tm_prepared_lock(), LW_SHARED);
	for (i = 0; i < tm_shared->nprepared_slots && !found; i++)
	{
		TmPrepared *p = &tm_prepared[i];

		found = p->state != TM_PREP_FREE && p->dbid == MyDatabaseId &&
			tm_slot_has_org(p, org_id);
	}
	LWLockRelease(tm_prepared_lock());
	return found;
}

/* Takes a free slot (registry lock held exclusively); -1 if none. */
static int
tm_slot_take(Oid dbid, const char *gid)
{
	int			i;

	for (i = 0; i < tm_shared->nprepared_slots; i++)
	{
		TmPrepared *p = &tm_prepared[i];

		if (p->state != TM_PREP_FREE)
			continue;
		p->dbid = dbid;
		p->all_orgs = false;
		p->config = false;
		p->norgs = 0;
		p->owner = -1;
		strlcpy(p->gid, gid, GIDSIZE);
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
}

static int
tm_slot_find(Oid dbid, const char *gid)
{
	int			i;

	for (i = 0; i < tm_shared->nprepared_slots; i++)
	{
		TmPrepared *p = &tm_prepared[i];

		if (p->state != TM_PREP_FREE && p->dbid == dbid && strcmp(p->gid, gid) == 0)
			return i;
	}
	return -1;
}

/*
 * After a start: registers every prepared transaction recovered from disk
 * as touching every org of its database.  Runs once; whoever resolves a
 * prepared transaction runs it first, so none is resolved unregistered.
 */
void
tm_cache_prepared_check(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			n;
	int			i;
	char	  **gids;
	Oid		   *dbids;

	if (tm_shared == NULL || pg_atomic_read_u32(&tm_shared->prepared_checked))
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tiermeter: SPI_connect failed");
	if (SPI_execute("SELECT gid, dbid FROM pg_catalog.pg_prepared_xact()", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: reading the prepared transactions failed");
	n = (int) SPI_processed;
	gids = MemoryContextAlloc(cxt, sizeof(char *) * Max(n, 1));
	dbids = MemoryContextAlloc(cxt, sizeof(Oid) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		char	   *gid = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		gids[i] = MemoryContextStrdup(cxt, gid);
		dbids[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_finish();

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
	{
		for (i = 0; i < n; i++)
		{
			int			slot;

			/* prepared since the start: registered at its PRE_PREPARE */
			if (tm_slot_find(dbids[i], gids[i]) >= 0)
				continue;
			slot = tm_slot_take(dbids[i], gids[i]);
			if (slot < 0)
				break;			/* cannot happen: twice the maximum */
			tm_prepared[slot].all_orgs = true;
			tm_prepared[slot].config = true;
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

/* Is the org touched by a prepared transaction?  Runs the check first. */
bool
tm_cache_prepared_bypass(const char *org_id)
{
	if (likely(pg_atomic_read_u32(&tm_shared->nprepared) == 0))
		return false;
	if (!pg_atomic_read_u32(&tm_shared->prepared_checked))
		tm_cache_prepared_check();
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
	const char *gid = tm_twophase_gid();

	if (!tm_local_next(&it) && !tm_inval_all && tm_inval_orgs == NULL)
		return;					/* touched nothing the cache holds */
	if (gid == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tiermeter: cannot PREPARE this transaction: its GID is unknown"),
				 errhint("Run PREPARE TRANSACTION as a statement of its own.")));

	/* consume's reservations: the prepared transaction holds the lock */
	memset(&it, 0, sizeof(it));
	while ((l = tm_local_next(&it)) != NULL)
		if (l->reserved != 0)
			tm_lock_org_feature_ids(l->key.org_id, l->key.feature);

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	if (tm_slot_find(MyDatabaseId, gid) >= 0 ||
		(tm_my_slot = tm_slot_take(MyDatabaseId, gid)) < 0)
	{
		LWLockRelease(tm_prepared_lock());
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("tiermeter: cannot register prepared transaction \"%s\"", gid),
				 errdetail("The GID is in use, or every slot (twice max_prepared_transactions) is taken.")));
	}
	p = &tm_prepared[tm_my_slot];
	p->owner = MyProc->pgprocno;
	p->state = TM_PREP_PREPARING;
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

/* PREPARE done (the slot stays) or the transaction aborted (it goes). */
void
tm_prepared_end_xact(bool prepared)
{
	if (tm_my_slot < 0)
		return;
	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	if (prepared)
		tm_prepared[tm_my_slot].state = TM_PREP_PREPARED;
	else
		tm_slot_free(tm_my_slot);
	LWLockRelease(tm_prepared_lock());
	tm_my_slot = -1;
}

/*
 * COMMIT or ROLLBACK PREPARED of gid succeeded in this database.  After a
 * commit, the entries of its orgs are invalidated (its rows are visible
 * now), config copies are read again, and only then are the orgs answered
 * from the cache again.
 */
void
tm_cache_prepared_resolve(const char *gid, bool commit)
{
	TmPrepared	copy;
	int			slot;

	if (tm_shared == NULL || tm_shared->nprepared_slots == 0)
		return;
	LWLockAcquire(tm_prepared_lock(), LW_SHARED);
	slot = tm_slot_find(MyDatabaseId, gid);
	if (slot >= 0)
		memcpy(&copy, &tm_prepared[slot], sizeof(copy));
	LWLockRelease(tm_prepared_lock());
	if (slot < 0 || copy.state != TM_PREP_PREPARED)
		return;

	if (commit)
	{
		bool		save_all = tm_inval_all;
		bool		save_all_usage = tm_inval_all_usage;
		HTAB	   *save_orgs = tm_inval_orgs;
		int			i;

		if (copy.config || copy.all_orgs)
			pg_atomic_fetch_add_u64(&tm_shared->config_gen, 1);
		tm_inval_all = copy.all_orgs;
		tm_inval_all_usage = copy.all_orgs;
		tm_inval_orgs = NULL;
		for (i = 0; i < copy.norgs && !copy.all_orgs; i++)
			tm_inval_org(copy.orgs[i], true);
		tm_apply_invalidations();
		tm_inval_all = save_all;
		tm_inval_all_usage = save_all_usage;
		tm_inval_orgs = save_orgs;
	}

	LWLockAcquire(tm_prepared_lock(), LW_EXCLUSIVE);
	if (tm_prepared[slot].state == TM_PREP_PREPARED &&
		tm_prepared[slot].dbid == MyDatabaseId && strcmp(tm_prepared[slot].gid, gid) == 0)
		tm_slot_free(slot);
	LWLockRelease(tm_prepared_lock());
}
