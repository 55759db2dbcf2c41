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
 * How committed usage reaches an entry.  A transaction keeps what it
 * recorded in a backend-local table.  At PRE_COMMIT it registers with each
 * entry it touched (entry->pending, which pins the entry, creating an
 * invalid one if needed); at COMMIT, after its rows became visible, it adds
 * its amounts if the entry is valid, and unregisters; at ABORT it only
 * unregisters.  Nobody ever sleeps on another backend here.
 *
 * How an entry is (re)built without losing or double counting a commit.
 * The builder takes a build slot for the entry, then sums the ledger under
 * the latest snapshot (its own transaction's rows hidden).  A commit whose
 * COMMIT step runs while the slot is open cannot add to the invalid entry:
 * it appends (xid, amount) to the slot instead.  At install the builder adds
 * the amounts of those xids its snapshot did not see; the others are in its
 * sum.  A commit whose COMMIT step ran before the slot opened was visible
 * before the snapshot, so it is in the sum.  A commit visible to the
 * snapshot whose COMMIT step had not run yet registered before the
 * snapshot: after its snapshot the builder starts a new registration epoch
 * and waits for the older registrations to finish (they are past every
 * lock and never wait on us), so their steps land in the late list.
 * Whatever the slot cannot
 * represent (overflow, amounts of another period, a commit with no entry,
 * a config change meanwhile) leaves the entry invalid, and the answer still
 * comes from the tables.  A second builder of the same entry does not wait:
 * it answers from the tables without installing.
 *
 * consume reserves against the quota in the entry (used + reserved +
 * amount <= quota) under the partition lock, and its COMMIT moves the
 * amount from reserved to used in one step: committed usage never passes
 * the quota, and no lock is held across the INSERT.
 */
#include "tiermeter.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "storage/spin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

TM_FUNCTION(tiermeter_invalidate_trigger);
TM_FUNCTION(tiermeter_invalidate_database);
TM_FUNCTION(tiermeter_invalidate_insert_trigger);

#define TM_PARTITIONS	16
#define TM_TRANCHE		"tiermeter"

#define TM_MAX_BUILDS	64		/* entries being built at once */
#define TM_MAX_LATE		64		/* commits that one build can take in */

typedef struct TmLate
{
	TransactionId xid;
	int64		amount;
	TimestampTz ps;				/* the period the amount belongs to */
} TmLate;

/* One build in progress; guarded by the partition lock of its entry. */
typedef struct TmBuild
{
	bool		spoiled;		/* something happened it cannot represent */
	pg_atomic_uint32 nlate;		/* appended under a shared lock */
	TmLate		late[TM_MAX_LATE];
} TmBuild;

typedef struct TmEntry
{
	TmCacheKey	key;
	bool		valid;
	int16		build;			/* build slot while being built, else -1 */
	uint32		epoch;			/* bumped by each build after its snapshot */
	pg_atomic_uint32 pending[2];	/* transactions between PRE_COMMIT and
									 * COMMIT/ABORT, by parity of the epoch
									 * they registered in */
	pg_atomic_uint64 reserved;	/* consume amounts not yet committed */
	pg_atomic_uint64 used;		/* committed usage in [period_start, period_end) */
	int64		granted;
	int64		base_quota;
	TimestampTz period_start;
	TimestampTz period_end;
	TimestampTz anchor;
	TimestampTz stored_start;
	TimestampTz stored_end;
	bool		org_exists;
	bool		is_gauge;
	bool		unlimited;
	bool		has_warning;
	int32		warning_percent;
	pg_atomic_uint64 last_access;
	char		tier_id[TM_KEY_LEN];
} TmEntry;

typedef struct TmShared
{
	LWLockPadded *locks;
	pg_atomic_uint64 generation;	/* bumped by every config commit */
	pg_atomic_uint32 unregistered;	/* commits in flight without an entry */
	slock_t		build_mutex;	/* guards build_used */
	bool		build_used[TM_MAX_BUILDS];
	TmBuild		builds[TM_MAX_BUILDS];
} TmShared;

/*
 * used, reserved and pending change under the partition lock held in shared
 * mode (commits of one org run in parallel), so they are atomics; anything
 * that must see them still, a build's install or a reservation, holds the
 * lock exclusively.
 */
#define TM_GET(a)		((int64) pg_atomic_read_u64(&(a)))
#define TM_ADD(a, v)	((void) pg_atomic_fetch_add_u64(&(a), (int64) (v)))
#define TM_SET(a, v)	pg_atomic_write_u64(&(a), (uint64) (v))

/* used saturates at the ends of bigint (tm_add_sat), atomically */
static inline void
tm_atomic_add_sat(pg_atomic_uint64 *a, int64 v)
{
	uint64		old = pg_atomic_read_u64(a);

	while (!pg_atomic_compare_exchange_u64(a, &old, (uint64) tm_add_sat((int64) old, v)))
		;
}

static inline uint32
tm_pending(TmEntry *e)
{
	return pg_atomic_read_u32(&e->pending[0]) + pg_atomic_read_u32(&e->pending[1]);
}

int			tm_cache_size = 100000;

static TmShared *tm_shared = NULL;
static HTAB *tm_htab = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* what this transaction recorded, per key */
typedef struct TmLocal
{
	TmCacheKey	key;
	uint32		hash;
	int64		amount;			/* recorded inside [ps, pe) (gauges: all) */
	int64		reserved;		/* of which reserved by consume */
	TimestampTz ps;
	TimestampTz pe;
	bool		has_period;		/* ps and pe are set */
	bool		mixed;			/* amounts of two different periods */
	bool		stale;			/* amounts outside the period: rebuild */
	bool		created_org;
	bool		registered;
	int64		undo_reserved;	/* scratch for a savepoint's rollback */
	uint32		reg_epoch;		/* the entry's epoch when we registered */
	bool		unregistered;
	TmEntry    *entry;			/* pinned while registered or reserved */
} TmLocal;

/* undo records for subtransactions (none outside savepoints) */
typedef struct TmUndo
{
	SubTransactionId subid;
	TmCacheKey	key;
	int64		amount;
	int64		reserved;
} TmUndo;

/*
 * This transaction's notes: the first key inline (most transactions touch
 * one), the others in a hash table in TopTransactionContext.
 */
static TmLocal tm_first;
static bool tm_first_used = false;
static HTAB *tm_local = NULL;

typedef struct TmLocalIter
{
	bool		first_done;
	bool		in_hash;
	HASH_SEQ_STATUS seq;
} TmLocalIter;
static List *tm_undo = NIL;		/* in TopTransactionContext */
static bool tm_inval_all = false;
static HTAB *tm_inval_orgs = NULL;	/* org ids, in TopTransactionContext */

/* the build slot this backend holds, for cleanup on error / exit */
static TmEntry *tm_build_entry = NULL;
static int	tm_build_partition = -1;

/* this transaction's xid, taken at PRE_COMMIT for the COMMIT step */
static TransactionId tm_commit_xid = InvalidTransactionId;

/*----------------------------------------------------------------------
 * Shared memory
 *----------------------------------------------------------------------
 */

static Size
tm_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(TmShared)),
					hash_estimate_size(tm_cache_size, sizeof(TmEntry)));
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

