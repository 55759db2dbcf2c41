/*
 * catalog.c
 *		SPI plumbing shared by every SQL-callable function: saved plans,
 *		running as the extension owner, argument validation, and the lookup
 *		of an org, a feature and its quota.
 *
 * Every query is fully schema-qualified, operators included, because it runs
 * as the owner of the tiermeter schema whatever the caller's search_path.
 * Configuration is read on every call, so an edit to a config row takes
 * effect on the next call in every session.
 */
#include "tiermeter.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "parser/scansup.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

TM_FUNCTION(tiermeter_ensure_org);
TM_FUNCTION(tiermeter_require_feature);
TM_FUNCTION(tiermeter_require_tier);
TM_FUNCTION(tiermeter_require_id);
TM_FUNCTION(tiermeter_require_amount);

#define EQ " OPERATOR(pg_catalog.=) "
#define LT " OPERATOR(pg_catalog.<) "
#define GE " OPERATOR(pg_catalog.>=) "
#define PLUS " OPERATOR(pg_catalog.+) "
#define TIMES " OPERATOR(pg_catalog.*) "

/*
 * ts + secs seconds, with immutable operators only (timestamptz + interval
 * is STABLE, which Citus refuses on columns in an UPDATE): the same instant,
 * computed in UTC.
 */
#define UTC_PLUS(ts, secs) \
	"pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', " ts ")" PLUS \
	"(" secs TIMES "'1 second'::pg_catalog.interval))"

/* the whole seconds from a session's accrued_to to $3, at least 0 */
#define TM_DELTA \
	"GREATEST(pg_catalog.floor(pg_catalog.date_part('epoch', $3" \
	" OPERATOR(pg_catalog.-) s.accrued_to)), 0)::pg_catalog.int8"

typedef struct TmPlanDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[6];
} TmPlanDef;

