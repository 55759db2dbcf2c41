/*
 * memo.c
 *		The table path's usage sums, remembered within a transaction.
 *
 * Without the shared cache (no shared_preload_libraries, a hot standby, an
 * org whose config this transaction changed) every call sums the org's
 * ledger rows of the period, its own transaction's rows included: a
 * transaction that records N times for one org reads N * N / 2 rows.
 *
 * Remembered here, per (org, feature) and period: what a sum read of the
 * rows of other transactions, and the snapshot it read them under; and the
 * rows this transaction inserted itself (tm_insert_usage), in order, each
 * with the first command id after the one that inserted it.  A later sum
 * of the key under a snapshot that sees exactly the same other
 * transactions (the same xmin, xmax and lists of transactions in progress:
 * nothing committed between them) is what was read of the others plus the
 * own rows this snapshot sees (those inserted under an earlier command),
 * without reading the ledger.  When another transaction commits, the next
 * sum reads the ledger again, as before.
 *
 * Forgotten: everything at the end of the transaction; the sums, and the
 * own rows of a subtransaction, when it rolls back; and everything for the
 * rest of the transaction once it writes the ledger or the grants in any
 * other way: a statement that starts to change them (the executor's start,
 * before any row changes, so that a call in the same statement does not use
 * what it remembered), a row inserted by hand or COPY (the insert trigger),
 * TRUNCATE (its trigger), or a ledger row inserted on the cache's path (not
 * noted here).  Not used in recovery, with session_replication_role =
 * replica, on a Citus cluster whose tables are distributed (the rows are on
 * other nodes, whose commits this node's snapshots do not show), or when
 * the ledger or the grants have triggers or rules of anyone else (they
 * could write rows inside tiermeter's own insert) or were rewritten.
 */
#include "tiermeter.h"

#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "parser/parsetree.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* a ledger row this transaction inserted */
typedef struct TmOwnRow
{
	CommandId	cid;			/* seen by snapshots whose curcid >= cid */
	SubTransactionId sub;
	TimestampTz at;
	int64		amount;
} TmOwnRow;

/* what a sum read, under which snapshot */
typedef struct TmMemoSum
{
	bool		valid;
	bool		is_gauge;
	TmPeriod	period;
	/* the snapshot's view of other transactions */
	TransactionId xmin;
	TransactionId xmax;
	uint32		xcnt;
	int32		subxcnt;
	bool		suboverflowed;
	TransactionId *xip;
	TransactionId *subxip;
	CommandId	curcid;			/* the highest seen: own rows counted below it */
	int64		others;			/* the ledger's sum, own rows left out */
	int64		granted;
	int			own_upto;		/* own rows [0, own_upto) are in own_used */
	int64		own_used;		/* those of them in the period */
	Oid			log_node;		/* the tables' storage when it was read */
	Oid			grants_node;
} TmMemoSum;

typedef struct TmMemoKey
{
	char		org_id[TM_KEY_LEN];
	char		feature[TM_KEY_LEN];
} TmMemoKey;

typedef struct TmMemoEntry
{
	TmMemoKey	key;
	TmOwnRow   *rows;
	int			nrows;
	int			maxrows;
	TmMemoSum	sum;
} TmMemoEntry;

static HTAB *tm_memo = NULL;	/* in TopTransactionContext */
static bool tm_memo_off = false;	/* for the rest of the transaction */
/*
 * The first command after the last insert of a row not noted here (the
 * cache's path); FirstCommandId (every snapshot sees past it) when none.
 */
static CommandId tm_memo_untracked_cid = FirstCommandId;
static bool tm_memo_registered = false;
static ExecutorStart_hook_type prev_executor_start = NULL;

static void
tm_memo_xact(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			tm_memo = NULL;		/* its memory goes with the transaction's */
			tm_memo_off = false;
			tm_memo_untracked_cid = FirstCommandId;
			break;
		default:
			break;
	}
}