static inline LWLock *
tm_lock_for(uint32 hash)
{
	return &tm_shared->locks[hash % TM_PARTITIONS].lock;
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
static TmEntry *
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

/* LRU stamp, written at most once a second so hot entries stay read-mostly */
static inline void
tm_touch(TmEntry *e, TimestampTz now)
{
	if ((uint64) now > pg_atomic_read_u64(&e->last_access) + USECS_PER_SEC)
		pg_atomic_write_u64(&e->last_access, (uint64) now);
}

static inline bool
tm_entry_current(const TmEntry *e, TimestampTz now)
{
	return e->valid && e->period_start <= now && now < e->period_end;
}

/* Copies an entry's answer out; its strings go into cxt. */
static void
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

static TmLocal *
tm_local_find(const TmCacheKey *key)
{
	if (tm_first_used && memcmp(&tm_first.key, key, sizeof(TmCacheKey)) == 0)
		return &tm_first;
	if (tm_local != NULL)
		return hash_search(tm_local, key, HASH_FIND, NULL);
	return NULL;
}

static TmLocal *
tm_local_next(TmLocalIter *it)
{
	if (!it->first_done)
	{
		it->first_done = true;
		if (tm_first_used)
			return &tm_first;
	}
	if (tm_local == NULL)
		return NULL;
	if (!it->in_hash)
	{
		hash_seq_init(&it->seq, tm_local);
		it->in_hash = true;
	}
	return hash_seq_search(&it->seq);
}

/* This transaction's own uncommitted amount for a key, in its period. */
static int64
tm_own_amount(const TmCacheKey *key, const TmOrgFeature *of)
{
	TmLocal    *l;

	l = tm_local_find(key);
	if (l == NULL || l->mixed)
		return 0;
	if (!of->is_gauge && (l->ps != of->period.start || l->pe != of->period.end))
		return 0;
	return l->amount;
}

/*
 * Adds this transaction's own amounts to an answer copied from an entry,
 * and takes its own reservations out of what others hold.
 */
static void
tm_add_own(const TmCacheKey *key, const TmOrgFeature *of, TmSums *sums)
{
	TmLocal    *l = tm_local_find(key);

	if (l == NULL)
		return;
	sums->reserved -= l->reserved;
	if (l->mixed || (!of->is_gauge && (l->ps != of->period.start || l->pe != of->period.end)))
		return;
	sums->used = tm_add_sat(sums->used, l->amount);
}

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

/*----------------------------------------------------------------------
 * Building an entry
 *----------------------------------------------------------------------
 */

static int
tm_build_slot_take(void)
{
	int			i;
	int			slot = -1;

	SpinLockAcquire(&tm_shared->build_mutex);
	for (i = 0; i < TM_MAX_BUILDS; i++)
	{
		if (!tm_shared->build_used[i])
		{
			tm_shared->build_used[i] = true;
			slot = i;
			break;
		}
	}
	SpinLockRelease(&tm_shared->build_mutex);
	if (slot >= 0)
	{
		tm_shared->builds[slot].spoiled = false;
		pg_atomic_init_u32(&tm_shared->builds[slot].nlate, 0);
	}
	return slot;
}

/* Closes this backend's build (caller holds the entry's partition lock). */
static void
tm_build_close_locked(void)
{
	int			slot = tm_build_entry->build;

	tm_build_entry->build = -1;
	tm_build_entry = NULL;
	tm_build_partition = -1;
	SpinLockAcquire(&tm_shared->build_mutex);
	tm_shared->build_used[slot] = false;
	SpinLockRelease(&tm_shared->build_mutex);
}

static void
tm_build_abandon(void)
{
	if (tm_build_entry != NULL)
	{
		LWLock	   *lock = &tm_shared->locks[tm_build_partition].lock;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		tm_build_close_locked();
		LWLockRelease(lock);
	}
}

static void
tm_build_abandon_on_exit(int code, Datum arg)
{
	if (tm_build_entry != NULL)
	{
		LWLockReleaseAll();
		tm_build_abandon();
	}
}

/*
 * Starts a new registration epoch on e and waits (polling, at most a second)
 * until no transaction registered in an earlier epoch is still between its
 * PRE_COMMIT and COMMIT steps.  Such transactions are past every lock wait;
 * false if they did not finish in time.
 */
static bool
tm_wait_registrations(TmEntry *e, LWLock *lock)
{
	uint32		old;
	int			waited;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u32(&e->pending[(e->epoch + 1) & 1]) != 0)
	{
		/* left by an earlier build that gave up: we cannot tell them apart */
		LWLockRelease(lock);
		return false;
	}
	old = e->epoch++;
	LWLockRelease(lock);
	for (waited = 0;; waited++)
	{
		int32		pending;

		LWLockAcquire(lock, LW_SHARED);
		pending = pg_atomic_read_u32(&e->pending[old & 1]);
		LWLockRelease(lock);
		if (pending == 0)
			return true;
		if (waited >= 10000)
			return false;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(100L);
	}
}

