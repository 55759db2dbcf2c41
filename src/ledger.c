/*
 * ledger.c
 *		record_usage's and consume's ledger row, written into usage_log and
 *		its indexes directly, as PostgreSQL writes its own catalogs, without
 *		SPI or the executor.
 *
 * Through SPI, the executor's start-up and shut-down around a one-row
 * INSERT (the plan's revalidation, opening and describing each index,
 * calling the BEFORE trigger that ignores the functions' own rows) cost
 * more than the insert itself, on every call.  Here the table's shape is
 * checked once per backend (again after any invalidation of the table or
 * one of its indexes -- ALTER, RENAME, CREATE or DROP of an index,
 * trigger, rule or policy, GRANT -- or of its trigger's function), and
 * a call does what the executor would do for that shape: heap_insert, then
 * an insert into each index that is ready, uniqueness checked by the index
 * itself.  heap_insert writes the WAL (logical decoding included), the
 * statistics and the serializable conflict checks as for any INSERT.
 *
 * When the table is not as the install script made it -- not named
 * tiermeter.usage_log any more, a partition, another trigger on INSERT (a
 * user's, a foreign key's check, tiermeter's own changed), a rule, row
 * security, a CHECK constraint, a column added, renamed, retyped or given a
 * default, an index on an expression, with another predicate, deferrable or
 * for exclusion, a table access method other than heap, Citus in the
 * database -- or the call cannot write it this way (a read-only
 * transaction, no INSERT privilege, a permission hook such as sepgsql's or
 * pgaudit's), the caller runs the INSERT through SPI, whose executor does
 * all of that and raises its own errors.  So do calls with an idempotency
 * key (their INSERT ... ON CONFLICT DO NOTHING is a speculative insertion).
 */
#include "tiermeter.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

/* usage_log's columns, as the install script makes them */
#define LEDGER_NATTS		7
#define LEDGER_RECORDED_AT	7

static const struct
{
	const char *name;
	Oid			type;
	bool		notnull;
}			tm_ledger_cols[LEDGER_NATTS] = {
	{"org_id", TEXTOID, true},
	{"feature", TEXTOID, true},
	{"amount", INT8OID, true},
	{"occurred_at", TIMESTAMPTZOID, true},
	{"conversation_id", TEXTOID, false},
	{"idempotency_key", TEXTOID, false},
	{"recorded_at", TIMESTAMPTZOID, true}	/* DEFAULT now() */
};

/* one index of usage_log, as a call inserts into it */
typedef struct TmLedgerIndex
{
	Oid			oid;
	bool		ready;			/* else skipped, as the executor skips it */
	bool		unique;
	AttrNumber	not_null_att;	/* WHERE this column IS NOT NULL, or 0 */
	IndexInfo  *info;
} TmLedgerIndex;

/*
 * What a backend knows of the table, rebuilt after a relcache invalidation
 * of it (which any change to its indexes, triggers, rules, policies,
 * columns or privileges sends) or of everything.
 */
static MemoryContext tm_ledger_cxt = NULL;
static bool tm_ledger_valid = false;
static bool tm_ledger_registered = false;
static TmRelName tm_ledger_name = TM_RELNAME("usage_log");
static Oid	tm_ledger_relid = InvalidOid;	/* the table described */
static uint32 tm_ledger_proc_hash = 0;	/* our trigger's function */
static bool tm_ledger_direct = false;	/* the shape allows the direct insert */
static int	tm_ledger_nindexes = 0;
static TmLedgerIndex *tm_ledger_indexes = NULL;

static void
tm_ledger_relcache(Datum arg, Oid relid)
{
	int			i;

	if (!OidIsValid(relid) || relid == tm_ledger_relid)
		tm_ledger_valid = false;
	for (i = 0; i < tm_ledger_nindexes; i++)
		if (tm_ledger_indexes[i].oid == relid)
			tm_ledger_valid = false;
}

static void
tm_ledger_proc_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	if (hashvalue == 0 || hashvalue == tm_ledger_proc_hash)
		tm_ledger_valid = false;
}

/* Is the column's default now(), as the install script made it? */
static bool
tm_ledger_default_is_now(Relation rel, AttrNumber attnum)
{
	Node	   *def = build_column_default(rel, attnum);

	return def != NULL && IsA(def, FuncExpr) &&
		((FuncExpr *) def)->funcid == F_NOW &&
		((FuncExpr *) def)->args == NIL;
}

/*
 * Is the trigger tiermeter's BEFORE INSERT row trigger, calling the C
 * function of this library that ignores the functions' own rows?  Its
 * function is watched (tm_ledger_proc_hash): CREATE OR REPLACE FUNCTION
 * does not invalidate the table.
 */
