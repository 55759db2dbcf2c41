/*
 * cache.h
 *		Private declarations of the shared-memory counter cache, shared only
 *		by its files; the rest of the extension calls the API in tiermeter.h.
 *
 * One concern per file:
 *	cache.c			the shared table: shared memory, the partitioned hash and
 *					its locks, finding and creating entries, eviction, the
 *					hit path
 *	cache_build.c	(re)building an entry from the tables: build slots, late
 *					commits, registration epochs
 *	cache_local.c	what this transaction recorded (its own amounts, the undo
 *					of subtransactions) and the transaction callbacks that
 *					apply it at commit
 *	cache_reserve.c	consume's reservations against the quota
 *	cache_inval.c	invalidation of config: the triggers, this transaction's
 *					invalidation set, applying it at commit
 *	cache_twophase.c	prepared transactions: the orgs they touched, answered
 *					from the tables until COMMIT or ROLLBACK PREPARED
 */
#ifndef TM_CACHE_H
#define TM_CACHE_H

#include "tiermeter.h"

#include "port/atomics.h"
#include "storage/backendid.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/hsearch.h"

#define TM_PARTITIONS	16
#define TM_PREPARED_LOCK	TM_PARTITIONS	/* the tranche's last lock */

/* a transaction that noted more keys than this (and than an eighth of the
 * cache) has its keys' entries invalidated at commit, not pinned, and its
 * record_usage misses make no entries */
#define TM_BIG_TRANSACTION_MIN	1024

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
	bool		config_stale;	/* valid, but its quota, tier or thresholds
								 * changed: re-read them, keep used */
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
	int32		nthresholds;	/* alert_thresholds, lowest first */
	int32		thresholds[TM_MAX_THRESHOLDS];
	pg_atomic_uint32 alerted;	/* bit i: thresholds[i]'s event of the period
								 * is committed (set bits may be missing,
								 * never wrong) */
	uint64		changes;		/* a new tm_shared->change_seq value at creation
								 * and at each invalidation that reaches it */
	int32		slot;			/* its place in the eviction ring, or -1 */
	int64		max_session_seconds;	/* the tier's session limits (-1: */
	int32		max_active_sessions;	/* unlimited) */
	char		tier_id[TM_KEY_LEN];
} TmEntry;

/*
 * Feature names that have (or had) an entry, in any database: an org's
 * entries are found by looking each one up, without scanning the table.
 * Append-only; past TM_MAX_FEATURES names, org invalidations scan.
 */
#define TM_MAX_FEATURES	256

/* databases of one server whose distributed placements citus.c tracks */
#define TM_CITUS_DBS	16

/* The cache's statistics (cache_stats()), one set per backend slot. */
typedef enum TmStat
{
	TM_STAT_HITS,
	TM_STAT_MISSES,
	TM_STAT_BUILDS,
	TM_STAT_REFRESHES,
	TM_STAT_EVICTIONS,
	TM_STAT_FALLBACKS,
	TM_STAT_INVALIDATIONS,
	TM_NSTATS
} TmStat;

typedef union TmStatSlot
{
	pg_atomic_uint64 n[TM_NSTATS];
	char		pad[PG_CACHE_LINE_SIZE * 2];	/* one backend per line pair */
} TmStatSlot;

typedef struct TmShared
{
	LWLockPadded *locks;
	pg_atomic_uint64 change_seq;	/* never repeats, even across evictions */
	pg_atomic_uint64 config_gen;	/* bumped by each commit that changed a
									 * config table (cache_config.c) */
	pg_atomic_uint32 config_inflight;	/* such commits between PRE_COMMIT and
										 * their bump */
	pg_atomic_uint32 unregistered;	/* commits in flight without an entry */
	slock_t		build_mutex;	/* guards build_used */
	bool		build_used[TM_MAX_BUILDS];
	TmBuild		builds[TM_MAX_BUILDS];

	/* the eviction ring: one slot per entry, a clock hand, free slots */
	slock_t		ring_mutex;		/* guards ring_free and nfree */
	int32		nring;
	int32		nfree;
	pg_atomic_uint32 hand;

	/* feature names seen (TM_MAX_FEATURES), appended under feature_mutex */
	slock_t		feature_mutex;
	pg_atomic_uint32 nfeatures;
	bool		features_overflow;
	char		features[TM_MAX_FEATURES][TM_KEY_LEN];

	/*
	 * prepared transactions (cache_twophase.c): slots in use, plus one until
	 * the first check after start has registered those recovered from disk
	 */
	pg_atomic_uint32 nprepared;
	pg_atomic_uint32 prepared_checked;
	int32		nprepared_slots;
	int32		nprepared_hw;	/* slots in use are all below this (registry lock) */

	/* the shards placed here, per database, on a Citus node (citus.c) */
	slock_t		citus_mutex;
	Oid			citus_db[TM_CITUS_DBS];
	uint64		citus_sig[TM_CITUS_DBS];

	/* statistics: what cache_stats_reset() subtracts, and when */
	slock_t		stats_mutex;
	uint64		stats_base[TM_NSTATS];
	TimestampTz stats_reset;
	int32		nstat_slots;
} TmShared;

