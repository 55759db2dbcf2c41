-- The seeded catalog, exactly as docs/reference.md gives it.
SELECT tier_id, display_name, rank, price_cents_monthly, max_session_seconds,
       max_active_sessions, is_default
  FROM tiermeter.tiers ORDER BY rank;

SELECT feature, kind, unit FROM tiermeter.features ORDER BY feature;

-- one row per feature, one column per tier; NULL is unlimited
SELECT q.feature,
       max(q.quota) FILTER (WHERE q.tier_id = 'free')         AS free,
       max(q.quota) FILTER (WHERE q.tier_id = 'basic')        AS basic,
       max(q.quota) FILTER (WHERE q.tier_id = 'professional') AS professional,
       max(q.quota) FILTER (WHERE q.tier_id = 'enterprise')   AS enterprise,
       bool_or(q.quota IS NULL) FILTER (WHERE q.tier_id = 'enterprise') AS enterprise_unlimited,
       count(*) AS tiers
  FROM tiermeter.tier_quotas q
 GROUP BY q.feature
 ORDER BY q.feature;

SELECT percent FROM tiermeter.alert_thresholds ORDER BY 1;
SELECT count(*) AS stripe_prices FROM tiermeter.stripe_prices;

-- the catalog's columns are part of the contract
SELECT table_name, string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)
  FROM information_schema.columns
 WHERE table_schema = 'tiermeter'
   AND table_name IN ('tiers', 'features', 'tier_quotas', 'stripe_prices', 'alert_thresholds')
 GROUP BY table_name ORDER BY table_name;

-- exactly one default tier, checked at commit
BEGIN;
UPDATE tiermeter.tiers SET is_default = false WHERE tier_id = 'free';
COMMIT;
SELECT tier_id FROM tiermeter.tiers WHERE is_default;
UPDATE tiermeter.tiers SET is_default = true WHERE tier_id = 'basic';
-- moving the default is one transaction
BEGIN;
UPDATE tiermeter.tiers SET is_default = false WHERE tier_id = 'free';
UPDATE tiermeter.tiers SET is_default = true WHERE tier_id = 'basic';
COMMIT;
SELECT tier_id FROM tiermeter.tiers WHERE is_default;
BEGIN;
UPDATE tiermeter.tiers SET is_default = false WHERE tier_id = 'basic';
UPDATE tiermeter.tiers SET is_default = true WHERE tier_id = 'free';
COMMIT;
SELECT tier_id FROM tiermeter.tiers WHERE is_default;

-- bad config rows are refused
INSERT INTO tiermeter.features VALUES ('x', 'sometimes', 'u', 'bad kind');
INSERT INTO tiermeter.tier_quotas VALUES ('free', 'no_such_feature', 1);
INSERT INTO tiermeter.tier_quotas VALUES ('gold', 'users', 1);
UPDATE tiermeter.tier_quotas SET quota = -1 WHERE tier_id = 'free' AND feature = 'users';

-- a feature with usage cannot be renamed (its usage would be orphaned); one
-- without usage can
SELECT used FROM tiermeter.record_usage('cat-1', 40, 'web_scrapes');
UPDATE tiermeter.features SET feature = 'scrapes' WHERE feature = 'web_scrapes';
SELECT used FROM tiermeter.check_org_limits('cat-1', 'web_scrapes');
INSERT INTO tiermeter.features VALUES ('exports', 'period', 'exports', 'CSV exports');
UPDATE tiermeter.features SET feature = 'csv_exports' WHERE feature = 'exports';
SELECT feature FROM tiermeter.features WHERE feature LIKE '%exports';
DELETE FROM tiermeter.features WHERE feature = 'csv_exports';