static const TmPlanDef plan_defs[TM_NUM_PLANS] = {
	/*
	 * The org's rows are read in a subquery filtered by org_id, so that on
	 * a Citus cluster the query goes to the one shard that holds them.
	 */
	[TM_PLAN_LOOKUP] = {
		"SELECT f.kind" EQ "'gauge', t.tier_id, o.org_id IS NOT NULL,"
		"       o.billing_anchor, o.period_start, o.period_end,"
		"       CASE WHEN o.oq_org IS NOT NULL THEN o.quota IS NULL"
		"            ELSE tq.tier_id IS NOT NULL AND tq.quota IS NULL END,"
		"       CASE WHEN o.oq_org IS NOT NULL THEN o.quota"
		"            ELSE COALESCE(tq.quota, 0) END,"
		"       (SELECT pg_catalog.array_agg(a.percent ORDER BY a.percent)"
		"          FROM tiermeter.alert_thresholds a),"
		"       t.max_session_seconds, t.max_active_sessions"
		"  FROM tiermeter.features f"
		"  LEFT JOIN (SELECT x.org_id, x.tier_id, x.billing_anchor, x.period_start, x.period_end,"
		"                    y.org_id AS oq_org, y.quota"
		"               FROM tiermeter.orgs x"
		"               LEFT JOIN tiermeter.org_quotas y"
		"                    ON y.org_id" EQ "x.org_id AND y.feature" EQ "$2"
		"              WHERE x.org_id" EQ "$1 OFFSET 0) o ON true"
		"  LEFT JOIN tiermeter.tiers t ON t.tier_id" EQ
		"       COALESCE(o.tier_id, (SELECT d.tier_id FROM tiermeter.tiers d WHERE d.is_default))"
		"  LEFT JOIN tiermeter.tier_quotas tq"
		"       ON tq.tier_id" EQ "t.tier_id AND tq.feature" EQ "f.feature"
		" WHERE f.feature" EQ "$2",
		2, {TEXTOID, TEXTOID}
	},
	[TM_PLAN_SUMS] = {
		"SELECT GREATEST(LEAST("
		"         (SELECT COALESCE(pg_catalog.sum(u.amount), 0) FROM tiermeter.usage_log u"
		"           WHERE u.org_id" EQ "$1 AND u.feature" EQ "$2"
		"             AND u.occurred_at" GE "$3 AND u.occurred_at" LT "$4),"
		"         9223372036854775807), -9223372036854775808)::pg_catalog.int8,"
		"       LEAST("
		"         (SELECT COALESCE(pg_catalog.sum(g.amount), 0) FROM tiermeter.usage_grants g"
		"           WHERE g.org_id" EQ "$1 AND g.feature" EQ "$2"
		"             AND g.granted_at" GE "$5 AND g.granted_at" LT "$6),"
		"         9223372036854775807)::pg_catalog.int8",
		6, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	[TM_PLAN_CREATE_ORG] = {
		"INSERT INTO tiermeter.orgs (org_id, tier_id, billing_anchor, period_start, period_end)"
		" SELECT $1, d.tier_id, $2, $3, $4 FROM tiermeter.tiers d WHERE d.is_default"
		" ON CONFLICT (org_id) DO NOTHING",
		4, {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	[TM_PLAN_INSERT_USAGE] = {
		"INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at, conversation_id)"
		" VALUES ($1, $2, $3, $4, $5)"
		" RETURNING org_id, feature, amount, occurred_at",
		5, {TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID, TEXTOID}
	},
	/* RETURNING is refused when a rule may rewrite the INSERT */
	[TM_PLAN_INSERT_USAGE_RULES] = {
		"INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at, conversation_id)"
		" VALUES ($1, $2, $3, $4, $5)",
		5, {TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID, TEXTOID}
	},
	[TM_PLAN_INSERT_USAGE_KEYED] = {
		"INSERT INTO tiermeter.usage_log"
		"       (org_id, feature, amount, occurred_at, conversation_id, idempotency_key)"
		" VALUES ($1, $2, $3, $4, $5, $6)"
		" ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
		" RETURNING org_id, feature, amount, occurred_at",
		6, {TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID, TEXTOID, TEXTOID}
	},
	[TM_PLAN_GRANTS] = {
		"SELECT LEAST(COALESCE(pg_catalog.sum(g.amount), 0), 9223372036854775807)::pg_catalog.int8"
		"  FROM tiermeter.usage_grants g"
		" WHERE g.org_id" EQ "$1 AND g.feature" EQ "$2"
		"   AND g.granted_at" GE "$3 AND g.granted_at" LT "$4",
		4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	[TM_PLAN_ALERTED] = {
		"SELECT e.threshold FROM tiermeter.limit_events e"
		" WHERE e.kind" EQ "'threshold_reached' AND e.org_id" EQ "$1"
		"   AND e.feature" EQ "$2 AND e.period_start" EQ "$3",
		3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
	},
	[TM_PLAN_INSERT_ALERT] = {
		"INSERT INTO tiermeter.limit_events (org_id, kind, feature, threshold, period_start, payload)"
		" VALUES ($1, 'threshold_reached', $2, $3, $4, $5::pg_catalog.jsonb)"
		" ON CONFLICT (org_id, feature, period_start, threshold)"
		"   WHERE kind" EQ "'threshold_reached' DO NOTHING",
		5, {TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID}
	},
	/*
	 * A touch of an active session at $3, if it is open and active until
	 * $4 (5 s after): the whole seconds since accrued_to are counted (the
	 * fraction waits), in one statement that locks, computes from the row's
	 * latest version (READ COMMITTED re-evaluates it after a wait) and
	 * writes it.
	 */
	[TM_PLAN_SESSION_TOUCH] = {
		"UPDATE tiermeter.sessions s"
		"   SET last_counted = " TM_DELTA ","
		"       duration_seconds = s.duration_seconds" PLUS TM_DELTA ","
		"       accrued_to = " UTC_PLUS("s.accrued_to", TM_DELTA "::pg_catalog.float8") ","
		"       last_active_at = GREATEST(s.last_active_at, $3),"
		"       idle_until = " UTC_PLUS("GREATEST(s.last_active_at, $3)",
										"s.idle_timeout::pg_catalog.float8")
		" WHERE s.org_id" EQ "$1 AND s.conversation_id" EQ "$2"
		"   AND s.ended_at IS NULL AND s.idle_until" GE "$4"
		" RETURNING s.started_at, s.last_active_at, s.accrued_to, s.idle_until,"
		"           s.duration_seconds, s.last_counted",
		4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	/* the copy of the config tables each backend keeps (cache_config.c) */
	[TM_PLAN_CFG_FEATURES] = {
		"SELECT f.feature, (f.kind" EQ "'gauge')::pg_catalog.int4 FROM tiermeter.features f",
		0, {InvalidOid}
	},
	[TM_PLAN_CFG_TIERS] = {
		"SELECT t.tier_id, t.max_session_seconds, t.max_active_sessions, t.is_default::pg_catalog.int4"
		"  FROM tiermeter.tiers t ORDER BY t.rank",
		0, {InvalidOid}
	},
	[TM_PLAN_CFG_QUOTAS] = {
		"SELECT q.tier_id, q.feature, q.quota FROM tiermeter.tier_quotas q",
		0, {InvalidOid}
	},
	[TM_PLAN_CFG_THRESHOLDS] = {
		"SELECT a.percent FROM tiermeter.alert_thresholds a ORDER BY a.percent",
		0, {InvalidOid}
	},
	/*
	 * With that copy, what a build reads of one org: its row, its override
	 * of the feature's quota, the period containing $3 (a new org: anchored
	 * at $5, the month's start) and the sums over it ($4: a gauge, all
	 * time), as the lookup and sums plans give them.
	 */
	[TM_PLAN_ORG_SUMS] = {
		"SELECT o.tier_id, o.billing_anchor, o.period_start, o.period_end, b.ps, b.pe,"
		"       oq.org_id IS NOT NULL, oq.quota,"
		"       GREATEST(LEAST("
		"         (SELECT COALESCE(pg_catalog.sum(u.amount), 0) FROM tiermeter.usage_log u"
		"           WHERE u.org_id" EQ "$1 AND u.feature" EQ "$2"
		"             AND u.occurred_at" GE "CASE WHEN $4 THEN '-infinity'::pg_catalog.timestamptz ELSE b.ps END"
		"             AND u.occurred_at" LT "CASE WHEN $4 THEN 'infinity'::pg_catalog.timestamptz ELSE b.pe END),"
		"         9223372036854775807), -9223372036854775808)::pg_catalog.int8,"
		"       LEAST("
		"         (SELECT COALESCE(pg_catalog.sum(g.amount), 0) FROM tiermeter.usage_grants g"
		"           WHERE g.org_id" EQ "$1 AND g.feature" EQ "$2"
		"             AND g.granted_at" GE "b.ps AND g.granted_at" LT "b.pe),"
		"         9223372036854775807)::pg_catalog.int8"
		"  FROM (SELECT 1) one"
		"  LEFT JOIN tiermeter.orgs o ON o.org_id" EQ "$1"
		"  LEFT JOIN tiermeter.org_quotas oq ON oq.org_id" EQ "$1 AND oq.feature" EQ "$2"
		" CROSS JOIN LATERAL"
		"       (SELECT (x.p).period_start AS ps, (x.p).period_end AS pe"
		"          FROM (SELECT tiermeter.period_bounds(COALESCE(o.billing_anchor, $5), $3,"
		"                                               o.period_start, o.period_end) AS p"
		"                OFFSET 0) x) b",
		5, {TEXTOID, TEXTOID, TIMESTAMPTZOID, BOOLOID, TIMESTAMPTZOID}
	},
	[TM_PLAN_SESSION_ADMIT] = {
		"SELECT tiermeter._touch_session_admit($1, $2, $3)",
		3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
	},
	[TM_PLAN_KEY_EXISTS] = {
		"SELECT u.feature, u.amount FROM tiermeter.usage_log u"
		" WHERE u.org_id" EQ "$1 AND u.idempotency_key" EQ "$2",
		2, {TEXTOID, TEXTOID}
	},
};

static SPIPlanPtr plans[TM_NUM_PLANS];

/*
 * True while the functions insert their own ledger or org rows: the cache
 * learns of those otherwise (tm_cache_note at commit, or an explicit
 * tm_cache_org_changed), so the insert trigger that catches everyone else's
 * rows (tiermeter_invalidate_insert_trigger) skips them -- only at the
 * trigger depth of the functions' INSERT itself: a row a user's trigger
 * inserts during it is everyone else's, and counts in tm_foreign_rows.
 */
bool		tm_own_write = false;
int			tm_own_write_depth = 0;
uint64		tm_foreign_rows = 0;

/* The owner of the tiermeter schema, as whom all table access runs. */
static Oid	tm_owner = InvalidOid;
static bool tm_owner_callback = false;

static void
tm_owner_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	tm_owner = InvalidOid;
}

static Oid
tm_get_owner(void)
{
	if (!OidIsValid(tm_owner))
	{
		Oid			nsp = get_namespace_oid("tiermeter", false);
		HeapTuple	tup;

		tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for namespace %u", nsp);
		tm_owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
		ReleaseSysCache(tup);

		if (!tm_owner_callback)
		{
			CacheRegisterSyscacheCallback(NAMESPACEOID, tm_owner_invalidate, (Datum) 0);
			tm_owner_callback = true;
		}
	}
	return tm_owner;
}

/*
 * Connect to SPI and act as the schema owner until tm_spi_end().  On error
 * the transaction machinery restores the user id.
 */
void
tm_spi_begin(TmOwnerSave *save)
{
	Oid			owner = tm_get_owner();

	GetUserIdAndSecContext(&save->save_userid, &save->save_sec_context);
	SetUserIdAndSecContext(owner, save->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tiermeter: SPI_connect failed");
}

void
tm_spi_end(TmOwnerSave *save)
{
	SPI_finish();
	SetUserIdAndSecContext(save->save_userid, save->save_sec_context);
}

SPIPlanPtr
tm_plan(TmPlanId id)
{
	if (plans[id] == NULL)
	{
		const TmPlanDef *def = &plan_defs[id];
		SPIPlanPtr	plan;

		plan = SPI_prepare(def->sql, def->nargs, (Oid *) def->argtypes);
		if (plan == NULL)
			elog(ERROR, "tiermeter: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "tiermeter: SPI_keepplan failed");
		plans[id] = plan;
	}
	return plans[id];
}

/*----------------------------------------------------------------------
 * Argument validation
 *----------------------------------------------------------------------
 */

/*
 * A required id: NULL is 22004; empty, blank (whitespace only) or longer
 * than TM_MAX_ID_BYTES is 22023.
 */
char *
tm_arg_id(FunctionCallInfo fcinfo, int argno, const char *what)
{
	char	   *s;
	const char *p;
	size_t		len;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: %s must not be NULL", what)));
	s = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (s[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: %s must not be empty", what)));
	for (p = s; *p != '\0' && scanner_isspace(*p); p++)
		;
	if (*p == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: %s must not be blank", what),
				 errdetail("It has only whitespace.")));
	len = strlen(s);
	if (len > TM_MAX_ID_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: %s is longer than %d bytes", what, TM_MAX_ID_BYTES),
				 errdetail("It has %zu bytes.", len)));
	return s;
}

/* An optional id: NULL is fine, empty is 22023. */
char *
tm_arg_text_or_null(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return tm_arg_id(fcinfo, argno, what);
}

void
tm_check_amount(int64 amount, bool is_gauge, const char *feature)
{
	if (!is_gauge && amount < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: amount must not be negative for a period feature"),
				 errdetail("amount = " INT64_FORMAT ", feature \"%s\"", amount, feature),
				 errhint("Only gauge features take negative deltas.")));
	if (amount > TM_MAX_AMOUNT || amount < -TM_MAX_AMOUNT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: amount is out of range"),
				 errdetail("amount = " INT64_FORMAT ", the limit is 10^12", amount)));
}

/* The known values of a config column, for a HINT. */
static char *
tm_known(const char *sql)
{
	char	   *known = NULL;

	if (SPI_execute(sql, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		known = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return known ? known : "(none)";
}

/* "unknown <what>", with a HINT naming the known ones (a query for them). */
static void
tm_unknown(const char *what, const char *name, const char *known_sql)
{
	char	   *known = tm_known(known_sql);

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("tiermeter: unknown %s \"%s\"", what, name),
			 errhint("Known %ss: %s.", what, known)));
}

static void
tm_unknown_feature(const char *feature)
{
	tm_unknown("feature", feature,
			   "SELECT pg_catalog.string_agg(feature, ', ' ORDER BY feature) FROM tiermeter.features");
}

/*----------------------------------------------------------------------
 * The org / feature / quota lookup
 *----------------------------------------------------------------------
 */

static char *
tm_getstr(HeapTuple tup, TupleDesc desc, int col, MemoryContext cxt)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return NULL;
	return MemoryContextStrdup(cxt, TextDatumGetCString(d));
}

static TimestampTz
tm_now(void)
{
	return GetCurrentTransactionStartTimestamp();
}

/*
 * Reads the org (or the default tier, for an unknown org), the feature and
 * its quota, and the current period.  Strings are copied into result_cxt so
 * they outlive SPI_finish().
 */
void
tm_lookup(TmOrgFeature *of, const char *org_id, const char *feature,
		  Snapshot snapshot, MemoryContext result_cxt)
{
	int			rc;
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	TimestampTz now = tm_now();

	values[0] = CStringGetTextDatum(org_id);
	values[1] = CStringGetTextDatum(feature);
	if (snapshot != InvalidSnapshot)
		rc = SPI_execute_snapshot(tm_plan(TM_PLAN_LOOKUP), values, NULL,
								  snapshot, InvalidSnapshot, true, false, 1);
	else
		rc = SPI_execute_plan(tm_plan(TM_PLAN_LOOKUP), values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: lookup failed");
	if (SPI_processed == 0)
		tm_unknown_feature(feature);

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	of->org_id = MemoryContextStrdup(result_cxt, org_id);
	of->feature = MemoryContextStrdup(result_cxt, feature);
	of->is_gauge = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
	of->tier_id = tm_getstr(tup, desc, 2, result_cxt);
	if (of->tier_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tiermeter: there is no default tier"),
				 errhint("Set is_default = true on one row of tiermeter.tiers.")));
	of->org_exists = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));

	if (of->org_exists)
	{
		of->anchor = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		of->stored.start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
		of->stored.end = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
		of->period = tm_period_containing(of->anchor, now, true,
										  of->stored.start, of->stored.end);
	}
	else
	{
		/* a new org: anchored at the first of this calendar month, UTC */
		of->anchor = tm_month_start_utc(now);
		of->period = tm_period_containing(of->anchor, now, false, 0, 0);
		of->stored = of->period;
	}

	of->unlimited = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	d = SPI_getbinval(tup, desc, 8, &isnull);
	of->base_quota = isnull ? 0 : DatumGetInt64(d);
	d = SPI_getbinval(tup, desc, 10, &isnull);
	of->max_session_seconds = isnull ? -1 : DatumGetInt64(d);
	d = SPI_getbinval(tup, desc, 11, &isnull);
	of->max_active_sessions = isnull ? -1 : DatumGetInt32(d);
	/*
	 * alert_thresholds, ascending: the lowest below 100 sets warning, the
	 * lowest TM_MAX_THRESHOLDS get threshold events
	 */
	of->has_warning = false;
	of->warning_percent = 0;
	of->nthresholds = 0;
	of->alerted_known = false;
	of->alerted = 0;
	d = SPI_getbinval(tup, desc, 9, &isnull);
	if (!isnull)
	{
		ArrayType  *arr = DatumGetArrayTypeP(d);
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;

		deconstruct_array(arr, INT4OID, sizeof(int32), true, TYPALIGN_INT,
						  &elems, &nulls, &n);
		for (i = 0; i < n; i++)
		{
			int32		t = DatumGetInt32(elems[i]);

			if (nulls[i])
				continue;
			if (i == 0 && t < 100)
			{
				of->has_warning = true;
				of->warning_percent = t;
			}
			if (of->nthresholds < TM_MAX_THRESHOLDS)
				of->thresholds[of->nthresholds++] = t;
		}
	}
}

/*
 * Creates the org on the default tier if the lookup did not find it; true if
 * this call inserted it.
 */
bool
tm_ensure_org(TmOrgFeature *of)
{
	Datum		values[4];

	if (of->org_exists)
		return false;
	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = TimestampTzGetDatum(of->anchor);
	values[2] = TimestampTzGetDatum(of->stored.start);
	values[3] = TimestampTzGetDatum(of->stored.end);
	if (tm_execute_own_write(TM_PLAN_CREATE_ORG, values, NULL) != SPI_OK_INSERT)
		elog(ERROR, "tiermeter: creating org failed");
	of->org_exists = true;
	return SPI_processed > 0;
}

/* The grants of the current period alone (a config refresh keeps used). */
int64
tm_grants(const TmOrgFeature *of, Snapshot snapshot)
{
	Datum		values[4];
	bool		isnull;

	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = CStringGetTextDatum(of->feature);
	values[2] = TimestampTzGetDatum(of->period.start);
	values[3] = TimestampTzGetDatum(of->period.end);
	if (SPI_execute_snapshot(tm_plan(TM_PLAN_GRANTS), values, NULL,
							 snapshot, InvalidSnapshot, true, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "tiermeter: grant sum failed");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* The trigger nesting level now (0 outside any trigger), as pg_trigger_depth(). */
int
tm_trigger_depth(void)
{
	LOCAL_FCINFO(fcinfo, 0);

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	return DatumGetInt32(pg_trigger_depth(fcinfo));
}

/* Runs one of the functions' own INSERTs (see tm_own_write). */
int
tm_execute_own_write(TmPlanId id, Datum *values, const char *nulls)
{
	int			rc;
	bool		save = tm_own_write;
	int			save_depth = tm_own_write_depth;

	tm_own_write = true;
	/* its rows' BEFORE triggers fire one level down; rows a trigger inserts, lower */
	tm_own_write_depth = tm_trigger_depth() + 1;
	PG_TRY();
	{
		rc = SPI_execute_plan(tm_plan(id), values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		tm_own_write = save;
		tm_own_write_depth = save_depth;
	}
	PG_END_TRY();
	return rc;
}

/*
 * Usage and grants of the current period (usage of all time for a gauge).
 * With a snapshot (consume, under its lock) the sums see every committed
 * row, whatever the isolation level.
 */
TmSums
tm_sums(const TmOrgFeature *of, Snapshot snapshot, bool read_only)
{
	Datum		values[6];
	TmSums		sums;
	bool		isnull;
	int			rc;
	bool		memo = false;

	/*
	 * The snapshot SPI would take (after a command counter increment when
	 * not read-only, so this transaction's earlier rows are seen): within a
	 * transaction, a sum under the same view of other transactions as an
	 * earlier one comes from memo.c.
	 */
	if (snapshot == InvalidSnapshot)
	{
		if (!read_only)
		{
			CommandCounterIncrement();
			snapshot = GetTransactionSnapshot();
		}
		else if (ActiveSnapshotSet())
			snapshot = GetActiveSnapshot();
		if (snapshot != InvalidSnapshot)
		{
			if (tm_memo_get(of, snapshot, &sums))
				return sums;
			memo = true;
			read_only = true;	/* exactly that snapshot */
		}
	}

	values[0] = CStringGetTextDatum(of->org_id);
	values[1] = CStringGetTextDatum(of->feature);
	values[2] = TimestampTzGetDatum(of->is_gauge ? DT_NOBEGIN : of->period.start);
	values[3] = TimestampTzGetDatum(of->is_gauge ? DT_NOEND : of->period.end);
	values[4] = TimestampTzGetDatum(of->period.start);
	values[5] = TimestampTzGetDatum(of->period.end);

	if (snapshot != InvalidSnapshot)
		rc = SPI_execute_snapshot(tm_plan(TM_PLAN_SUMS), values, NULL,
								  snapshot, InvalidSnapshot, read_only, false, 1);
	else
		rc = SPI_execute_plan(tm_plan(TM_PLAN_SUMS), values, NULL, read_only, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "tiermeter: usage sum failed");

	sums.used = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	sums.granted = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	sums.reserved = 0;
	if (memo)
		tm_memo_put(of, snapshot, &sums);
	return sums;
}

/*----------------------------------------------------------------------
 * SQL-callable helpers for the admin functions (SQL, in the install script)
 *----------------------------------------------------------------------
 */

/* _ensure_org(org_id): validates the id, creates the org if unknown. */
Datum
tiermeter_ensure_org(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	TmOwnerSave save;
	TmOrgFeature of;

	tm_spi_begin(&save);
	tm_lookup(&of, org_id, "conversation_seconds", InvalidSnapshot, CurrentMemoryContext);
	/* no note carries this creation: the org's entries re-read their config */
	if (tm_ensure_org(&of))
		tm_cache_org_changed(org_id, false);
	tm_spi_end(&save);
	PG_RETURN_VOID();
}

/* _require_feature(feature): errors unless it exists; returns its kind. */
Datum
tiermeter_require_feature(PG_FUNCTION_ARGS)
{
	char	   *feature = tm_arg_id(fcinfo, 0, "feature");
	TmOwnerSave save;
	Datum		arg = CStringGetTextDatum(feature);
	Oid			argtype = TEXTOID;
	char	   *kind = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	tm_spi_begin(&save);
	if (SPI_execute_with_args("SELECT kind FROM tiermeter.features WHERE feature" EQ "$1",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: feature lookup failed");
	if (SPI_processed == 0)
		tm_unknown_feature(feature);
	kind = tm_getstr(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, cxt);
	tm_spi_end(&save);
	PG_RETURN_TEXT_P(cstring_to_text(kind));
}

/* _require_tier(tier_id): errors unless the tier exists. */
Datum
tiermeter_require_tier(PG_FUNCTION_ARGS)
{
	char	   *tier_id = tm_arg_id(fcinfo, 0, "tier_id");
	TmOwnerSave save;
	Datum		arg = CStringGetTextDatum(tier_id);
	Oid			argtype = TEXTOID;

	tm_spi_begin(&save);
	if (SPI_execute_with_args("SELECT 1 FROM tiermeter.tiers WHERE tier_id" EQ "$1",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "tiermeter: tier lookup failed");
	if (SPI_processed == 0)
		tm_unknown("tier", tier_id,
				   "SELECT pg_catalog.string_agg(tier_id, ', ' ORDER BY rank) FROM tiermeter.tiers");
	tm_spi_end(&save);
	PG_RETURN_VOID();
}

/* _require_amount(amount, feature, is_gauge): errors unless valid. */
Datum
tiermeter_require_amount(PG_FUNCTION_ARGS)
{
	char	   *feature = tm_arg_id(fcinfo, 1, "feature");

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: amount must not be NULL")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: is_gauge must not be NULL")));
	tm_check_amount(PG_GETARG_INT64(0), PG_GETARG_BOOL(2), feature);
	PG_RETURN_VOID();
}

/*
 * _require_id(id, what): errors unless id is a valid id (not NULL, empty or
 * blank, at most TM_MAX_ID_BYTES), with the C functions' messages; returns it.
 */
Datum
tiermeter_require_id(PG_FUNCTION_ARGS)
{
	const char *what = PG_ARGISNULL(1) ? "id" : text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_TEXT_P(cstring_to_text(tm_arg_id(fcinfo, 0, what)));
}
