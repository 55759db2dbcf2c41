/*
 * period.c
 *		Billing periods: monthly, anchored, computed in UTC.
 *
 * Period k of an anchor starts at anchor + k months, the day clamped to the
 * last day of the month (anchor Jan 31 12:00 gives Feb 28/29 12:00, Mar 31
 * 12:00, Apr 30 12:00, ...).  Every boundary is computed from the anchor, not
 * from the previous boundary, so a clamped February does not shift March.
 *
 * An org may also store its current period (from Stripe, or moved there by
 * rollover): that period is taken exactly, the periods after it start at its
 * end and then follow the anchor, the periods before it end at its start.
 */
#include "tiermeter.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

TM_FUNCTION(tiermeter_period_bounds);

static void
tm_breakdown(TimestampTz t, struct pg_tm *tt, fsec_t *fsec)
{
	if (TIMESTAMP_NOT_FINITE(t) ||
		timestamp2tm(t, NULL, tt, fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: timestamp out of range for a billing period")));
}

static TimestampTz
tm_compose(struct pg_tm *tt, fsec_t fsec)
{
	Timestamp	result;

	if (tm2timestamp(tt, fsec, NULL, &result) != 0 || !IS_VALID_TIMESTAMP(result))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("tiermeter: billing period out of range")));
	return (TimestampTz) result;
}

/* The first instant of the UTC calendar month containing t. */
TimestampTz
tm_month_start_utc(TimestampTz t)
{
	struct pg_tm tt;
	fsec_t		fsec;

	tm_breakdown(t, &tt, &fsec);
	tt.tm_mday = 1;
	tt.tm_hour = 0;
	tt.tm_min = 0;
	tt.tm_sec = 0;
	return tm_compose(&tt, 0);
}

/* anchor + months, in UTC, the day clamped to the month's last day. */
TimestampTz
tm_add_months_utc(TimestampTz anchor, int months)
{
	struct pg_tm tt;
	fsec_t		fsec;
	int			m0;
	int			year;
	int			mon0;

	tm_breakdown(anchor, &tt, &fsec);
	m0 = tt.tm_year * MONTHS_PER_YEAR + (tt.tm_mon - 1) + months;
	/* floor division, for years before 0 */
	year = m0 >= 0 ? m0 / MONTHS_PER_YEAR : -((-m0 + MONTHS_PER_YEAR - 1) / MONTHS_PER_YEAR);
	mon0 = m0 - year * MONTHS_PER_YEAR;
	tt.tm_year = year;
	tt.tm_mon = mon0 + 1;
	if (tt.tm_mday > day_tab[isleap(tt.tm_year)][tt.tm_mon - 1])
		tt.tm_mday = day_tab[isleap(tt.tm_year)][tt.tm_mon - 1];
	return tm_compose(&tt, fsec);
}

/* The period that contains "at". */
TmPeriod
tm_period_containing(TimestampTz anchor, TimestampTz at, bool has_stored,
					 TimestampTz stored_start, TimestampTz stored_end)
{
	TmPeriod	p;
	struct pg_tm a;
	struct pg_tm t;
	fsec_t		fsec;
	int			k;

	if (has_stored && stored_start <= at && at < stored_end)
	{
		p.start = stored_start;
		p.end = stored_end;
		return p;
	}

	tm_breakdown(anchor, &a, &fsec);
	tm_breakdown(at, &t, &fsec);
	k = (t.tm_year - a.tm_year) * MONTHS_PER_YEAR + (t.tm_mon - a.tm_mon);
	while (tm_add_months_utc(anchor, k) > at)
		k--;
	while (tm_add_months_utc(anchor, k + 1) <= at)
		k++;
	p.start = tm_add_months_utc(anchor, k);
	p.end = tm_add_months_utc(anchor, k + 1);

	if (has_stored)
	{
		if (at >= stored_end && p.start < stored_end)
			p.start = stored_end;
		else if (at < stored_start && p.end > stored_start)
			p.end = stored_start;
	}
	return p;
}

/*
 * period_bounds(anchor, at, stored_start, stored_end)
 *		RETURNS (period_start, period_end)
 */
Datum
tiermeter_period_bounds(PG_FUNCTION_ARGS)
{
	static const Oid types[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	bool		has_stored;
	TmPeriod	p;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (PG_ARGISNULL(2) != PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: stored_start and stored_end go together"),
				 errhint("Pass both, or neither.")));
	has_stored = !PG_ARGISNULL(2);
	if (has_stored && PG_GETARG_TIMESTAMPTZ(3) <= PG_GETARG_TIMESTAMPTZ(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: a period must end after it starts")));

	p = tm_period_containing(PG_GETARG_TIMESTAMPTZ(0), PG_GETARG_TIMESTAMPTZ(1),
							 has_stored,
							 has_stored ? PG_GETARG_TIMESTAMPTZ(2) : 0,
							 has_stored ? PG_GETARG_TIMESTAMPTZ(3) : 0);

	/* once per query: rollover calls it for every org */
	tupdesc = tm_result_desc(fcinfo, "period_bounds", types, 2, 2);
	values[0] = TimestampTzGetDatum(p.start);
	values[1] = TimestampTzGetDatum(p.end);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
