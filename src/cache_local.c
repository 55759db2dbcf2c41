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
	l->entry = NULL;
	return l;
}

void
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
