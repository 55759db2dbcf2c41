/*
 * cache_reserve.c
 *		consume's reservation.
 *
 * consume reserves against the quota in the entry (used + reserved +
 * amount <= quota) under the partition lock, and its COMMIT moves the
 * amount from reserved to used in one step: committed usage never passes
 * the quota, and no lock is held across the INSERT.
 * (That COMMIT step is tm_end_xact, in cache_local.c.)
 */
#include "cache.h"

#include "access/xact.h"

/* This transaction now holds amount more (or less) reserved on e. */
static void
tm_hold(TmLocal *l, TmEntry *e, const TmCacheKey *key, int64 amount)
{
	l->entry = e;
	tm_undo_push(key, 0, amount);
	l->reserved += amount;
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
		e->period_start != of->period.start || e->unlimited != of->unlimited ||
		tm_prepared_bypass_locked(key->org_id))
	{
		/* (prepared since this call began: its lock decides, on the table path) */
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
