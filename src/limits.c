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

/*
 * The answer of check_org_limits for an org and a feature: of (its strings
 * in cxt) and sums.  Also for the other C functions (touch_session).
 */
void
tm_check_limits(const char *org_id, const char *feature, TmOrgFeature *of,
				TmSums *sums, MemoryContext cxt)
{
	TmOwnerSave save;
	TmCacheKey	key;
	uint32		hash;

	if (tm_cache_enabled() && !tm_cache_bypass(org_id) &&
		tm_cache_key(&key, org_id, feature, &hash))
	{
		if (!tm_cache_get(&key, hash, org_id, feature, of, sums, cxt))
		{
			tm_spi_begin(&save);
			/* a key read once lately is answered without an entry */
			(void) tm_cache_build(&key, hash, org_id, feature, of, sums, cxt,
								  tm_cache_admit(&key, hash));
			tm_spi_end(&save);
		}
	}
	else
	{
		tm_spi_begin(&save);
		tm_lookup(of, org_id, feature, InvalidSnapshot, cxt);
		*sums = tm_sums(of, InvalidSnapshot, true);
		tm_spi_end(&save);
	}
}

Datum
tiermeter_check_org_limits(PG_FUNCTION_ARGS)
{
	char	   *org_id = tm_arg_id(fcinfo, 0, "org_id");
	char	   *feature = tm_arg_id(fcinfo, 1, "feature");
	TmOrgFeature of;
	TmSums		sums;

	tm_check_limits(org_id, feature, &of, &sums, CurrentMemoryContext);
	PG_RETURN_DATUM(tm_status_datum(fcinfo, &of, &sums, TM_REASON_AUTO));
}
