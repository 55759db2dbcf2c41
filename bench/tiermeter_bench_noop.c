/*
 * tiermeter_bench_noop.c
 *		The floor of make bench's check: a C function with the signature and
 *		result type of check_org_limits that does no work at all.  Built and
 *		installed only by make bench (bench/Makefile), never by the extension.
 *
 *		tiermeter_bench_constant returns one fixed limit_status value, with no
 *		lookup: what a check costs beyond the no-op just to form its result
 *		and send it (the client reads 14 columns as text).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(tiermeter_bench_noop);
PG_FUNCTION_INFO_V1(tiermeter_bench_constant);

Datum
tiermeter_bench_noop(PG_FUNCTION_ARGS)
{
	PG_RETURN_NULL();
}

Datum
tiermeter_bench_constant(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[14];
	bool		nulls[14] = {false};
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE ||
		tupdesc->natts != 14)
		elog(ERROR, "limit_status expected");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = PG_GETARG_DATUM(0);		/* org_id */
	values[1] = CStringGetTextDatum("free");
	values[2] = PG_GETARG_DATUM(1);		/* feature */
	values[3] = BoolGetDatum(true);
	nulls[4] = true;					/* reason */
	values[5] = Int64GetDatum(10);
	values[6] = Int64GetDatum(3600);
	values[7] = Int64GetDatum(3590);
	values[8] = NumericGetDatum(int64_div_fast_to_numeric(28, 2));
	values[9] = BoolGetDatum(false);
	values[10] = BoolGetDatum(false);
	values[11] = TimestampTzGetDatum(now - USECS_PER_DAY);
	values[12] = TimestampTzGetDatum(now + USECS_PER_DAY);
	values[13] = Int64GetDatum(0);		/* reserved */
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