/*
 * Answers key from the tables (inside SPI), and installs the answer in the
 * cache when it can.  Fills of and sums (with this transaction's own
 * amounts) either way; returns whether it installed a valid entry.
 */
bool
tm_cache_build(const TmCacheKey *key, uint32 hash, const char *org_id,
			   const char *feature, TmOrgFeature *of, TmSums *sums, MemoryContext cxt)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *volatile e;
	volatile bool installed = false;
	static bool exit_hook = false;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	if (!exit_hook)
	{
		before_shmem_exit(tm_build_abandon_on_exit, (Datum) 0);
		exit_hook = true;
	}

	/* open a build on the entry, unless someone else is building it */
	e = tm_enter_locked(key, hash, lock);
	if (e != NULL)
	{
		if (tm_entry_current(e, now))
		{
			/* built meanwhile */
			tm_entry_copy(e, of, sums, org_id, feature, cxt);
			LWLockRelease(lock);
			tm_add_own(key, of, sums);
			return true;
		}
		if (e->build < 0 && (e->build = tm_build_slot_take()) >= 0)
		{
			/* e.g. its period ended: nobody may reserve on it any more */
			e->valid = false;
			tm_build_entry = e;
			tm_build_partition = hash % TM_PARTITIONS;
		}
		else
			e = NULL;			/* another build, or no slot: just answer */
		LWLockRelease(lock);
	}

	PG_TRY();
	{
		Snapshot	snapshot;
		uint64		gen0 = pg_atomic_read_u64(&tm_shared->generation);
		volatile bool clean = pg_atomic_read_u32(&tm_shared->unregistered) == 0;

		/* everything committed, nothing of our own transaction */
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		snapshot->curcid = FirstCommandId;
		tm_lookup(of, org_id, feature, snapshot, cxt);
		*sums = tm_sums(of, snapshot, true);

		/*
		 * A commit visible to the snapshot may not have done its COMMIT step
		 * yet; if that step came after the install it would add what the sum
		 * already has.  Such commits registered before the snapshot: wait for
		 * every registration older than now (they never wait on us) so that
		 * their COMMIT steps land in the build's late list.
		 */
		if (e != NULL && !tm_wait_registrations(e, lock))
			clean = false;

		if (e != NULL)
		{
			TmBuild    *b;
			int			i;

			LWLockAcquire(lock, LW_EXCLUSIVE);
			b = &tm_shared->builds[e->build];
			/* commits that finished during the build and were not in the sum */
			for (i = 0; i < Min(pg_atomic_read_u32(&b->nlate), TM_MAX_LATE); i++)
				if (XidInMVCCSnapshot(b->late[i].xid, snapshot) &&
					(of->is_gauge || b->late[i].ps == of->period.start))
					sums->used = tm_add_sat(sums->used, b->late[i].amount);
			TM_SET(e->used, sums->used);
			e->granted = sums->granted;
			e->base_quota = of->base_quota;
			e->period_start = of->period.start;
			e->period_end = of->period.end;
			e->anchor = of->anchor;
			e->stored_start = of->stored.start;
			e->stored_end = of->stored.end;
			e->org_exists = of->org_exists;
			e->is_gauge = of->is_gauge;
			e->unlimited = of->unlimited;
			e->has_warning = of->has_warning;
			e->warning_percent = of->warning_percent;
			strlcpy(e->tier_id, of->tier_id, TM_KEY_LEN);
			installed = clean && !b->spoiled &&
				strlen(of->tier_id) < TM_KEY_LEN &&
				pg_atomic_read_u64(&tm_shared->generation) == gen0 &&
				pg_atomic_read_u32(&tm_shared->unregistered) == 0;
			e->valid = installed;
			tm_touch(e, now);
			tm_build_close_locked();
			LWLockRelease(lock);
		}
		UnregisterSnapshot(snapshot);
	}
	PG_CATCH();
	{
		tm_build_abandon();
		PG_RE_THROW();
	}
	PG_END_TRY();

	sums->used = tm_add_sat(sums->used, tm_own_amount(key, of));
	sums->reserved = tm_cache_reserved_by_others(key, hash);
	return installed;
}