static bool
tm_ledger_trigger_is_ours(const Trigger *t)
{
	HeapTuple	tup;
	bool		ours = false;

	if (t->tgisinternal || strcmp(t->tgname, "usage_log_insert_invalidate") != 0 ||
		t->tgtype != (TRIGGER_TYPE_ROW | TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_INSERT) ||
		t->tgnargs != 0 || t->tgnattr != 0 || t->tgqual != NULL ||
		t->tgoldtable != NULL || t->tgnewtable != NULL)
		return false;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(t->tgfoid));
	if (HeapTupleIsValid(tup))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);
		bool		isnull;
		Datum		src;
		Datum		bin;

		src = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &isnull);
		ours = !isnull && proc->prolang == ClanguageId &&
			strcmp(TextDatumGetCString(src), "tiermeter_invalidate_insert_trigger") == 0;
		bin = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &isnull);
		ours = ours && !isnull && strcmp(TextDatumGetCString(bin), "$libdir/tiermeter") == 0;
		ReleaseSysCache(tup);
	}
	tm_ledger_proc_hash = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(t->tgfoid));
	return ours;
}

/* Are the columns, constraints, rules, triggers and security as installed? */
static bool
tm_ledger_table_ok(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *td = rel->trigdesc;
	int			i;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->rd_rel->relam != HEAP_TABLE_AM_OID ||
		rel->rd_rules != NULL || rel->rd_rel->relrowsecurity ||
		desc->natts != LEDGER_NATTS ||
		(desc->constr != NULL && desc->constr->num_check > 0))
		return false;
	for (i = 0; i < LEDGER_NATTS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != tm_ledger_cols[i].type ||
			att->atttypmod != -1 ||
			strcmp(NameStr(att->attname), tm_ledger_cols[i].name) != 0 ||
			att->attnotnull != tm_ledger_cols[i].notnull ||
			att->attgenerated != '\0' || att->attidentity != '\0' ||
			att->atthasdef != (i + 1 == LEDGER_RECORDED_AT))
			return false;
	}
	if (!tm_ledger_default_is_now(rel, LEDGER_RECORDED_AT))
		return false;

	/*
	 * No trigger on INSERT but tiermeter's own, which ignores the functions'
	 * rows; a foreign key's check is such a trigger, so is any statement
	 * trigger.
	 */
	for (i = 0; td != NULL && i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];

		if (TRIGGER_FOR_INSERT(t->tgtype) && !tm_ledger_trigger_is_ours(t))
			return false;
	}
	return true;
}

/*
 * The index's predicate, when it has one: true if it is "col IS NOT NULL"
 * on a column of the table (the idempotency keys' index), the column in
 * *att.
 */
static bool
tm_ledger_predicate(Relation index, AttrNumber *att)
{
	List	   *pred = RelationGetIndexPredicate(index);
	NullTest   *nt;

	*att = 0;
	if (pred == NIL)
		return true;
	if (list_length(pred) != 1 || !IsA(linitial(pred), NullTest))
		return false;
	nt = linitial_node(NullTest, pred);
	if (nt->nulltesttype != IS_NOT_NULL || nt->argisrow ||
		nt->arg == NULL || !IsA(nt->arg, Var))
		return false;
	*att = ((Var *) nt->arg)->varattno;
	return *att > 0 && *att <= LEDGER_NATTS;
}

/* One index's description; false if a call could not insert into it here. */
static bool
tm_ledger_index(Oid indexoid, TmLedgerIndex *ix)
{
	Relation	index = index_open(indexoid, AccessShareLock);
	Form_pg_index form = index->rd_index;
	bool		ok;
	int			i;

	ix->oid = indexoid;
	ix->ready = form->indisready;
	ix->unique = form->indisunique;
	ok = index->rd_rel->relam == BTREE_AM_OID && !form->indisexclusion &&
		(!form->indisunique || form->indimmediate) &&
		RelationGetIndexExpressions(index) == NIL &&
		tm_ledger_predicate(index, &ix->not_null_att);
	for (i = 0; ok && i < form->indnatts; i++)
		ok = form->indkey.values[i] > 0 && form->indkey.values[i] <= LEDGER_NATTS;
	if (ok)
	{
		MemoryContext old = MemoryContextSwitchTo(tm_ledger_cxt);

		ix->info = BuildIndexInfo(index);
		MemoryContextSwitchTo(old);
	}
	index_close(index, AccessShareLock);
	return ok;
}

/* Describes the open table and its indexes (tm_ledger_direct says if usable). */
static void
tm_ledger_describe(Relation rel)
{
	List	   *indexes;
	ListCell   *lc;
	int			n = 0;

	if (tm_ledger_cxt == NULL)
		tm_ledger_cxt = AllocSetContextCreate(CacheMemoryContext, "tiermeter ledger",
											  ALLOCSET_SMALL_SIZES);
	tm_ledger_nindexes = 0;
	tm_ledger_indexes = NULL;
	MemoryContextReset(tm_ledger_cxt);
	tm_ledger_direct = false;

	/* Citus routes INSERTs into its tables to their shards: its planner's */
	if (OidIsValid(get_extension_oid("citus", true)) || !tm_ledger_table_ok(rel))
		return;
	indexes = RelationGetIndexList(rel);
	tm_ledger_indexes = MemoryContextAllocZero(tm_ledger_cxt,
											   Max(1, list_length(indexes)) * sizeof(TmLedgerIndex));
	foreach(lc, indexes)
	{
		if (!tm_ledger_index(lfirst_oid(lc), &tm_ledger_indexes[n]))
		{
			list_free(indexes);
			return;
		}
		/* counted at once: an invalidation of it from here on is seen */
		tm_ledger_nindexes = ++n;
	}
	list_free(indexes);
	tm_ledger_direct = true;
}

