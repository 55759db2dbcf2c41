-- cache_stats(): the shared-memory cache's own statistics, and
-- cache_stats_reset() (expected/cache_stats_1.out is the same script without
-- the library preloaded: there is no cache, capacity 0, every count 0).
-- The counts are the cluster's; nothing else runs during this script.
SET timezone = 'UTC';
SELECT tiermeter.cache_stats_reset();
SELECT stats_reset > now() - interval '1 minute' AS reset_just_now,
       capacity = coalesce(current_setting('tiermeter.cache_size', true)::bigint, 0) AS capacity_is_cache_size,
       hits, misses, builds, refreshes, evictions, fallbacks, invalidations
  FROM tiermeter.cache_stats();

-- the org's first record misses and builds its entry; checks then hit
SELECT used FROM tiermeter.record_usage('cs-1', 10);
SELECT hits, misses, builds, refreshes, fallbacks, invalidations FROM tiermeter.cache_stats();
SELECT used FROM tiermeter.check_org_limits('cs-1');
SELECT used FROM tiermeter.check_org_limits('cs-1');
SELECT hits, misses, builds, refreshes, fallbacks, invalidations FROM tiermeter.cache_stats();

-- a grant invalidates the org's config only: the next read refreshes it
-- (no ledger sum, no build) and keeps its usage
SELECT used, quota FROM tiermeter.grant_usage('cs-1', 60);
SELECT used, quota FROM tiermeter.check_org_limits('cs-1');
SELECT hits, misses, builds, refreshes, fallbacks, invalidations FROM tiermeter.cache_stats();

-- a transaction that changed the org answers it from the tables
BEGIN;
SELECT tiermeter.set_org_quota('cs-1', 'conversation_seconds', 100);
SELECT used, quota FROM tiermeter.check_org_limits('cs-1');
COMMIT;
SELECT hits, misses, builds, refreshes, fallbacks, invalidations FROM tiermeter.cache_stats();

-- entries: the cluster's, at most the capacity
SELECT entries >= 1 AS has_entries, entries <= capacity AS within_capacity FROM tiermeter.cache_stats();

-- a reset starts the counts again; the entries stay
SELECT coalesce(stats_reset::text, 'none') AS before_reset FROM tiermeter.cache_stats() \gset
SELECT tiermeter.cache_stats_reset();
SELECT coalesce(stats_reset::text, 'none') <> :'before_reset' AS reset_moved, hits, misses,
       entries >= 1 AS entries_kept
  FROM tiermeter.cache_stats();
