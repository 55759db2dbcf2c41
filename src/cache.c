/*
 * cache.c
 *		The shared-memory counter cache: per (database, org, feature) the
 *		org's current period, its quota and the committed usage in it, so
 *		that check_org_limits touches no table and record_usage does one
 *		INSERT.  The tables stay the durable truth; an entry is only ever
 *		rebuilt from them.
 *
 * Only with shared_preload_libraries, and never in recovery (a standby's
 * backends see commits replayed from WAL, not through our callbacks).
 *
 * This file holds the shared table: shared memory, the partitioned hash and
 * its locks, finding and creating entries, eviction, and the hit path
 * (tm_cache_get).  The other parts of the cache are listed in cache.h.
 */
#include "cache.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#define TM_TRANCHE		"tiermeter"

static inline uint32
tm_pending(TmEntry *e)
{
	return pg_atomic_read_u32(&e->pending[0]) + pg_atomic_read_u32(&e->pending[1]);
}

int			tm_cache_size = 100000;

TmShared   *tm_shared = NULL;
HTAB	   *tm_htab = NULL;
pg_atomic_uint32 *tm_ghosts = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*----------------------------------------------------------------------
 * Shared memory
 *----------------------------------------------------------------------
 */

static Size
tm_shmem_size(void)
{
	return add_size(add_size(MAXALIGN(sizeof(TmShared)),
							 hash_estimate_size(tm_cache_size, sizeof(TmEntry))),
					MAXALIGN(mul_size(tm_cache_size, sizeof(pg_atomic_uint32))));
}

static void
tm_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(tm_shmem_size());
	RequestNamedLWLockTranche(TM_TRANCHE, TM_PARTITIONS);
}

static void
tm_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	tm_shared = ShmemInitStruct("tiermeter", sizeof(TmShared), &found);
	if (!found)
	{
		tm_shared->locks = GetNamedLWLockTranche(TM_TRANCHE);
		SpinLockInit(&tm_shared->build_mutex);
		memset(tm_shared->build_used, 0, sizeof(tm_shared->build_used));
		pg_atomic_init_u64(&tm_shared->generation, 1);
		pg_atomic_init_u32(&tm_shared->unregistered, 0);
	}
	tm_ghosts = ShmemInitStruct("tiermeter read misses",
								mul_size(tm_cache_size, sizeof(pg_atomic_uint32)), &found);
	if (!found)
	{
		int			i;

		for (i = 0; i < tm_cache_size; i++)
			pg_atomic_init_u32(&tm_ghosts[i], 0);
	}
	info.keysize = sizeof(TmCacheKey);
	info.entrysize = sizeof(TmEntry);
	info.num_partitions = TM_PARTITIONS;
	tm_htab = ShmemInitHash("tiermeter counters", tm_cache_size, tm_cache_size, &info,
							HASH_ELEM | HASH_BLOBS | HASH_PARTITION | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

void
tm_cache_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = tm_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = tm_shmem_startup;
}

bool
tm_cache_enabled(void)
{
	return tm_htab != NULL && !RecoveryInProgress();
}

/* Builds the key; false if an id is too long to be cached. */
bool
tm_cache_key(TmCacheKey *key, const char *org_id, const char *feature, uint32 *hash)
{
	size_t		olen = strlen(org_id);
	size_t		flen = strlen(feature);

	if (olen >= TM_KEY_LEN || flen >= TM_KEY_LEN)
		return false;
	memset(key, 0, sizeof(*key));
	key->dbid = MyDatabaseId;
	memcpy(key->org_id, org_id, olen);
	memcpy(key->feature, feature, flen);
	*hash = get_hash_value(tm_htab, key);
	return true;
}

/*----------------------------------------------------------------------
 * Eviction: when the table is full, drop the least recently used tenth
 * of the entries that nothing pins.  Holds every partition lock.
 *----------------------------------------------------------------------
 */

typedef struct TmVictim
{
	TmEntry    *e;
	uint64		at;
} TmVictim;

static int
tm_victim_cmp(const void *a, const void *b)
{
	uint64		x = ((const TmVictim *) a)->at;
	uint64		y = ((const TmVictim *) b)->at;

	return (x > y) - (x < y);
}

