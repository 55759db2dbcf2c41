/*
 * tiermeter_bench_noop.c
 *		The floor of make bench's check: a C function with the signature and
 *		result type of check_org_limits that does no work at all.  Built and
 *		installed only by make bench (bench/Makefile), never by the extension.
 */
#include "postgres.h"

#include "fmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(tiermeter_bench_noop);

Datum
tiermeter_bench_noop(PG_FUNCTION_ARGS)
{
	PG_RETURN_NULL();
}
