/*
 * cache_local.c
 *		What this transaction recorded, per key: the notes, its own amounts
 *		added to an answer, the undo of a rolled-back subtransaction, and the
 *		transaction callbacks that apply the notes to the shared entries.
 *
 * How committed usage reaches an entry.  A transaction keeps what it
 * recorded in a backend-local table.  At PRE_COMMIT it registers with each
 * entry it touched (entry->pending, which pins the entry, creating an
 * invalid one if needed); at COMMIT, after its rows became visible, it adds
 * its amounts if the entry is valid, and unregisters; at ABORT it only
 * unregisters.  Nobody ever sleeps on another backend here.
 */
#include "cache.h"

#include "access/xact.h"
#include "utils/memutils.h"

/*
 * Undo records for subtransactions (none outside savepoints), in the order
 * they were made, in TopTransactionContext.  Subtransactions nest, so the
 * records of the innermost open one are always the last ones: tm_segs marks
 * where each subtransaction's records begin.  Its commit hands them to its
 * parent (O(1)), its abort undoes just them: every record is handled once,
 * however many calls and savepoints one transaction makes.
 */
typedef struct TmUndo
{
	TmCacheKey	key;
	int64		amount;
	int64		reserved;
} TmUndo;

typedef struct TmUndoSeg
{
	SubTransactionId subid;
	int			start;			/* its first record in tm_undo */
} TmUndoSeg;

/*
 * This transaction's notes: the first key inline (most transactions touch
 * one), the others in a hash table in TopTransactionContext.
 */
static TmLocal tm_first;
static bool tm_first_used = false;
static HTAB *tm_local = NULL;

/*
 * threshold_reached events this transaction wrote or found, by key: applied
 * to the entries at COMMIT; those of a subtransaction that rolls back are
 * dropped (subtransaction ids grow, so its records and its children's are
 * the ones at or above its id).
 */
typedef struct TmAlertNote
{
	TmCacheKey	key;
	uint32		hash;
	TimestampTz ps;
	int32		percent;
	SubTransactionId subid;
} TmAlertNote;

static TmAlertNote *tm_alerts = NULL;
static int	tm_nalerts = 0;
static int	tm_maxalerts = 0;

static TmUndo *tm_undo = NULL;
static int	tm_nundo = 0;
static int	tm_maxundo = 0;
static TmUndoSeg *tm_segs = NULL;
static int	tm_nsegs = 0;
static int	tm_maxsegs = 0;

/*
 * Undo records looked at when subtransactions rolled back, in this backend
 * since it started (_undo_visits(), for the tests): each record at most once.
 */
static uint64 tm_undo_visits = 0;

uint64
tm_cache_undo_visits(void)
{
	return tm_undo_visits;
}

/* this transaction's xid, taken at PRE_COMMIT for the COMMIT step */
static TransactionId tm_commit_xid = InvalidTransactionId;

/*----------------------------------------------------------------------
 * This transaction's notes
 *----------------------------------------------------------------------
 */

TmLocal *
tm_local_find(const TmCacheKey *key)
{
	if (tm_first_used && memcmp(&tm_first.key, key, sizeof(TmCacheKey)) == 0)
		return &tm_first;
	if (tm_local != NULL)
		return hash_search(tm_local, key, HASH_FIND, NULL);
	return NULL;
}

TmLocal *
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
int64
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
void
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

/*
 * Has this transaction noted more keys than a big transaction's (see
 * tm_pre_commit)?  Then its commit registers with no entry it only recorded
 * for, and its misses need not make entries (usage.c).
 */
bool
tm_cache_big_transaction(void)
{
	long		n = (tm_first_used ? 1 : 0) +
		(tm_local != NULL ? hash_get_num_entries(tm_local) : 0);

	return n > Max(TM_BIG_TRANSACTION_MIN, tm_cache_size / 8);
}

TmLocal *
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
	l->inval_at_commit = false;
	l->entry = NULL;
	return l;
}

/* Grows an array in TopTransactionContext to hold one more element. */
static void *
tm_grow(void *array, int n, int *max, Size elem)
{
	if (n < *max)
		return array;
	*max = (*max == 0) ? 16 : *max * 2;
	if (array == NULL)
		return MemoryContextAlloc(TopTransactionContext, *max * elem);
	return repalloc(array, *max * elem);
}