/* the ring's slots (TmEntry pointers) and its free list, in shared memory */
extern pg_atomic_uint64 *tm_ring;
extern int32 *tm_ring_free;
extern TmStatSlot *tm_stats;

/*
 * Read misses seen lately, one key hash per slot (tm_cache_size slots): when
 * the table is nearly full, a read miss is answered from the tables and
 * builds an entry only if its key missed once before, so that keys read
 * once do not evict the ones read often.
 */
extern pg_atomic_uint32 *tm_ghosts;

/*
 * used, reserved and pending change under the partition lock held in shared
 * mode (commits of one org run in parallel), so they are atomics; anything
 * that must see them still, a build's install or a reservation, holds the
 * lock exclusively.
 */
#define TM_GET(a)		((int64) pg_atomic_read_u64(&(a)))
#define TM_ADD(a, v)	((void) pg_atomic_fetch_add_u64(&(a), (int64) (v)))
#define TM_SET(a, v)	pg_atomic_write_u64(&(a), (uint64) (v))

/* used saturates at the ends of bigint (tm_add_sat), atomically; false if it did */
static inline bool
tm_atomic_add_sat(pg_atomic_uint64 *a, int64 v)
{
	uint64		old = pg_atomic_read_u64(a);
	int64		r;

	do
		r = tm_add_sat((int64) old, v);
	while (!pg_atomic_compare_exchange_u64(a, &old, (uint64) r));
	return !tm_at_bound(r);
}

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
	bool		inval_at_commit;	/* a big transaction's: invalidated */
	TmEntry    *entry;			/* pinned while registered or reserved */
} TmLocal;

/* iterating over this transaction's notes (cache_local.c) */
typedef struct TmLocalIter
{
	bool		first_done;
	bool		in_hash;
	HASH_SEQ_STATUS seq;
} TmLocalIter;

/* an org in this transaction's invalidation set (cache_inval.c) */
typedef struct TmInvalOrg
{
	char		org_id[TM_KEY_LEN];
	bool		usage;			/* its usage or period may have changed */
} TmInvalOrg;

/* cache.c */
extern TmShared *tm_shared;
extern HTAB *tm_htab;

/* Counts an event in this backend's statistics slot. */
static inline void
tm_count(TmStat what)
{
	int			i = (MyBackendId > 0 && MyBackendId < tm_shared->nstat_slots) ? MyBackendId : 0;

	pg_atomic_fetch_add_u64(&tm_stats[i].n[what], 1);
}

static inline LWLock *
tm_lock_for(uint32 hash)
{
	return &tm_shared->locks[hash % TM_PARTITIONS].lock;
}

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
	return e->valid && !e->config_stale && e->period_start <= now && now < e->period_end;
}

extern TmEntry *tm_enter_locked(const TmCacheKey *key, uint32 hash, LWLock *lock);
extern int	tm_feature_count(void);
extern int32 tm_cache_capacity(void);
extern const char *tm_feature_name(int i);
extern void tm_entry_copy(TmEntry *e, TmOrgFeature *of, TmSums *sums,
						  const char *org_id, const char *feature, MemoryContext cxt);

/* cache_local.c */
extern TmLocal *tm_local_find(const TmCacheKey *key);
extern TmLocal *tm_local_entry(const TmCacheKey *key, uint32 hash);
extern int64 tm_own_amount(const TmCacheKey *key, const TmOrgFeature *of);
extern void tm_add_own(const TmCacheKey *key, const TmOrgFeature *of, TmSums *sums);
extern TmLocal *tm_local_next(TmLocalIter *it);
extern bool tm_needs_registration(const TmLocal *l);
extern void tm_undo_push(const TmCacheKey *key, int64 amount, int64 reserved);
extern void tm_entry_set_alerted(TmEntry *e, uint32 mask);

/* cache_inval.c */
extern void tm_inval_org(const char *org_id, bool usage);
extern void tm_inval_key(const TmCacheKey *key, uint32 hash);
extern bool tm_inval_all;
extern bool tm_inval_all_usage;
extern HTAB *tm_inval_orgs;

extern void tm_apply_invalidations(void);
extern void tm_inval_now(Oid dbid, bool all, const char (*orgs)[TM_KEY_LEN], int norgs);

/* cache_twophase.c */
extern Size tm_prepared_shmem_size(void);
extern void tm_prepared_shmem_init(void);
extern bool tm_prepared_bypass_locked(const char *org_id);
extern void tm_prepared_pre_prepare(void);
extern void tm_prepared_end_xact(bool prepared);

/* cache_config.c */
extern uint64 tm_config_gen(void);
extern void tm_config_pre_commit(void);
extern void tm_config_end_xact(void);
extern bool tm_lookup_sums_cached(TmOrgFeature *of, TmSums *sums, const char *org_id,
								  const char *feature, Snapshot snapshot, uint64 gen,
								  MemoryContext cxt);

#endif							/* TM_CACHE_H */