/*----------------------------------------------------------------------
 * consume's reservation
 *----------------------------------------------------------------------
 */

static TmLocal *
tm_local_entry(const TmCacheKey *key, uint32 hash)
{
	TmLocal    *l = tm_local_find(key);

	if (l != NULL)
		return l;
	if (!tm_first_used)
	{
		l = &tm_first;
		tm_first_used = true;
		l->key = *key;
	}
	else
	{
		if (tm_local == NULL)
		{
			HASHCTL		info;

			info.keysize = sizeof(TmCacheKey);
			info.entrysize = sizeof(TmLocal);
			info.hcxt = TopTransactionContext;
			tm_local = hash_create("tiermeter pending", 64, &info,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		}
		l = hash_search(tm_local, key, HASH_ENTER, NULL);
	}
	l->hash = hash;
	l->amount = 0;
	l->reserved = 0;
	l->ps = 0;
	l->pe = 0;
	l->has_period = false;
	l->mixed = false;
	l->stale = false;
	l->created_org = false;
	l->registered = false;
	l->undo_reserved = 0;
	l->reg_epoch = 0;
	l->unregistered = false;
	l->entry = NULL;
	return l;
}

static void
tm_undo_push(const TmCacheKey *key, int64 amount, int64 reserved)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	MemoryContext old;
	TmUndo	   *u;

	if (subid == TopSubTransactionId)
		return;
	old = MemoryContextSwitchTo(TopTransactionContext);
	u = palloc(sizeof(TmUndo));
	u->subid = subid;
	u->key = *key;
	u->amount = amount;
	u->reserved = reserved;
	tm_undo = lappend(tm_undo, u);
	MemoryContextSwitchTo(old);
}

