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
 * its locks, the feature names, finding and creating entries, eviction (a
 * clock over a ring of the entries), and the hit path
 * (tm_cache_get).  The other parts of the cache are listed in cache.h.
 */
#include "cache.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

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
pg_atomic_uint64 *tm_ring = NULL;
int32	   *tm_ring_free = NULL;
TmStatSlot *tm_stats = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*----------------------------------------------------------------------
 * Shared memory
 *----------------------------------------------------------------------
 */

/*
 * The entries the table holds: a fixed-size partitioned shared dynahash
 * preallocates tm_cache_size elements, but at least one per freelist (32).
 */
int32
tm_cache_capacity(void)
{
	return Max(tm_cache_size, 32);
}

/*
 * One ring slot per entry the table can hold, so that a full table fills
 * the ring and every window of it has entries to choose from.
 */
static int32
tm_ring_size(void)
{
	return tm_cache_capacity();
}

/* statistics slots: slot 0 for anything without a backend id, then 1..MaxBackends */
static int32
tm_stat_slots(void)
{
	return MaxBackends + 1;
}

static Size
tm_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(TmShared));

	size = add_size(size, hash_estimate_size(tm_cache_capacity(), sizeof(TmEntry)));
	size = add_size(size, MAXALIGN(mul_size(tm_cache_size, sizeof(pg_atomic_uint32))));
	size = add_size(size, MAXALIGN(mul_size(tm_ring_size(), sizeof(pg_atomic_uint64))));
	size = add_size(size, MAXALIGN(mul_size(tm_ring_size(), sizeof(int32))));
	size = add_size(size, mul_size(tm_stat_slots(), sizeof(TmStatSlot)));
	size = add_size(size, tm_prepared_shmem_size());
	return add_size(size, PG_CACHE_LINE_SIZE);
}

static void
tm_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(tm_shmem_size());
	RequestNamedLWLockTranche(TM_TRANCHE, TM_PARTITIONS + 1);
}

static void
tm_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	tm_shared = ShmemInitStruct("tiermeter", sizeof(TmShared), &found);
	if (!found)
	{
		memset(tm_shared, 0, sizeof(TmShared));
		tm_shared->locks = GetNamedLWLockTranche(TM_TRANCHE);
		SpinLockInit(&tm_shared->build_mutex);
		pg_atomic_init_u32(&tm_shared->unregistered, 0);
		pg_atomic_init_u64(&tm_shared->change_seq, 1);
		pg_atomic_init_u64(&tm_shared->config_gen, 1);
		SpinLockInit(&tm_shared->citus_mutex);
		pg_atomic_init_u32(&tm_shared->config_inflight, 0);
		SpinLockInit(&tm_shared->ring_mutex);
		tm_shared->nring = tm_ring_size();
		tm_shared->nfree = tm_ring_size();
		pg_atomic_init_u32(&tm_shared->hand, 0);
		SpinLockInit(&tm_shared->feature_mutex);
		pg_atomic_init_u32(&tm_shared->nfeatures, 0);
		SpinLockInit(&tm_shared->stats_mutex);
		tm_shared->stats_reset = GetCurrentTimestamp();
		tm_shared->nstat_slots = tm_stat_slots();
	}
	tm_ghosts = ShmemInitStruct("tiermeter read misses",
								mul_size(tm_cache_size, sizeof(pg_atomic_uint32)), &found);
	if (!found)
		for (i = 0; i < tm_cache_size; i++)
			pg_atomic_init_u32(&tm_ghosts[i], 0);
	tm_ring = ShmemInitStruct("tiermeter eviction ring",
							  mul_size(tm_ring_size(), sizeof(pg_atomic_uint64)), &found);
	tm_ring_free = ShmemInitStruct("tiermeter eviction ring free slots",
								   mul_size(tm_ring_size(), sizeof(int32)), &found);
	if (!found)
		for (i = 0; i < tm_ring_size(); i++)
		{
			pg_atomic_init_u64(&tm_ring[i], 0);
			/* popped from the end: slot 0 first */
			tm_ring_free[i] = tm_ring_size() - 1 - i;
		}
	tm_stats = ShmemInitStruct("tiermeter statistics",
							   mul_size(tm_stat_slots(), sizeof(TmStatSlot)), &found);
	if (!found)
		for (i = 0; i < tm_stat_slots(); i++)
		{
			int			j;

			for (j = 0; j < TM_NSTATS; j++)
				pg_atomic_init_u64(&tm_stats[i].n[j], 0);
		}
	tm_prepared_shmem_init();
	info.keysize = sizeof(TmCacheKey);
	info.entrysize = sizeof(TmEntry);
	info.num_partitions = TM_PARTITIONS;
	tm_htab = ShmemInitHash("tiermeter counters", tm_cache_capacity(), tm_cache_capacity(), &info,
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
 * Feature names: every feature that has had an entry, so that an org's
 * entries can be looked up one by one (cache_inval.c).
 *----------------------------------------------------------------------
 */

int
tm_feature_count(void)
{
	int			n = (int) pg_atomic_read_u32(&tm_shared->nfeatures);

	/* the names are read after the count that published them */
	pg_read_barrier();
	return n;
}

const char *
tm_feature_name(int i)
{
	return tm_shared->features[i];
}

/* Adds the feature of a new entry to the names, once. */
static void
tm_feature_register(const char *feature)
{
	int			n = tm_feature_count();
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(tm_shared->features[i], feature) == 0)
			return;
	if (tm_shared->features_overflow)
		return;					/* invalidations scan from now on */
	SpinLockAcquire(&tm_shared->feature_mutex);
	n = tm_feature_count();
	for (i = 0; i < n; i++)
		if (strcmp(tm_shared->features[i], feature) == 0)
			break;
	if (i == n)
	{
		if (n < TM_MAX_FEATURES)
		{
			strlcpy(tm_shared->features[n], feature, TM_KEY_LEN);
			/* the name is written before the count that publishes it */
			pg_write_barrier();
			pg_atomic_write_u32(&tm_shared->nfeatures, n + 1);
		}
		else
			tm_shared->features_overflow = true;
	}
	SpinLockRelease(&tm_shared->feature_mutex);
}

