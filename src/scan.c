/*
 * scan.c
 *		An org's rows read straight from tiermeter's indexes, for the cache's
 *		builds: the org, its quota override, and the sums of its usage and
 *		grants in a period, under the builder's snapshot, without SPI or the
 *		executor.
 *
 * A build is what a call costs when the cache does not hold its key (more
 * keys than tiermeter.cache_size, a batch over many orgs): through SPI the
 * executor's start-up for the lookup's plan cost more than reading the few
 * index pages.  This reads them as PostgreSQL's own catalog code does
 * (genam), with the usage sum an index-only scan of usage_log's
 * (org_id, feature, occurred_at) INCLUDE (amount) index, as the planner
 * chose for the query it replaces.  The answer is the query's: same rows,
 * same snapshot, sums clamped to bigint the same way.
 *
 * When the tables are not as the install script made them (an index
 * dropped or changed, a column made nullable, a child table, forced row
 * security), or Citus distributed them (this node's tables are then empty
 * shells), the caller runs the query instead.
 */
#include "tiermeter.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/visibilitymap.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/predicate.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

/*
 * The tables, by name (relnames.c: the relations a query naming them would
 * read, after a rename or a schema change too); their indexes below.
 */
static TmRelName tm_scan_orgs = TM_RELNAME("orgs");
static TmRelName tm_scan_quotas = TM_RELNAME("org_quotas");
static TmRelName tm_scan_log = TM_RELNAME("usage_log");
static TmRelName tm_scan_grants_rel = TM_RELNAME("usage_grants");

/*
 * Locks the four tables a build reads, until the end of the transaction, as
 * a query locks them before it takes its snapshot: a rename and a new table
 * committed meanwhile are then seen both by the name lookup and by the
 * build's snapshot, which the caller takes after this.
 */
void
tm_scan_lock_tables(void)
{
	TmRelName  *tables[] = {&tm_scan_orgs, &tm_scan_quotas, &tm_scan_log, &tm_scan_grants_rel};
	int			i;

	for (i = 0; i < lengthof(tables); i++)
	{
		Relation	rel = tm_relname_open(tables[i], AccessShareLock);

		if (rel != NULL)
			relation_close(rel, NoLock);
	}
}

#ifdef HAVE_INT128			/* the sums are added in 128 bits */

/* a table's column this file reads: its number and type */
typedef struct TmScanCol
{
	AttrNumber	attnum;
	Oid			type;
	bool		notnull;
} TmScanCol;

/* the columns of the install script's tables */
#define ORGS_ORG_ID			1
#define ORGS_TIER_ID		2
#define ORGS_ANCHOR			3
#define ORGS_START			4
#define ORGS_END			5
#define QUOTAS_ORG_ID		1
#define QUOTAS_FEATURE		2
#define QUOTAS_QUOTA		3
#define LOG_ORG_ID			1
#define LOG_FEATURE			2
#define LOG_AMOUNT			3
#define LOG_OCCURRED_AT		4
#define GRANTS_ORG_ID		1
#define GRANTS_FEATURE		2
#define GRANTS_AMOUNT		3
#define GRANTS_GRANTED_AT	5

/* Are the relation's columns of these numbers and types? */
static bool
tm_scan_cols_ok(Relation rel, const TmScanCol *cols, int ncols)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < ncols; i++)
	{
		Form_pg_attribute att;

		if (cols[i].attnum > desc->natts)
			return false;
		att = TupleDescAttr(desc, cols[i].attnum - 1);
		if (att->attisdropped || att->atttypid != cols[i].type ||
			(cols[i].notnull && !att->attnotnull))
			return false;
	}
	return true;
}

/* Is the index a valid b-tree on exactly these columns (keys, then included)? */
static bool
tm_scan_index_ok(Relation index, int nkeys, const AttrNumber *cols, int ncols)
{
	Form_pg_index ix = index->rd_index;
	int			i;

	if (index->rd_rel->relam != BTREE_AM_OID || !ix->indisvalid ||
		!ix->indisready || ix->indcheckxmin || ix->indnatts != ncols ||
		ix->indnkeyatts != nkeys ||
		!heap_attisnull(index->rd_indextuple, Anum_pg_index_indexprs, NULL) ||
		!heap_attisnull(index->rd_indextuple, Anum_pg_index_indpred, NULL))
		return false;
	for (i = 0; i < ncols; i++)
		if (ix->indkey.values[i] != cols[i])
			return false;
	/* text keys compared with the default collation (deterministic) */
	for (i = 0; i < nkeys; i++)
		if (OidIsValid(index->rd_indcollation[i]) &&
			index->rd_indcollation[i] != DEFAULT_COLLATION_OID)
			return false;
	return true;
}