/* This transaction now holds amount more (or less) reserved on e. */
static void
tm_hold(TmLocal *l, TmEntry *e, const TmCacheKey *key, int64 amount)
{
	l->entry = e;
	l->reserved += amount;
	tm_undo_push(key, 0, amount);
}

/*
 * Tries to reserve amount against the quota.  Returns TM_RESERVE_MISS if the
 * entry is not current (build it and call again).
 */
TmReserve
tm_cache_reserve(const TmCacheKey *key, uint32 hash, int64 amount,
				 const TmOrgFeature *of, TmSums *sums)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *e;
	TmLocal    *l;
	int64		own;
	int64		quota;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	l = tm_local_entry(key, hash);	/* may allocate: before the lock */
	own = tm_own_amount(key, of);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	if (e == NULL || !tm_entry_current(e, now) ||
		e->period_start != of->period.start || e->unlimited != of->unlimited)
	{
		LWLockRelease(lock);
		return TM_RESERVE_MISS;
	}
	if (l->mixed || (l->has_period && !e->is_gauge && l->ps != e->period_start))
	{
		/* our own amounts are of another period: take the table path */
		LWLockRelease(lock);
		return TM_RESERVE_MISS;
	}
	quota = tm_add_sat(e->base_quota, e->granted);
	/* own record_usage amounts are not in reserved; own consumes are */
	if (!e->unlimited &&
		(quota == 0 ||
		 tm_add_sat(tm_add_sat(tm_add_sat(TM_GET(e->used), TM_GET(e->reserved)), own - l->reserved),
					amount) > quota))
	{
		sums->used = tm_add_sat(TM_GET(e->used), own);
		sums->granted = e->granted;
		sums->reserved = TM_GET(e->reserved) - l->reserved;
		LWLockRelease(lock);
		return TM_RESERVE_REFUSED;
	}
	TM_ADD(e->reserved, amount);
	sums->used = tm_add_sat(tm_add_sat(TM_GET(e->used), own), amount);
	sums->granted = e->granted;
	sums->reserved = TM_GET(e->reserved) - amount - l->reserved;
	LWLockRelease(lock);
	tm_hold(l, e, key, amount);
	return TM_RESERVE_OK;
}

/*
 * For consume's table path (no current entry): what other transactions
 * have reserved but not committed, and a reservation of our own.
 */
int64
tm_cache_reserved_by_others(const TmCacheKey *key, uint32 hash)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *e;
	TmLocal    *l = tm_local_find(key);
	int64		r = 0;

	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	if (e != NULL)
		r = TM_GET(e->reserved) - (l ? l->reserved : 0);
	LWLockRelease(lock);
	return r;
}