/* A subtransaction rolled back: its rows (and its children's) are gone. */
static void
tm_memo_subxact(SubXactEvent event, SubTransactionId mySubid,
				SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS seq;
	TmMemoEntry *e;

	if (event != SUBXACT_EVENT_ABORT_SUB || tm_memo == NULL)
		return;
	hash_seq_init(&seq, tm_memo);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		/* rows of later subtransactions are at the end */
		while (e->nrows > 0 && e->rows[e->nrows - 1].sub >= mySubid)
			e->nrows--;
		e->sum.valid = false;
	}
}

static void
tm_memo_register(void)
{
	if (!tm_memo_registered)
	{
		RegisterXactCallback(tm_memo_xact, NULL);
		RegisterSubXactCallback(tm_memo_subxact, NULL);
		tm_memo_registered = true;
	}
}

/* This transaction wrote the ledger or the grants otherwise: stop. */
void
tm_memo_forget(void)
{
	tm_memo_register();			/* so that the transaction's end turns it on */
	tm_memo_off = true;
	tm_memo = NULL;
}

/* Is rel tiermeter's usage_log or usage_grants? */
static bool
tm_memo_table(Oid relid)
{
	Oid			nsp = get_rel_namespace(relid);
	char	   *name;
	bool		ours;

	if (!OidIsValid(nsp) || nsp != get_namespace_oid("tiermeter", true))
		return false;
	name = get_rel_name(relid);
	ours = name != NULL &&
		(strcmp(name, "usage_log") == 0 || strcmp(name, "usage_grants") == 0);
	if (name != NULL)
		pfree(name);
	return ours;
}

/*
 * A statement that changes the ledger or the grants (UPDATE, DELETE, MERGE,
 * an INSERT into the grants, in a CTE or not), other than the functions'
 * own inserts: forgotten before it changes a row.
 */
static void
tm_memo_executor_start(QueryDesc *queryDesc, int eflags)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;

	if (tm_memo != NULL && !tm_own_write && stmt->resultRelations != NIL)
	{
		ListCell   *lc;

		foreach(lc, stmt->resultRelations)
		{
			RangeTblEntry *rte = rt_fetch(lfirst_int(lc), stmt->rtable);

			if (rte->rtekind == RTE_RELATION && tm_memo_table(rte->relid))
			{
				tm_memo_forget();
				break;
			}
		}
	}
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

void
tm_memo_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = tm_memo_executor_start;
}

/* tiermeter's triggers on the ledger and the grants, by name */
static const char *const tm_memo_triggers[] = {
	"usage_log_invalidate", "usage_log_truncate_invalidate",
	"usage_log_insert_invalidate", "usage_grants_invalidate",
	"usage_grants_truncate_invalidate"
};

/*
 * The table's storage, if it has no rule and only tiermeter's triggers (and
 * foreign keys'), all enabled; else InvalidOid.
 */
static Oid
tm_memo_table_node(TmRelName *name)
{
	Relation	rel = tm_relname_open(name, AccessShareLock);
	Oid			node = InvalidOid;

	if (rel == NULL)
		return InvalidOid;
	if (rel->rd_rules == NULL && rel->rd_rel->relkind == RELKIND_RELATION)
	{
		TriggerDesc *td = rel->trigdesc;
		bool		ok = true;
		int			i;
		int			j;

		for (i = 0; ok && td != NULL && i < td->numtriggers; i++)
		{
			/* foreign keys' checks write nothing; their cascades are statements */
			if (td->triggers[i].tgisinternal)
				continue;
			ok = td->triggers[i].tgenabled != TRIGGER_DISABLED;
			for (j = 0; ok && j < lengthof(tm_memo_triggers); j++)
				if (strcmp(td->triggers[i].tgname, tm_memo_triggers[j]) == 0)
					break;
			ok = ok && j < lengthof(tm_memo_triggers);
		}
		if (ok)
			node = rel->rd_rel->relfilenode;
	}
	relation_close(rel, AccessShareLock);
	return node;
}

static bool
tm_memo_usable(Oid *log_node, Oid *grants_node)
{
	static TmRelName log_name = TM_RELNAME("usage_log");
	static TmRelName grants_name = TM_RELNAME("usage_grants");

	if (tm_memo_off || RecoveryInProgress() ||
		SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA ||
		tm_tables_distributed())
		return false;
	*log_node = tm_memo_table_node(&log_name);
	*grants_node = tm_memo_table_node(&grants_name);
	return OidIsValid(*log_node) && OidIsValid(*grants_node);
}