void
tm_undo_push(const TmCacheKey *key, int64 amount, int64 reserved)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	TmUndo	   *u;

	if (subid == TopSubTransactionId)
		return;
	if (tm_nsegs == 0 || tm_segs[tm_nsegs - 1].subid != subid)
	{
		tm_segs = tm_grow(tm_segs, tm_nsegs, &tm_maxsegs, sizeof(TmUndoSeg));
		tm_segs[tm_nsegs].subid = subid;
		tm_segs[tm_nsegs].start = tm_nundo;
		tm_nsegs++;
	}
	tm_undo = tm_grow(tm_undo, tm_nundo, &tm_maxundo, sizeof(TmUndo));
	u = &tm_undo[tm_nundo++];
	u->key = *key;
	u->amount = amount;
	u->reserved = reserved;
}

/* Notes threshold events this transaction wrote or found, for the commit. */
void
tm_cache_note_alerted(const TmCacheKey *key, uint32 hash, TimestampTz ps,
					  const int32 *percents, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		TmAlertNote *a;

		tm_alerts = tm_grow(tm_alerts, tm_nalerts, &tm_maxalerts, sizeof(TmAlertNote));
		a = &tm_alerts[tm_nalerts++];
		a->key = *key;
		a->hash = hash;
		a->ps = ps;
		a->percent = percents[i];
		a->subid = GetCurrentSubTransactionId();
	}
}

/* The thresholds of of whose events this transaction wrote (or found). */
uint32
tm_cache_own_alerted(const TmCacheKey *key, const TmOrgFeature *of)
{
	uint32		mask = 0;
	int			i;
	int			j;

	for (i = 0; i < tm_nalerts; i++)
	{
		TmAlertNote *a = &tm_alerts[i];

		if (a->ps != of->period.start || memcmp(&a->key, key, sizeof(TmCacheKey)) != 0)
			continue;
		for (j = 0; j < of->nthresholds; j++)
			if (of->thresholds[j] == a->percent)
				mask |= ((uint32) 1) << j;
	}
	return mask;
}

/* At COMMIT: the entries learn of the events (they are visible now). */
static void
tm_apply_alerts(void)
{
	int			i;

	for (i = 0; i < tm_nalerts; i++)
	{
		TmAlertNote *a = &tm_alerts[i];
		LWLock	   *lock = tm_lock_for(a->hash);
		TmEntry    *e;
		int			j;

		LWLockAcquire(lock, LW_SHARED);
		e = hash_search_with_hash_value(tm_htab, &a->key, a->hash, HASH_FIND, NULL);
		if (e != NULL && e->valid && e->period_start == a->ps)
			for (j = 0; j < e->nthresholds; j++)
				if (e->thresholds[j] == a->percent)
					pg_atomic_fetch_or_u32(&e->alerted, ((uint32) 1) << j);
		LWLockRelease(lock);
	}
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
	/* the undo record first: if it cannot be made, nothing was noted */
	tm_undo_push(key, amount, 0);
	l->amount = tm_add_sat(l->amount, amount);
	if (tm_at_bound(l->amount))
		tm_inval_org(key->org_id, true);	/* the tables answer, exactly */
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
	tm_undo = NULL;
	tm_nundo = tm_maxundo = 0;
	tm_segs = NULL;
	tm_nsegs = tm_maxsegs = 0;
	tm_alerts = NULL;
	tm_nalerts = tm_maxalerts = 0;
	tm_inval_all = false;
	tm_inval_all_usage = false;
	tm_inval_orgs = NULL;
}

bool
tm_needs_registration(const TmLocal *l)
{
	return l->amount != 0 || l->reserved != 0 || l->created_org || l->mixed || l->stale;
}

/*
 * PRE_COMMIT: register with every entry we touched.  Never waits.
 *
 * A transaction that touched more keys than a fraction of the cache does not
 * register the ones it only recorded usage for: pinning them would make
 * every new entry evict from a table of pinned ones.  Their entries, where
 * there are any, are invalidated at commit instead, key by key under one
 * partition lock at a time (not the org's every feature, whose lookups
 * would outnumber the entries and take all partitions for one scan), and
 * rebuilt from the ledger when next asked: what a registered key's commit
 * would change is that key's entry only.  (Keys holding a consume
 * reservation are registered: the reservation pins them anyway.)
 */