static void
tm_evict(void)
{
	HASH_SEQ_STATUS seq;
	TmEntry    *e;
	TmVictim   *v;
	int			n = 0;
	int			i;
	int			drop;

	v = palloc(sizeof(TmVictim) * tm_cache_size);
	for (i = 0; i < TM_PARTITIONS; i++)
		LWLockAcquire(&tm_shared->locks[i].lock, LW_EXCLUSIVE);

	hash_seq_init(&seq, tm_htab);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (tm_pending(e) == 0 && TM_GET(e->reserved) == 0 &&
			e->build < 0 && n < tm_cache_size)
		{
			v[n].e = e;
			v[n].at = pg_atomic_read_u64(&e->last_access);
			n++;
		}
	}
	qsort(v, n, sizeof(TmVictim), tm_victim_cmp);
	drop = Max(1, n / 10);
	for (i = 0; i < drop && i < n; i++)
		hash_search(tm_htab, &v[i].e->key, HASH_REMOVE, NULL);

	for (i = TM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&tm_shared->locks[i].lock);
	pfree(v);
}

/*
 * Should a read miss of this key build an entry?  Yes while the table has
 * room, or if the key has one (stale or invalid); when it is nearly full,
 * a new key only if it missed once before
 * (tm_ghosts): a key read once is answered from the tables, at the cost of
 * the table path, and evicts nothing.  A race here only admits a key a miss
 * early or late.
 */
bool
tm_cache_admit(const TmCacheKey *key, uint32 hash)
{
	pg_atomic_uint32 *slot;
	LWLock	   *lock = tm_lock_for(hash);
	bool		present;

	if (hash_get_num_entries(tm_htab) < tm_cache_size - tm_cache_size / 10)
		return true;
	/* an entry there (stale, invalid, being built) is refreshed, not admitted */
	LWLockAcquire(lock, LW_SHARED);
	present = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL) != NULL;
	LWLockRelease(lock);
	if (present)
		return true;
	slot = &tm_ghosts[hash % (uint32) tm_cache_size];
	if (pg_atomic_read_u32(slot) == hash)
		return true;
	pg_atomic_write_u32(slot, hash);
	return false;
}

/* Finds or creates the entry; caller holds its partition lock exclusively. */
static TmEntry *
tm_enter(const TmCacheKey *key, uint32 hash)
{
	bool		found;
	TmEntry    *e;

	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_ENTER_NULL, &found);
	if (e != NULL && !found)
	{
		e->valid = false;
		e->config_stale = false;
		e->build = -1;
		e->epoch = 0;
		pg_atomic_init_u32(&e->pending[0], 0);
		pg_atomic_init_u32(&e->pending[1], 0);
		pg_atomic_init_u64(&e->reserved, 0);
		pg_atomic_init_u64(&e->used, 0);
		pg_atomic_init_u64(&e->last_access, (uint64) GetCurrentTransactionStartTimestamp());
	}
	return e;
}

/*
 * Same, taking the partition lock and evicting once if the table is full.
 * Returns with the lock held, or NULL (lock released) if still full.
 */
TmEntry *
tm_enter_locked(const TmCacheKey *key, uint32 hash, LWLock *lock)
{
	TmEntry    *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = tm_enter(key, hash);
	if (e == NULL)
	{
		LWLockRelease(lock);
		tm_evict();
		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = tm_enter(key, hash);
		if (e == NULL)
			LWLockRelease(lock);
	}
	return e;
}

/*----------------------------------------------------------------------
 * Reading an entry
 *----------------------------------------------------------------------
 */

/* Copies an entry's answer out; its strings go into cxt. */
void
tm_entry_copy(TmEntry *e, TmOrgFeature *of, TmSums *sums,
			  const char *org_id, const char *feature, MemoryContext cxt)
{
	of->org_id = MemoryContextStrdup(cxt, org_id);
	of->feature = MemoryContextStrdup(cxt, feature);
	of->tier_id = MemoryContextStrdup(cxt, e->tier_id);
	of->org_exists = e->org_exists;
	of->is_gauge = e->is_gauge;
	of->anchor = e->anchor;
	of->stored.start = e->stored_start;
	of->stored.end = e->stored_end;
	of->unlimited = e->unlimited;
	of->base_quota = e->base_quota;
	of->has_warning = e->has_warning;
	of->warning_percent = e->warning_percent;
	of->period.start = e->period_start;
	of->period.end = e->period_end;
	sums->used = TM_GET(e->used);
	sums->granted = e->granted;
	sums->reserved = TM_GET(e->reserved);
}

/*
 * A hit: fills of and sums (with this transaction's own amounts) from a
 * current entry.  No table is touched.
 */
bool
tm_cache_get(const TmCacheKey *key, uint32 hash, const char *org_id,
			 const char *feature, TmOrgFeature *of, TmSums *sums, MemoryContext cxt)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *e;
	bool		hit = false;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	if (e != NULL && tm_entry_current(e, now))
	{
		tm_entry_copy(e, of, sums, org_id, feature, cxt);
		tm_touch(e, now);
		hit = true;
	}
	LWLockRelease(lock);

	if (hit)
		tm_add_own(key, of, sums);
	return hit;
}