static TmMemoEntry *
tm_memo_entry(const char *org_id, const char *feature, bool create)
{
	TmMemoKey	key;
	TmMemoEntry *e;
	bool		found;

	if (strlen(org_id) >= TM_KEY_LEN || strlen(feature) >= TM_KEY_LEN)
		return NULL;
	if (tm_memo == NULL)
	{
		HASHCTL		ctl;

		if (!create)
			return NULL;
		tm_memo_register();
		ctl.keysize = sizeof(TmMemoKey);
		ctl.entrysize = sizeof(TmMemoEntry);
		ctl.hcxt = TopTransactionContext;
		tm_memo = hash_create("tiermeter sums memo", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	strlcpy(key.org_id, org_id, TM_KEY_LEN);
	strlcpy(key.feature, feature, TM_KEY_LEN);
	e = hash_search(tm_memo, &key, create ? HASH_ENTER : HASH_FIND, &found);
	if (e != NULL && !found)
	{
		e->rows = NULL;
		e->nrows = 0;
		e->maxrows = 0;
		e->sum.valid = false;
		e->sum.xip = NULL;
		e->sum.subxip = NULL;
	}
	return e;
}

/*
 * The first command id after the insert that just ran: a snapshot sees the
 * row iff its curcid is at least this.  (SPI advances the counter after a
 * command that is not read-only; if it did not, this does.)
 */
static CommandId
tm_memo_after_insert(void)
{
	CommandCounterIncrement();
	return GetCurrentCommandId(false);
}

/*
 * A ledger row this transaction just inserted (inserted under the current
 * command id).  tracked: the row was inserted on the table path; else (the
 * cache's path) nothing is remembered for the key from now on.
 */
void
tm_memo_own_row(const char *org_id, const char *feature, TimestampTz at,
				int64 amount, bool tracked)
{
	TmMemoEntry *e;

	if (tm_memo_off)
		return;
	if (!tracked)
	{
		/*
		 * A sum of this command could leave the row out and be remembered
		 * without it; a key already remembered would miss it later.  Cheap
		 * when the table path has not been used in this transaction.
		 */
		tm_memo_register();
		tm_memo_untracked_cid = tm_memo_after_insert();
		if (tm_memo_entry(org_id, feature, false) != NULL)
			tm_memo_forget();
		return;
	}
	e = tm_memo_entry(org_id, feature, true);
	if (e == NULL)
	{
		tm_memo_forget();		/* a key too long to remember */
		return;
	}
	if (e->nrows == e->maxrows)
	{
		int			n = Max(16, e->maxrows * 2);

		e->rows = e->rows == NULL ?
			MemoryContextAlloc(TopTransactionContext, n * sizeof(TmOwnRow)) :
			repalloc(e->rows, n * sizeof(TmOwnRow));
		e->maxrows = n;
	}
	e->rows[e->nrows].cid = tm_memo_after_insert();
	e->rows[e->nrows].sub = GetCurrentSubTransactionId();
	e->rows[e->nrows].at = at;
	e->rows[e->nrows].amount = amount;
	e->nrows++;
}

static bool
tm_memo_same_view(const TmMemoSum *m, Snapshot snap)
{
	return m->xmin == snap->xmin && m->xmax == snap->xmax &&
		m->xcnt == snap->xcnt && m->subxcnt == snap->subxcnt &&
		m->suboverflowed == snap->suboverflowed &&
		(m->xcnt == 0 || memcmp(m->xip, snap->xip, m->xcnt * sizeof(TransactionId)) == 0) &&
		(m->subxcnt <= 0 ||
		 memcmp(m->subxip, snap->subxip, m->subxcnt * sizeof(TransactionId)) == 0);
}

static bool
tm_memo_in_period(const TmMemoSum *m, TimestampTz at)
{
	return m->is_gauge || (m->period.start <= at && at < m->period.end);
}

/* Adds the own rows snap sees to m; false on overflow. */
static bool
tm_memo_catch_up(TmMemoEntry *e, Snapshot snap)
{
	TmMemoSum  *m = &e->sum;

	while (m->own_upto < e->nrows && e->rows[m->own_upto].cid <= snap->curcid)
	{
		const TmOwnRow *r = &e->rows[m->own_upto];

		if (tm_memo_in_period(m, r->at) &&
			pg_add_s64_overflow(m->own_used, r->amount, &m->own_used))
			return false;
		m->own_upto++;
	}
	m->curcid = snap->curcid;
	return true;
}

/*
 * The sums of of's key under snap, if remembered: true and *sums filled.
 */
bool
tm_memo_get(const TmOrgFeature *of, Snapshot snap, TmSums *sums)
{
	TmMemoEntry *e;
	TmMemoSum  *m;
	int64		used;
	Oid			log_node;
	Oid			grants_node;

	if (tm_memo == NULL || snap == NULL || snap->takenDuringRecovery ||
		(e = tm_memo_entry(of->org_id, of->feature, false)) == NULL ||
		!e->sum.valid || !tm_memo_usable(&log_node, &grants_node))
		return false;
	m = &e->sum;
	/* the period matters for a gauge too: its grants are the period's */
	if (m->is_gauge != of->is_gauge || m->period.start != of->period.start ||
		m->period.end != of->period.end || snap->curcid < m->curcid ||
		m->log_node != log_node || m->grants_node != grants_node ||
		!tm_memo_same_view(m, snap))
		return false;
	if (!tm_memo_catch_up(e, snap) || pg_add_s64_overflow(m->others, m->own_used, &used) ||
		tm_at_bound(used))
	{
		m->valid = false;
		return false;
	}
	sums->used = used;
	sums->granted = m->granted;
	sums->reserved = 0;
	return true;
}

/* Remembers what a sum of the ledger (own rows included) read under snap. */
void
tm_memo_put(const TmOrgFeature *of, Snapshot snap, const TmSums *sums)
{
	TmMemoEntry *e;
	TmMemoSum  *m;
	TransactionId *xip;
	TransactionId *subxip;
	Oid			log_node;
	Oid			grants_node;

	if (snap == NULL || snap->takenDuringRecovery ||
		!tm_memo_usable(&log_node, &grants_node) ||
		tm_at_bound(sums->used) || tm_at_bound(sums->granted) ||
		snap->curcid < tm_memo_untracked_cid ||
		(e = tm_memo_entry(of->org_id, of->feature, true)) == NULL)
		return;
	m = &e->sum;
	m->valid = false;
	m->is_gauge = of->is_gauge;
	m->period = of->period;
	m->own_upto = 0;
	m->own_used = 0;
	if (!tm_memo_catch_up(e, snap) ||
		pg_sub_s64_overflow(sums->used, m->own_used, &m->others))
		return;
	/* allocated before anything is freed: an error leaves the old ones */
	xip = snap->xcnt > 0 ?
		MemoryContextAlloc(TopTransactionContext, snap->xcnt * sizeof(TransactionId)) : NULL;
	subxip = snap->subxcnt > 0 ?
		MemoryContextAlloc(TopTransactionContext, snap->subxcnt * sizeof(TransactionId)) : NULL;
	if (xip != NULL)
		memcpy(xip, snap->xip, snap->xcnt * sizeof(TransactionId));
	if (subxip != NULL)
		memcpy(subxip, snap->subxip, snap->subxcnt * sizeof(TransactionId));
	if (m->xip != NULL)
		pfree(m->xip);
	if (m->subxip != NULL)
		pfree(m->subxip);
	m->xip = xip;
	m->subxip = subxip;
	m->granted = sums->granted;
	m->xmin = snap->xmin;
	m->xmax = snap->xmax;
	m->xcnt = snap->xcnt;
	m->subxcnt = snap->subxcnt;
	m->suboverflowed = snap->suboverflowed;
	m->log_node = log_node;
	m->grants_node = grants_node;
	m->valid = true;
}