static void
tm_pre_commit(void)
{
	TmLocalIter it = {0};
	TmLocal    *l;
	bool		big;

	tm_commit_xid = GetTopTransactionIdIfAny();
	/* as its record_usage misses judged it: every key noted */
	big = tm_cache_big_transaction();

	while ((l = tm_local_next(&it)) != NULL)
	{
		LWLock	   *lock;
		TmEntry    *e;

		if (!tm_needs_registration(l))
			continue;
		if (big && l->reserved == 0)
		{
			l->inval_at_commit = true;
			continue;
		}
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
		else if (!tm_atomic_add_sat(&e->used, l->amount))
			e->valid = false;	/* saturated: rebuilt from the ledger */
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
			/* rows visible: an entry built from now on sees them */
			if (commit && l->inval_at_commit)
				tm_inval_key(&l->key, l->hash);
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
		if (commit && tm_nalerts > 0)
			tm_apply_alerts();
	}
	/* after the entries are marked: a config commit's bump comes last */
	tm_config_end_xact();
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
			{
				tm_config_pre_commit();
				tm_pre_commit();
			}
			break;
		case XACT_EVENT_COMMIT:
			tm_end_xact(true);
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (tm_shared != NULL)
				tm_prepared_pre_prepare();
			break;
		case XACT_EVENT_PREPARE:
			/*
			 * Prepared: the org stays answered from the tables until COMMIT
			 * or ROLLBACK PREPARED (cache_twophase.c), so the notes are
			 * dropped here, and the reservations go, as at an abort.
			 */
			if (tm_shared != NULL)
				tm_prepared_end_xact(true);
			tm_end_xact(false);
			break;
		case XACT_EVENT_ABORT:
			if (tm_shared != NULL)
				tm_prepared_end_xact(false);
			tm_end_xact(false);
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
	TmUndoSeg  *seg;
	int			i;

	/* its threshold events are rolled back: forget them */
	if (event == SUBXACT_EVENT_ABORT_SUB && tm_nalerts > 0)
	{
		int			keep = 0;

		for (i = 0; i < tm_nalerts; i++)
			if (tm_alerts[i].subid < mySubid)
				tm_alerts[keep++] = tm_alerts[i];
		tm_nalerts = keep;
	}

	/* the innermost subtransaction's records, if it made any, come last */
	if (tm_nsegs == 0 || tm_segs[tm_nsegs - 1].subid != mySubid)
		return;
	seg = &tm_segs[tm_nsegs - 1];
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* its records are its parent's now */
		if (parentSubid == TopSubTransactionId)
		{
			tm_nundo = seg->start;		/* nothing undoes a top-level record */
			tm_nsegs--;
		}
		else if (tm_nsegs > 1 && tm_segs[tm_nsegs - 2].subid == parentSubid)
			tm_nsegs--;			/* the parent's own records come just before */
		else
			seg->subid = parentSubid;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		TmLocal    *l;

		/* net effect per key first: a reserve and unreserve cancel out */
		for (i = seg->start; i < tm_nundo; i++)
		{
			TmUndo	   *u = &tm_undo[i];

			tm_undo_visits++;
			l = tm_local_find(&u->key);
			if (l != NULL)
			{
				l->amount -= u->amount;
				l->undo_reserved += u->reserved;
			}
		}
		for (i = seg->start; i < tm_nundo; i++)
		{
			l = tm_local_find(&tm_undo[i].key);
			if (l != NULL && l->undo_reserved != 0)
			{
				LWLock	   *lock = tm_lock_for(l->hash);

				LWLockAcquire(lock, LW_SHARED);
				TM_ADD(l->entry->reserved, -l->undo_reserved);
				LWLockRelease(lock);
				l->reserved -= l->undo_reserved;
				l->undo_reserved = 0;
			}
		}
		tm_nundo = seg->start;
		tm_nsegs--;
	}
}

void
tm_cache_register_callbacks(void)
{
	RegisterXactCallback(tm_xact_callback, NULL);
	RegisterSubXactCallback(tm_subxact_callback, NULL);
}