/* the indexes the scans read, by name */
static TmRelName tm_scan_orgs_pkey = TM_RELNAME("orgs_pkey");
static TmRelName tm_scan_quotas_pkey = TM_RELNAME("org_quotas_pkey");
static TmRelName tm_scan_log_index = TM_RELNAME("usage_log_org_feature_time");
static TmRelName tm_scan_grants_index = TM_RELNAME("usage_grants_org");

/* Opens the table and its index if both are there and as expected; else NULL. */
static Relation
tm_scan_open(TmRelName *table, TmRelName *indexname, Relation *index,
			 const TmScanCol *cols, int ncols,
			 int nkeys, const AttrNumber *icols, int nicols)
{
	Relation	rel;

	*index = NULL;
	rel = tm_relname_open(table, AccessShareLock);
	if (rel == NULL)
		return NULL;
	/* the query reads child tables too, and obeys forced row security */
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relhassubclass ||
		(rel->rd_rel->relrowsecurity && rel->rd_rel->relforcerowsecurity) ||
		!tm_scan_cols_ok(rel, cols, ncols))
	{
		relation_close(rel, AccessShareLock);
		return NULL;
	}
	*index = tm_relname_open(indexname, AccessShareLock);
	if (*index == NULL)
	{
		relation_close(rel, AccessShareLock);
		return NULL;
	}
	if ((*index)->rd_rel->relkind != RELKIND_INDEX ||
		(*index)->rd_index->indrelid != RelationGetRelid(rel) ||
		!tm_scan_index_ok(*index, nkeys, icols, nicols))
	{
		relation_close(*index, AccessShareLock);
		relation_close(rel, AccessShareLock);
		*index = NULL;
		return NULL;
	}
	return rel;
}

static void
tm_scan_close(Relation rel, Relation index)
{
	if (index != NULL)
		relation_close(index, AccessShareLock);
	if (rel != NULL)
		relation_close(rel, AccessShareLock);
}

/*
 * A scan key on attno (the table's column for systable_beginscan, the
 * index's for index_rescan) compared with arg in the collation of the
 * index's column i.
 */
static void
tm_scan_key(ScanKey key, AttrNumber attno, Relation index, int i,
			StrategyNumber strategy, RegProcedure proc, Datum arg)
{
	ScanKeyEntryInitialize(key, 0, attno, strategy, InvalidOid,
						   index->rd_indcollation[i], proc, arg);
}

/* The org's row: false if it has none. */
static bool
tm_scan_org(Relation rel, Relation index, Datum org, Snapshot snapshot,
			TmScanOrg *r)
{
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	tm_scan_key(&key, ORGS_ORG_ID, index, 0, BTEqualStrategyNumber, F_TEXTEQ, org);
	scan = systable_beginscan(rel, RelationGetRelid(index), true, snapshot, 1, &key);
	if ((tup = systable_getnext(scan)) != NULL)
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull[4];
		Datum		tier = heap_getattr(tup, ORGS_TIER_ID, desc, &isnull[0]);

		r->anchor = DatumGetTimestampTz(heap_getattr(tup, ORGS_ANCHOR, desc, &isnull[1]));
		r->stored.start = DatumGetTimestampTz(heap_getattr(tup, ORGS_START, desc, &isnull[2]));
		r->stored.end = DatumGetTimestampTz(heap_getattr(tup, ORGS_END, desc, &isnull[3]));
		/* NOT NULL columns (checked), CHECK (period_end > period_start) */
		if (isnull[0] || isnull[1] || isnull[2] || isnull[3] ||
			r->stored.end <= r->stored.start)
			elog(ERROR, "tiermeter: org \"%s\" has a NULL or empty period",
				 TextDatumGetCString(org));
		r->tier_id = TextDatumGetCString(tier);
		found = true;
	}
	systable_endscan(scan);
	return found;
}

/* The org's override of feature: has_override, and NULL (unlimited) or quota. */
static void
tm_scan_override(Relation rel, Relation index, Datum org, Datum feature,
				 Snapshot snapshot, TmScanOrg *r)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;

	tm_scan_key(&keys[0], QUOTAS_ORG_ID, index, 0, BTEqualStrategyNumber, F_TEXTEQ, org);
	tm_scan_key(&keys[1], QUOTAS_FEATURE, index, 1, BTEqualStrategyNumber, F_TEXTEQ, feature);
	scan = systable_beginscan(rel, RelationGetRelid(index), true, snapshot, 2, keys);
	r->has_override = false;
	if ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		q = heap_getattr(tup, QUOTAS_QUOTA, RelationGetDescr(rel), &isnull);

		r->has_override = true;
		r->override_unlimited = isnull;
		r->override_quota = isnull ? 0 : DatumGetInt64(q);
	}
	systable_endscan(scan);
}