/* usage_log, open with RowExclusiveLock, if a direct insert applies; else NULL. */
static Relation
tm_ledger_open(void)
{
	Relation	rel;

	/* sepgsql's checks and pgaudit's object audit are the executor's */
	if (XactReadOnly || IsInParallelMode() || ExecutorCheckPerms_hook != NULL ||
		tm_tables_distributed())
		return NULL;
	if (!tm_ledger_registered)
	{
		CacheRegisterRelcacheCallback(tm_ledger_relcache, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, tm_ledger_proc_changed, (Datum) 0);
		tm_ledger_registered = true;
	}
	/* the table an INSERT naming tiermeter.usage_log would write */
	rel = tm_relname_open(&tm_ledger_name, RowExclusiveLock);
	if (rel == NULL)
		return NULL;
	if (!tm_ledger_valid || RelationGetRelid(rel) != tm_ledger_relid)
	{
		tm_ledger_valid = true; /* an invalidation from here on describes again */
		tm_ledger_relid = RelationGetRelid(rel);
		tm_ledger_describe(rel);
	}
	/* as the executor checks it; column privileges alone: the executor's */
	if (!tm_ledger_direct || !tm_ledger_valid ||
		pg_class_aclcheck(tm_ledger_relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
	{
		relation_close(rel, NoLock);	/* SPI's INSERT takes the same lock */
		return NULL;
	}
	return rel;
}

/* Has usage_log rules (an INSERT ... RETURNING is refused then)? */
bool
tm_ledger_has_rules(void)
{
	Relation	rel = tm_relname_open(&tm_ledger_name, RowExclusiveLock);
	bool		rules;

	if (rel == NULL)
		return false;
	rules = rel->rd_rules != NULL;
	relation_close(rel, NoLock);	/* the INSERT takes the same lock */
	return rules;
}

static void
tm_ledger_error_context(void *arg)
{
	errcontext("tiermeter: writing a row of usage_log");
}

/*
 * Appends a ledger row without an idempotency key straight into usage_log,
 * under the current command id; false if the table is not as installed or
 * the call cannot write it here: the caller runs the INSERT through SPI.
 */
bool
tm_ledger_insert(const char *org_id, const char *feature, int64 amount,
				 TimestampTz occurred_at, const char *conversation_id)
{
	Relation	rel = tm_ledger_open();
	Datum		values[LEDGER_NATTS];
	bool		nulls[LEDGER_NATTS];
	Relation   *indexes;
	HeapTuple	tuple;
	ErrorContextCallback context;
	int			i;

	if (rel == NULL)
		return false;
	context.callback = tm_ledger_error_context;
	context.arg = NULL;
	context.previous = error_context_stack;
	error_context_stack = &context;

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(org_id);
	values[1] = CStringGetTextDatum(feature);
	values[2] = Int64GetDatum(amount);
	values[3] = TimestampTzGetDatum(occurred_at);
	if (conversation_id != NULL)
		values[4] = CStringGetTextDatum(conversation_id);
	else
	{
		values[4] = (Datum) 0;
		nulls[4] = true;
	}
	values[5] = (Datum) 0;
	nulls[5] = true;
	values[6] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	/* as the executor: every index locked before the row is written */
	indexes = palloc(Max(1, tm_ledger_nindexes) * sizeof(Relation));
	for (i = 0; i < tm_ledger_nindexes; i++)
		indexes[i] = index_open(tm_ledger_indexes[i].oid, RowExclusiveLock);

	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	heap_insert(rel, tuple, GetCurrentCommandId(true), 0, NULL);

	for (i = 0; i < tm_ledger_nindexes; i++)
	{
		const TmLedgerIndex *ix = &tm_ledger_indexes[i];
		IndexInfo  *info = ix->info;
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		int			k;

		if (ix->ready && !(ix->not_null_att > 0 && nulls[ix->not_null_att - 1]))
		{
			for (k = 0; k < info->ii_NumIndexAttrs; k++)
			{
				AttrNumber	att = info->ii_IndexAttrNumbers[k];

				ivalues[k] = values[att - 1];
				inulls[k] = nulls[att - 1];
			}
			(void) index_insert(indexes[i], ivalues, inulls, &tuple->t_self, rel,
								ix->unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
								false, info);
		}
		index_close(indexes[i], NoLock);
	}
	error_context_stack = context.previous;
	relation_close(rel, NoLock);
	heap_freetuple(tuple);
	pfree(indexes);
	return true;
}
