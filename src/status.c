/*
 * status.c
 *		Building a tiermeter.limit_status value (docs/reference.md, "Result type limit_status").
 */
#include "tiermeter.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/typcache.h"
#include "utils/timestamp.h"

enum
{
	LS_ORG_ID,
	LS_TIER,
	LS_FEATURE,
	LS_ALLOWED,
	LS_REASON,
	LS_USED,
	LS_QUOTA,
	LS_REMAINING,
	LS_PERCENT_USED,
	LS_WARNING,
	LS_UNLIMITED,
	LS_PERIOD_START,
	LS_PERIOD_END,
	LS_NATTS_0_1,				/* the columns of 0.1.0; later ones are appended */
	LS_RESERVED = LS_NATTS_0_1,
	LS_NATTS
};

static const Oid tm_limit_status_types[LS_NATTS] = {
	[LS_ORG_ID] = TEXTOID,
	[LS_TIER] = TEXTOID,
	[LS_FEATURE] = TEXTOID,
	[LS_ALLOWED] = BOOLOID,
	[LS_REASON] = TEXTOID,
	[LS_USED] = INT8OID,
	[LS_QUOTA] = INT8OID,
	[LS_REMAINING] = INT8OID,
	[LS_PERCENT_USED] = NUMERICOID,
	[LS_WARNING] = BOOLOID,
	[LS_UNLIMITED] = BOOLOID,
	[LS_PERIOD_START] = TIMESTAMPTZOID,
	[LS_PERIOD_END] = TIMESTAMPTZOID,
	[LS_RESERVED] = INT8OID
};

/* round(100 * used / quota, 2), in hundredths, half away from zero */
static int64
tm_percent_hundredths(int64 used, int64 quota)
{
	int128		num = (int128) used * 10000;
	int128		q = num / quota;
	int128		r = num % quota;

	if (r < 0)
		r = -r;
	if (2 * r >= quota)
		q += (num < 0) ? -1 : 1;
	if (q > PG_INT64_MAX)
		return PG_INT64_MAX;
	if (q < PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) q;
}

/*
 * The columns the library builds must be the type's: natts of them (or
 * natts_old, a database whose SQL is still at an older version of the
 * type), of these types, none dropped.  A type altered by hand is an
 * error, not a value of another shape.
 */
static void
tm_result_desc_check(TupleDesc tupdesc, const char *type, const Oid *types,
					 int natts, int natts_old)
{
	int			i;

	if (tupdesc->natts != natts && tupdesc->natts != natts_old)
		elog(ERROR, "tiermeter: %s has %d columns, expected %d",
			 type, tupdesc->natts, natts);
	for (i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attisdropped || att->atttypid != types[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("tiermeter: column %d of %s is not of type %s",
							i + 1, type, format_type_be(types[i])),
					 errhint("The type was altered; its columns are those of the install script.")));
	}
}

/*
 * The descriptors of the named row types the functions return, kept per
 * backend while the type cache says they are current (an ALTER TYPE makes
 * a new one): a query's first call would otherwise copy the type's
 * descriptor twice, and with prepared statements every call is a query's
 * first.
 */
#define TM_RESULT_TYPES 4
static struct
{
	Oid			typid;
	uint64		identifier;		/* the type cache's tupDesc_identifier */
	TupleDesc	desc;			/* in CacheMemoryContext */
}			tm_result_types[TM_RESULT_TYPES];

static TupleDesc
tm_named_result_desc(Oid typid, const char *type, const Oid *types, int natts, int natts_old)
{
	TypeCacheEntry *t = lookup_type_cache(typid, TYPECACHE_TUPDESC);
	int			i;

	if (t->tupDesc == NULL)
		return NULL;
	for (i = 0; i < TM_RESULT_TYPES; i++)
		if (tm_result_types[i].typid == typid || !OidIsValid(tm_result_types[i].typid))
			break;
	if (i == TM_RESULT_TYPES)
		return NULL;
	if (tm_result_types[i].typid != typid ||
		tm_result_types[i].identifier != t->tupDesc_identifier)
	{
		TupleDesc	desc = tm_result_types[i].desc;
		MemoryContext old;

		/* checked once per version of the type */
		tm_result_desc_check(t->tupDesc, type, types, natts, natts_old);
		old = MemoryContextSwitchTo(CacheMemoryContext);
		tm_result_types[i].desc = CreateTupleDescCopy(t->tupDesc);
		MemoryContextSwitchTo(old);
		tm_result_types[i].typid = typid;
		tm_result_types[i].identifier = t->tupDesc_identifier;
		if (desc != NULL)
			FreeTupleDesc(desc);
	}
	return tm_result_types[i].desc;
}

