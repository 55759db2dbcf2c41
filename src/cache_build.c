/*
 * cache_build.c
 *		Building an entry: its answer comes from the tables, and is installed
 *		in the cache when no commit can have been lost or counted twice.
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
 */
#include "cache.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/snapmgr.h"

/* the build slot this backend holds, for cleanup on error / exit */
static TmEntry *tm_build_entry = NULL;
static int	tm_build_partition = -1;

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

/* An entry's config: all but its period, kind and usage.  Lock held. */
static void
tm_entry_set_config(TmEntry *e, const TmOrgFeature *of, int64 granted)
{
	e->granted = granted;
	e->base_quota = of->base_quota;
	e->anchor = of->anchor;
	e->stored_start = of->stored.start;
	e->stored_end = of->stored.end;
	e->org_exists = of->org_exists;
	e->unlimited = of->unlimited;
	e->has_warning = of->has_warning;
	e->warning_percent = of->warning_percent;
	e->nthresholds = of->nthresholds;
	memcpy(e->thresholds, of->thresholds, sizeof(int32) * of->nthresholds);
	e->max_session_seconds = of->max_session_seconds;
	e->max_active_sessions = of->max_active_sessions;
	strlcpy(e->tier_id, of->tier_id, TM_KEY_LEN);
}

/* The events known for the entry's thresholds (caller holds its lock). */
void
tm_entry_set_alerted(TmEntry *e, uint32 mask)
{
	pg_atomic_write_u32(&e->alerted, mask);
}

/*
 * An entry whose quota, tier or thresholds changed (config_stale) and whose
 * usage did not: read its config again and keep its used, which the commits
 * keep exact; no ledger sum.  Installs only if no other invalidation reached
 * the entry meanwhile (its changes count) and the period is the entry's;
 * else false, and the caller rebuilds it.
 */
static bool
tm_refresh_config(const TmCacheKey *key, uint32 hash, const char *org_id,
				  const char *feature, TmOrgFeature *of, TmSums *sums,
				  MemoryContext cxt, TimestampTz now)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *e;
	bool		stale;
	uint64		changes0 = 0;
	Snapshot	snapshot;
	int64		granted;
	int64		used_now;
	uint32		alerted;
	bool		installed = false;

	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	stale = e != NULL && e->valid && e->config_stale && e->build < 0 &&
		e->period_start <= now && now < e->period_end;
	if (stale)
		changes0 = e->changes;
	LWLockRelease(lock);
	if (!stale)
		return false;

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	snapshot->curcid = FirstCommandId;
	tm_lookup(of, org_id, feature, snapshot, cxt);
	granted = tm_grants(of, snapshot);
	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	used_now = e != NULL ? TM_GET(e->used) : 0;
	LWLockRelease(lock);
	alerted = tm_alerted_for_build(of, used_now, granted, snapshot);
	UnregisterSnapshot(snapshot);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = hash_search_with_hash_value(tm_htab, key, hash, HASH_FIND, NULL);
	if (e != NULL && e->valid && e->config_stale && e->build < 0 &&
		e->changes == changes0 &&
		e->period_start == of->period.start && e->period_end == of->period.end &&
		e->is_gauge == of->is_gauge && strlen(of->tier_id) < TM_KEY_LEN)
	{
		bool		existed = e->org_exists;

		tm_entry_set_config(e, of, granted);
		tm_entry_set_alerted(e, alerted);
		/* created meanwhile by a commit this snapshot did not see */
		e->org_exists |= existed;
		e->config_stale = false;
		tm_entry_copy(e, of, sums, org_id, feature, cxt);
		tm_touch(e, now);
		installed = true;
	}
	LWLockRelease(lock);
	if (installed)
	{
		tm_add_own(key, of, sums);
		tm_count(TM_STAT_REFRESHES);
	}
	return installed;
}

/*
 * Answers key from the tables (inside SPI), and installs the answer in the
 * cache when it can (and may_enter).  Fills of and sums (with this transaction's own
 * amounts) either way; returns whether it installed a valid entry.
 */
bool
tm_cache_build(const TmCacheKey *key, uint32 hash, const char *org_id,
			   const char *feature, TmOrgFeature *of, TmSums *sums, MemoryContext cxt,
			   bool may_enter)
{
	LWLock	   *lock = tm_lock_for(hash);
	TmEntry    *volatile e;
	volatile bool installed = false;
	int64		own;
	static bool exit_hook = false;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	if (!exit_hook)
	{
		before_shmem_exit(tm_build_abandon_on_exit, (Datum) 0);
		exit_hook = true;
	}

	if (tm_refresh_config(key, hash, org_id, feature, of, sums, cxt, now))
		return true;

	/*
	 * Open a build on the entry, unless someone else is building it, or the
	 * caller only wants the answer (a read miss not admitted: no entry).
	 */
	e = may_enter ? tm_enter_locked(key, hash, lock) : NULL;
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
		volatile bool clean = pg_atomic_read_u32(&tm_shared->unregistered) == 0;
		uint64		config_gen = tm_config_gen();	/* before the snapshot */

		/* the tables first, then the snapshot, as a query does */
		tm_scan_lock_tables();
		/* everything committed, nothing of our own transaction */
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		snapshot->curcid = FirstCommandId;
		if (!tm_lookup_sums_cached(of, sums, org_id, feature, snapshot, config_gen, cxt))
		{
			tm_lookup(of, org_id, feature, snapshot, cxt);
			*sums = tm_sums(of, snapshot, true);
		}
		of->alerted = tm_alerted_for_build(of, sums->used, sums->granted, snapshot);
		of->alerted_known = true;

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
			bool		saturated = tm_at_bound(sums->used);

			LWLockAcquire(lock, LW_EXCLUSIVE);
			b = &tm_shared->builds[e->build];
			/* commits that finished during the build and were not in the sum */
			for (i = 0; i < Min(pg_atomic_read_u32(&b->nlate), TM_MAX_LATE); i++)
				if (XidInMVCCSnapshot(b->late[i].xid, snapshot) &&
					(of->is_gauge || b->late[i].ps == of->period.start))
					sums->used = tm_add_sat(sums->used, b->late[i].amount);
			saturated |= tm_at_bound(sums->used);
			TM_SET(e->used, sums->used);
			e->period_start = of->period.start;
			e->period_end = of->period.end;
			e->is_gauge = of->is_gauge;
			tm_entry_set_config(e, of, sums->granted);
			tm_entry_set_alerted(e, of->alerted);
			installed = clean && !b->spoiled && !saturated &&
				strlen(of->tier_id) < TM_KEY_LEN &&
				pg_atomic_read_u32(&tm_shared->unregistered) == 0;
			e->valid = installed;
			e->config_stale = false;
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

	own = tm_own_amount(key, of);
	if (own != 0 && tm_at_bound(sums->used))
		sums->used = tm_sums(of, InvalidSnapshot, true).used;	/* own rows included */
	else
		sums->used = tm_add_sat(sums->used, own);
	sums->reserved = tm_cache_reserved_by_others(key, hash);
	tm_count(installed ? TM_STAT_BUILDS : TM_STAT_FALLBACKS);
	return installed;
}