bool
tm_cache_reserve_fallback(const TmCacheKey *key, uint32 hash, int64 amount)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmLocal    *l = tm_local_entry(key, hash);
	TmEntry    *e;

	e = tm_enter_locked(key, hash, lock);
	if (e == NULL)
		return false;
	TM_ADD(e->reserved, amount);
	LWLockRelease(lock);
	tm_hold(l, e, key, amount);
	return true;
}

/* Gives a reservation back (same key inserted by someone else). */
void
tm_cache_unreserve(const TmCacheKey *key, uint32 hash, int64 amount)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmLocal    *l = tm_local_find(key);

	LWLockAcquire(lock, LW_SHARED);
	TM_ADD(l->entry->reserved, -amount);
	LWLockRelease(lock);
	tm_hold(l, l->entry, key, -amount);
}

/* Notes usage this transaction recorded, to apply at commit. */
void
tm_cache_note(const TmCacheKey *key, uint32 hash, const TmOrgFeature *of,
			  int64 amount, TimestampTz occurred_at, bool created_org)
{
	TmLocal    *l = tm_local_entry(key, hash);
	bool		in_period = of->is_gauge ||
		(of->period.start <= occurred_at && occurred_at < of->period.end);

	/* a savepoint could roll the org back: only note it at top level */
	if (created_org && GetCurrentSubTransactionId() == TopSubTransactionId)
		l->created_org = true;
	if (!in_period)
	{
		/* another period's entry may be cached: have it rebuilt */
		l->stale = true;
		return;
	}
	if (!l->has_period)
	{
		l->ps = of->period.start;
		l->pe = of->period.end;
		l->has_period = true;
	}
	else if (!of->is_gauge && (l->ps != of->period.start || l->pe != of->period.end))
		l->mixed = true;
	l->amount = tm_add_sat(l->amount, amount);
	tm_undo_push(key, amount, 0);
}

/*----------------------------------------------------------------------
 * Invalidation of config: triggers note what changed; the commit applies it
 *----------------------------------------------------------------------
 */

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

static void
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

/*----------------------------------------------------------------------
 * Transaction callbacks
 *----------------------------------------------------------------------
 */

static void
tm_local_reset(void)
{
	tm_first_used = false;
	tm_local = NULL;
	tm_undo = NIL;
	tm_inval_all = false;
	tm_inval_orgs = NULL;
}

/* PRE_COMMIT: register with every entry we touched.  Never waits. */
static void
tm_pre_commit(void)
{
	TmLocalIter it = {0};
	TmLocal    *l;

	tm_commit_xid = GetTopTransactionIdIfAny();
	while ((l = tm_local_next(&it)) != NULL)
	{
		LWLock	   *lock;
		TmEntry    *e;

		if (l->amount == 0 && l->reserved == 0 && !l->created_org &&
			!l->mixed && !l->stale)
			continue;
		lock = tm_lock_for(l->hash);
		/* usually the entry is there: a shared lock is enough to pin it */
		LWLockAcquire(lock, LW_SHARED);
		e = hash_search_with_hash_value(tm_htab, &l->key, l->hash, HASH_FIND, NULL);
		if (e == NULL)
		{
			LWLockRelease(lock);
			e = tm_enter_locked(&l->key, l->hash, lock);
		}
		if (e == NULL)
		{
			pg_atomic_fetch_add_u32(&tm_shared->unregistered, 1);
			l->unregistered = true;
			continue;
		}
		l->reg_epoch = e->epoch;
		pg_atomic_fetch_add_u32(&e->pending[l->reg_epoch & 1], 1);
		l->entry = e;
		l->registered = true;
		LWLockRelease(lock);
	}
}

/*
 * Applies one transaction's notes to its entry.  The partition lock is held
 * in shared mode: other commits of the same org apply at the same time.
 */