/*
 * The descriptor of a C function's composite result, of the columns' types
 * (see tm_result_desc_check): a named row type's kept per backend, else
 * made once per query (fn_extra lives in fn_mcxt).
 */
TupleDesc
tm_result_desc(FunctionCallInfo fcinfo, const char *type, const Oid *types,
			   int natts, int natts_old)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	Oid			typid = get_fn_expr_rettype(fcinfo->flinfo);

	if (tupdesc == NULL && OidIsValid(typid) && typid != RECORDOID &&
		(tupdesc = tm_named_result_desc(typid, type, types, natts, natts_old)) != NULL)
		return tupdesc;
	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "tiermeter: return type must be a row type");
		tm_result_desc_check(tupdesc, type, types, natts, natts_old);
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		fcinfo->flinfo->fn_extra = tupdesc;
		MemoryContextSwitchTo(old);
	}
	return tupdesc;
}

/*
 * The quota in force (tier quota or override plus grants; 0 when
 * unlimited), and whether used is below it: limit_status's allowed.
 */
bool
tm_limit_allowed(const TmOrgFeature *of, const TmSums *sums, int64 *quota)
{
	*quota = of->unlimited ? 0 : tm_add_sat(of->base_quota, sums->granted);
	return of->unlimited || sums->used < *quota;
}

Datum
tm_status_datum(FunctionCallInfo fcinfo, const TmOrgFeature *of,
				const TmSums *sums, TmReason mode)
{
	TupleDesc	tupdesc;
	Datum		values[LS_NATTS];
	bool		nulls[LS_NATTS];
	int64		quota = 0;
	int64		pct;
	bool		allowed;

	tupdesc = tm_result_desc(fcinfo, "limit_status", tm_limit_status_types, LS_NATTS, LS_NATTS_0_1);

	memset(nulls, 0, sizeof(nulls));

	allowed = tm_limit_allowed(of, sums, &quota);
	if (mode == TM_REASON_RECORDED)
		allowed = true;
	else if (mode == TM_REASON_REFUSED)
		allowed = false;

	if (of->unlimited)
		pct = 0;
	else if (quota == 0)
		pct = 10000;
	else
		pct = tm_percent_hundredths(sums->used, quota);

	values[LS_ORG_ID] = CStringGetTextDatum(of->org_id);
	values[LS_TIER] = CStringGetTextDatum(of->tier_id);
	values[LS_FEATURE] = CStringGetTextDatum(of->feature);
	values[LS_ALLOWED] = BoolGetDatum(allowed);
	if (allowed)
		nulls[LS_REASON] = true;
	else
		values[LS_REASON] = CStringGetTextDatum(quota == 0 ? "not_included" : "limit_exceeded");
	values[LS_USED] = Int64GetDatum(sums->used);
	if (of->unlimited)
	{
		nulls[LS_QUOTA] = true;
		nulls[LS_REMAINING] = true;
	}
	else
	{
		values[LS_QUOTA] = Int64GetDatum(quota);
		values[LS_REMAINING] = Int64GetDatum(quota > sums->used ? quota - sums->used : 0);
	}
	values[LS_PERCENT_USED] = NumericGetDatum(int64_div_fast_to_numeric(pct, 2));
	values[LS_WARNING] = BoolGetDatum(!of->unlimited && of->has_warning &&
									  pct >= (int64) of->warning_percent * 100);
	values[LS_UNLIMITED] = BoolGetDatum(of->unlimited);
	values[LS_PERIOD_START] = TimestampTzGetDatum(of->period.start);
	values[LS_PERIOD_END] = TimestampTzGetDatum(of->period.end);
	values[LS_RESERVED] = Int64GetDatum(sums->reserved);

	/* a database still on 0.1.0 SQL has the first columns only */
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}
