/*
 * limits.c
 *		check_org_limits(org_id text, feature text) RETURNS limit_status
 *
 * Read-only: it writes nothing, so it works in READ ONLY transactions and on
 * a hot standby.  An unknown org is answered as a new org on the default
 * tier.  With the library preloaded it answers from the shared-memory cache
 * without touching a table; otherwise, in recovery, or after this
 * transaction changed the org's config, from the tables.
 */
#include "tiermeter.h"

TM_FUNCTION(tiermeter_check_org_limits);

Datum
tiermeter_check_org_limits(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	char	   *feature = tm_arg_id(fcinfo, 1, "feature");
	MemoryContext cxt = CurrentMemoryContext;
	TmOwnerSave save;
	TmOrgFeature of;
	TmSums		sums;
	TmCacheKey	key;
	uint32		hash;

	if (tm_cache_enabled() && !tm_cache_bypass(org_id) &&
		tm_cache_key(&key, org_id, feature, &hash))
	{
		if (!tm_cache_get(&key, hash, org_id, feature, &of, &sums, cxt))
		{
			tm_spi_begin(&save);
			/* a key read once lately is answered without an entry */
			(void) tm_cache_build(&key, hash, org_id, feature, &of, &sums, cxt,
								  tm_cache_admit(&key, hash));
			tm_spi_end(&save);
		}
	}
	else
	{
		tm_spi_begin(&save);
		tm_lookup(&of, org_id, feature, InvalidSnapshot, cxt);
		sums = tm_sums(&of, InvalidSnapshot, true);
		tm_spi_end(&save);
	}

	PG_RETURN_DATUM(tm_status_datum(fcinfo, &of, &sums, TM_REASON_AUTO));
}