static void
tm_apply_locked(TmEntry *e, TmLocal *l)
{
	bool		other_period = l->mixed || l->stale ||
		(!e->is_gauge && l->amount != 0 &&
		 (l->ps != e->period_start || l->pe != e->period_end));

	if (e->build >= 0)
	{
		/* being built: hand the amount to the builder */
		TmBuild    *b = &tm_shared->builds[e->build];

		if (l->mixed || l->stale || l->created_org || !TransactionIdIsValid(tm_commit_xid))
			b->spoiled = true;
		else if (l->amount != 0)
		{
			uint32		i = pg_atomic_fetch_add_u32(&b->nlate, 1);

			if (i < TM_MAX_LATE)
			{
				b->late[i].xid = tm_commit_xid;
				b->late[i].amount = l->amount;
				b->late[i].ps = l->ps;
			}
			else
				b->spoiled = true;
		}
	}
	else if (e->valid)
	{
		if (other_period)
			e->valid = false;
		else
			tm_atomic_add_sat(&e->used, l->amount);
	}
	if (l->created_org)
		e->org_exists = true;
}

/* COMMIT (rows visible) or ABORT: apply or drop, unregister.  No errors. */
static void
tm_end_xact(bool commit)
{
	TmLocalIter it = {0};
	TmLocal    *l;

	/*
	 * Config changes first: an entry of an org this transaction changed must
	 * be invalid before its reservations go (its amounts may not be noted).
	 */
	if (commit && (tm_inval_all || tm_inval_orgs != NULL) && tm_shared != NULL)
		tm_apply_invalidations();
	if (tm_shared != NULL)
	{
		while ((l = tm_local_next(&it)) != NULL)
		{
			TmEntry    *e = l->entry;
			LWLock	   *lock;

			if (l->unregistered)
				pg_atomic_fetch_sub_u32(&tm_shared->unregistered, 1);
			/* only a registration or a reservation pins the entry */
			if (e == NULL || (!l->registered && l->reserved == 0))
				continue;
			lock = tm_lock_for(l->hash);
			LWLockAcquire(lock, LW_SHARED);
			/* usage first, then the reservation goes, then we unregister */
			if (commit && l->registered)
				tm_apply_locked(e, l);
			if (l->reserved != 0)
				TM_ADD(e->reserved, -l->reserved);
			if (l->registered)
				pg_atomic_fetch_sub_u32(&e->pending[l->reg_epoch & 1], 1);
			LWLockRelease(lock);
		}
	}
	tm_commit_xid = InvalidTransactionId;
	tm_local_reset();
}

static void
tm_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (tm_shared != NULL)
				tm_pre_commit();
			break;
		case XACT_EVENT_COMMIT:
			tm_end_xact(true);
			break;
		case XACT_EVENT_ABORT:
			tm_end_xact(false);
			break;
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PRE_PREPARE:
			if (tm_first_used || tm_inval_all || tm_inval_orgs != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("tiermeter: cannot PREPARE a transaction that recorded usage")));
			break;
		default:
			break;
	}
}

/* A subtransaction rolled back: undo what it recorded and reserved. */
static void
tm_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	if (tm_undo == NIL)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, tm_undo)
		{
			TmUndo	   *u = lfirst(lc);

			if (u->subid == mySubid)
				u->subid = parentSubid;
		}
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		TmLocalIter it = {0};
		TmLocal    *l;

		/* net effect per key first: a reserve and unreserve cancel out */
		while ((l = tm_local_next(&it)) != NULL)
			l->undo_reserved = 0;
		foreach(lc, tm_undo)
		{
			TmUndo	   *u = lfirst(lc);

			if (u->subid != mySubid)
				continue;
			l = tm_local_find(&u->key);
			if (l != NULL)
			{
				l->amount -= u->amount;
				l->undo_reserved += u->reserved;
			}
			u->subid = InvalidSubTransactionId;
		}
		memset(&it, 0, sizeof(it));
		while ((l = tm_local_next(&it)) != NULL)
		{
			if (l->undo_reserved != 0)
			{
				LWLock	   *lock = tm_lock_for(l->hash);

				LWLockAcquire(lock, LW_SHARED);
				TM_ADD(l->entry->reserved, -l->undo_reserved);
				LWLockRelease(lock);
				l->reserved -= l->undo_reserved;
				l->undo_reserved = 0;
			}
		}
	}
}

void
tm_cache_register_callbacks(void)
{
	RegisterXactCallback(tm_xact_callback, NULL);
	RegisterSubXactCallback(tm_subxact_callback, NULL);
}