/* clamps a sum to bigint, as the query's GREATEST(LEAST(sum, max), min) */
static int64
tm_scan_clamp(int128 sum)
{
	if (sum > (int128) PG_INT64_MAX)
		return PG_INT64_MAX;
	if (sum < (int128) PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) sum;
}

/*
 * The sum of the ledger's amounts for (org, feature), with occurred_at in
 * [from, to): an index-only scan, reading the heap only for
 * pages not all-visible (for the row's visibility; the amount is the
 * index's, which equals the heap's: it is an indexed column, so no HOT
 * update changes it).
 */
static int64
tm_scan_usage(Relation rel, Relation index, Datum org, Datum feature,
			  TimestampTz from, TimestampTz to, Snapshot snapshot)
{
	ScanKeyData keys[4];
	int			nkeys = 4;
	IndexScanDesc scan;
	ItemPointer tid;
	TupleTableSlot *slot = NULL;
	Buffer		vmbuffer = InvalidBuffer;
	int128		sum = 0;

	tm_scan_key(&keys[0], 1, index, 0, BTEqualStrategyNumber, F_TEXTEQ, org);
	tm_scan_key(&keys[1], 2, index, 1, BTEqualStrategyNumber, F_TEXTEQ, feature);
	tm_scan_key(&keys[2], 3, index, 2, BTGreaterEqualStrategyNumber, F_TIMESTAMPTZ_GE,
				TimestampTzGetDatum(from));
	tm_scan_key(&keys[3], 3, index, 2, BTLessStrategyNumber, F_TIMESTAMPTZ_LT,
				TimestampTzGetDatum(to));
	scan = index_beginscan(rel, index, snapshot, nkeys, 0);
	scan->xs_want_itup = true;
	index_rescan(scan, keys, nkeys, NULL, 0);
	while ((tid = index_getnext_tid(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		amount;

		CHECK_FOR_INTERRUPTS();
		if (!VM_ALL_VISIBLE(rel, ItemPointerGetBlockNumber(tid), &vmbuffer))
		{
			if (slot == NULL)
				slot = table_slot_create(rel, NULL);
			if (!index_fetch_heap(scan, slot))
				continue;		/* not visible to the snapshot */
		}
		else
			PredicateLockPage(rel, ItemPointerGetBlockNumber(tid), snapshot);
		amount = index_getattr(scan->xs_itup, 4, scan->xs_itupdesc, &isnull);
		if (!isnull)
			sum += DatumGetInt64(amount);
	}
	if (BufferIsValid(vmbuffer))
		ReleaseBuffer(vmbuffer);
	if (slot != NULL)
		ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	return tm_scan_clamp(sum);
}

/* The sum of the org's grants of feature made in [from, to). */
static int64
tm_scan_grants(Relation rel, Relation index, Datum org, Datum feature,
			   TimestampTz from, TimestampTz to, Snapshot snapshot)
{
	ScanKeyData keys[4];
	SysScanDesc scan;
	HeapTuple	tup;
	int128		sum = 0;

	tm_scan_key(&keys[0], GRANTS_ORG_ID, index, 0, BTEqualStrategyNumber, F_TEXTEQ, org);
	tm_scan_key(&keys[1], GRANTS_FEATURE, index, 1, BTEqualStrategyNumber, F_TEXTEQ, feature);
	tm_scan_key(&keys[2], GRANTS_GRANTED_AT, index, 2, BTGreaterEqualStrategyNumber,
				F_TIMESTAMPTZ_GE, TimestampTzGetDatum(from));
	tm_scan_key(&keys[3], GRANTS_GRANTED_AT, index, 2, BTLessStrategyNumber,
				F_TIMESTAMPTZ_LT, TimestampTzGetDatum(to));
	scan = systable_beginscan(rel, RelationGetRelid(index), true, snapshot, 4, keys);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		amount = heap_getattr(tup, GRANTS_AMOUNT, RelationGetDescr(rel), &isnull);

		if (!isnull)
			sum += DatumGetInt64(amount);
	}
	systable_endscan(scan);
	/* the query: LEAST(sum, max); amounts are positive (CHECK) */
	return tm_scan_clamp(sum);
}

/*
 * The org's row, its override of feature, and the sums of its usage (of
 * the period containing now, or all of it for a gauge) and grants (of that
 * period) under snapshot: what TM_PLAN_ORG_SUMS answers.  month_start
 * anchors an org that has no row.  False, having read nothing, when the
 * tables are not the install script's or are distributed: the caller runs
 * the query.
 */
bool
tm_scan_org_sums(const char *org_id, const char *feature, bool is_gauge,
				 TimestampTz now, TimestampTz month_start, Snapshot snapshot,
				 TmScanOrg *r)
{
	static const TmScanCol orgs_cols[] = {
		{ORGS_ORG_ID, TEXTOID, true}, {ORGS_TIER_ID, TEXTOID, true},
		{ORGS_ANCHOR, TIMESTAMPTZOID, true}, {ORGS_START, TIMESTAMPTZOID, true},
		{ORGS_END, TIMESTAMPTZOID, true}};
	static const AttrNumber orgs_key[] = {ORGS_ORG_ID};
	static const TmScanCol quotas_cols[] = {
		{QUOTAS_ORG_ID, TEXTOID, true}, {QUOTAS_FEATURE, TEXTOID, true},
		{QUOTAS_QUOTA, INT8OID, false}};
	static const AttrNumber quotas_key[] = {QUOTAS_ORG_ID, QUOTAS_FEATURE};
	static const TmScanCol log_cols[] = {
		{LOG_ORG_ID, TEXTOID, true}, {LOG_FEATURE, TEXTOID, true},
		{LOG_AMOUNT, INT8OID, true}, {LOG_OCCURRED_AT, TIMESTAMPTZOID, true}};
	static const AttrNumber log_key[] = {LOG_ORG_ID, LOG_FEATURE, LOG_OCCURRED_AT, LOG_AMOUNT};
	static const TmScanCol grants_cols[] = {
		{GRANTS_ORG_ID, TEXTOID, true}, {GRANTS_FEATURE, TEXTOID, true},
		{GRANTS_AMOUNT, INT8OID, true}, {GRANTS_GRANTED_AT, TIMESTAMPTZOID, true}};
	static const AttrNumber grants_key[] = {GRANTS_ORG_ID, GRANTS_FEATURE, GRANTS_GRANTED_AT};
	Relation	rels[4] = {NULL, NULL, NULL, NULL};
	Relation	idx[4] = {NULL, NULL, NULL, NULL};
	Datum		org;
	Datum		feat;
	bool		ok;
	int			i;

	if (tm_tables_distributed())
		return false;
	rels[0] = tm_scan_open(&tm_scan_orgs, &tm_scan_orgs_pkey, &idx[0], orgs_cols,
						   lengthof(orgs_cols), 1, orgs_key, lengthof(orgs_key));
	rels[1] = tm_scan_open(&tm_scan_quotas, &tm_scan_quotas_pkey, &idx[1], quotas_cols,
						   lengthof(quotas_cols), 2, quotas_key, lengthof(quotas_key));
	rels[2] = tm_scan_open(&tm_scan_log, &tm_scan_log_index, &idx[2],
						   log_cols, lengthof(log_cols), 3, log_key, lengthof(log_key));
	rels[3] = tm_scan_open(&tm_scan_grants_rel, &tm_scan_grants_index, &idx[3], grants_cols,
						   lengthof(grants_cols), 3, grants_key, lengthof(grants_key));
	ok = rels[0] != NULL && rels[1] != NULL && rels[2] != NULL && rels[3] != NULL;
	if (ok)
	{
		org = CStringGetTextDatum(org_id);
		feat = CStringGetTextDatum(feature);
		r->org_exists = tm_scan_org(rels[0], idx[0], org, snapshot, r);
		if (!r->org_exists)
			r->anchor = month_start;
		r->period = tm_period_containing(r->anchor, now, r->org_exists,
										 r->org_exists ? r->stored.start : 0,
										 r->org_exists ? r->stored.end : 0);
		tm_scan_override(rels[1], idx[1], org, feat, snapshot, r);
		/* a gauge: every row, as the query's -infinity <= t < infinity */
		r->used = tm_scan_usage(rels[2], idx[2], org, feat,
								is_gauge ? DT_NOBEGIN : r->period.start,
								is_gauge ? DT_NOEND : r->period.end, snapshot);
		r->granted = tm_scan_grants(rels[3], idx[3], org, feat,
									r->period.start, r->period.end, snapshot);
	}
	for (i = 0; i < 4; i++)
		tm_scan_close(rels[i], idx[i]);
	return ok;
}

#else							/* !HAVE_INT128 */

bool
tm_scan_org_sums(const char *org_id, const char *feature, bool is_gauge,
				 TimestampTz now, TimestampTz month_start, Snapshot snapshot,
				 TmScanOrg *r)
{
	return false;				/* the query sums in numeric */
}

#endif							/* HAVE_INT128 */
