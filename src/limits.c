/*
 * limits.c
 *		check_org_limits(org_id text, feature text) RETURNS limit_status
 *
 * Read-only: it writes nothing, so it works in READ ONLY transactions and on
 * a hot standby.  An unknown org is answered as a new org on the default
 * tier.
 */
#include "tiermeter.h"

PG_FUNCTION_INFO_V1(tiermeter_check_org_limits);

Datum
tiermeter_check_org_limits(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	char	   *feature = tm_arg_id(fcinfo, 1, "feature");
	MemoryContext cxt = CurrentMemoryContext;
	TmOwnerSave save;
	TmOrgFeature of;
	TmSums		sums;

	tm_spi_begin(&save);
	tm_lookup(&of, org_id, feature, true, cxt);
	sums = tm_sums(&of, InvalidSnapshot, true);
	tm_spi_end(&save);

	PG_RETURN_DATUM(tm_status_datum(fcinfo, &of, &sums, TM_REASON_AUTO));
}