/*----------------------------------------------------------------------
 * Eviction: a clock over the ring, one slot per entry.  A full table
 * evicts the least recently used of the entries nothing pins within a
 * window of the ring, taking only that entry's partition lock: the cost
 * does not grow with the cache.
 *----------------------------------------------------------------------
 */

#define TM_EVICT_WINDOW		32	/* slots looked at per eviction */
#define TM_EVICT_TRIES		4	/* windows before giving up */

static bool
tm_evictable(TmEntry *e)
{
	return tm_pending(e) == 0 && TM_GET(e->reserved) == 0 && e->build < 0;
}

/* Gives a new entry a ring slot (none if the ring is full: never evicted). */
static void
tm_ring_add(TmEntry *e)
{
	int32		slot = -1;

	SpinLockAcquire(&tm_shared->ring_mutex);
	if (tm_shared->nfree > 0)
		slot = tm_ring_free[--tm_shared->nfree];
	SpinLockRelease(&tm_shared->ring_mutex);
	e->slot = slot;
	if (slot >= 0)
		pg_atomic_write_u64(&tm_ring[slot], (uint64) (uintptr_t) e);
}

/* Removes an entry; caller holds its partition lock exclusively. */
static void
tm_remove(TmEntry *e)
{
	int32		slot = e->slot;

	if (slot >= 0)
	{
		pg_atomic_write_u64(&tm_ring[slot], 0);
		SpinLockAcquire(&tm_shared->ring_mutex);
		tm_ring_free[tm_shared->nfree++] = slot;
		SpinLockRelease(&tm_shared->ring_mutex);
	}
	hash_search(tm_htab, &e->key, HASH_REMOVE, NULL);
	tm_count(TM_STAT_EVICTIONS);
}

/*
 * Evicts one entry, holding no lock on entry.  A slot's entry may be
 * evicted and its memory reused by another key while we look: the choice
 * reads it without a lock, then the entry is looked up again under its
 * partition lock by a copy of its key, and removed only if the lookup
 * finds this very entry, still unpinned.  False if no window had one.
 */
static bool
tm_evict(void)
{
	int			try;

	for (try = 0; try < TM_EVICT_TRIES; try++)
	{
		uint32		start = pg_atomic_fetch_add_u32(&tm_shared->hand, TM_EVICT_WINDOW);
		TmEntry    *victim = NULL;
		uint64		oldest = PG_UINT64_MAX;
		int			i;

		for (i = 0; i < TM_EVICT_WINDOW; i++)
		{
			int32		slot = (int32) ((start + i) % (uint32) tm_shared->nring);
			TmEntry    *e = (TmEntry *) (uintptr_t) pg_atomic_read_u64(&tm_ring[slot]);
			uint64		at;

			if (e == NULL || !tm_evictable(e))
				continue;
			at = pg_atomic_read_u64(&e->last_access);
			if (at < oldest)
			{
				oldest = at;
				victim = e;
			}
		}
		if (victim != NULL)
		{
			TmCacheKey	key;
			uint32		hash;
			LWLock	   *lock;
			bool		done = false;

			memcpy(&key, &victim->key, sizeof(key));
			hash = get_hash_value(tm_htab, &key);
			lock = tm_lock_for(hash);
			LWLockAcquire(lock, LW_EXCLUSIVE);
			if (hash_search_with_hash_value(tm_htab, &key, hash, HASH_FIND, NULL) == victim &&
				tm_evictable(victim))
			{
				tm_remove(victim);
				done = true;
			}
			LWLockRelease(lock);
			if (done)
				return true;
		}
	}
	return false;
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

	if (hash_get_num_entries(tm_htab) < tm_cache_capacity() - tm_cache_capacity() / 10)
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
		/* its feature is known before an invalidation can look for it */
		tm_feature_register(key->feature);
		e->valid = false;
		e->config_stale = false;
		e->build = -1;
		e->epoch = 0;
		e->changes = pg_atomic_fetch_add_u64(&tm_shared->change_seq, 1);
		pg_atomic_init_u32(&e->pending[0], 0);
		pg_atomic_init_u32(&e->pending[1], 0);
		pg_atomic_init_u64(&e->reserved, 0);
		pg_atomic_init_u64(&e->used, 0);
		e->nthresholds = 0;
		pg_atomic_init_u32(&e->alerted, 0);
		pg_atomic_init_u64(&e->last_access, (uint64) GetCurrentTransactionStartTimestamp());
		tm_ring_add(e);
	}
	return e;
}

/*
 * Same, taking the partition lock and evicting if the table is full.
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
		if (!tm_evict())
			return NULL;
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
	of->nthresholds = e->nthresholds;
	memcpy(of->thresholds, e->thresholds, sizeof(int32) * e->nthresholds);
	of->alerted = pg_atomic_read_u32(&e->alerted);
	of->alerted_known = true;
	of->max_session_seconds = e->max_session_seconds;
	of->max_active_sessions = e->max_active_sessions;
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
	tm_count(hit ? TM_STAT_HITS : TM_STAT_MISSES);
	return hit;
}
