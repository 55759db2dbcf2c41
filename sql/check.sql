-- check_org_limits: read-only, answers unknown orgs, and the limit_status
-- rules of docs/reference.md.
SET timezone = 'UTC';
\set cols 'org_id, tier, feature, allowed, reason, used, quota, remaining, percent_used, warning, unlimited'

-- an unknown org is answered as a new org on the default tier; nothing is written
SELECT :cols FROM tiermeter.check_org_limits('c-unknown');
SELECT count(*) AS orgs_written FROM tiermeter.orgs WHERE org_id = 'c-unknown';

-- it works inside a READ ONLY transaction, where record_usage cannot
BEGIN TRANSACTION READ ONLY;
SELECT :cols FROM tiermeter.check_org_limits('c-unknown', 'reports');
SELECT :cols FROM tiermeter.record_usage('c-unknown', 1);
ROLLBACK;

-- the period reported is the one containing now()
SELECT period_start <= now() AND now() < period_end AS contains_now
  FROM tiermeter.check_org_limits('c-unknown');

-- a feature the tier does not include: not_included, 100 %, warning
SELECT :cols FROM tiermeter.check_org_limits('c-unknown', 'reports');
SELECT :cols FROM tiermeter.check_org_limits('c-unknown', 'api_access');

-- percent_used rounds to 2 places and warns from the lowest threshold below 100
SELECT used, percent_used, warning FROM tiermeter.record_usage('c-pct', 1200);
SELECT used, percent_used, warning FROM tiermeter.record_usage('c-pct', 1);
SELECT used, percent_used, warning FROM tiermeter.record_usage('c-pct', 1199);
SELECT used, percent_used, warning FROM tiermeter.record_usage('c-pct', 479);
SELECT used, percent_used, warning FROM tiermeter.record_usage('c-pct', 1);
SELECT used, percent_used, warning FROM tiermeter.record_usage('c-pct', 1);
-- at the quota: not allowed, remaining 0
SELECT :cols FROM tiermeter.record_usage('c-pct', 719);
-- past the quota: still recorded, percent not capped, remaining not negative
SELECT :cols FROM tiermeter.record_usage('c-pct', 1800);
SELECT :cols FROM tiermeter.check_org_limits('c-pct');

-- unlimited (NULL) quotas
SELECT tiermeter.set_org_tier('c-ent', 'enterprise');
SELECT :cols FROM tiermeter.record_usage('c-ent', 1000000);
SELECT :cols FROM tiermeter.check_org_limits('c-ent', 'reports');
SELECT :cols FROM tiermeter.check_org_limits('c-ent', 'api_access');

-- gauges: levels that take negative deltas, never reset, never below zero
SELECT :cols FROM tiermeter.record_usage('c-gauge', 1, 'users');
SELECT :cols FROM tiermeter.record_usage('c-gauge', 1, 'users');
SELECT :cols FROM tiermeter.record_usage('c-gauge', -1, 'users');
SELECT :cols FROM tiermeter.record_usage('c-gauge', -2, 'users');
SELECT :cols FROM tiermeter.check_org_limits('c-gauge', 'users');
-- a gauge counts usage of any date, even before the current period
SELECT used FROM tiermeter.record_usage('c-gauge', 3, 'documents', occurred_at => now() - interval '400 days');
SELECT used FROM tiermeter.record_usage('c-gauge', 1, 'documents');

-- tier changes keep usage: up raises the quota at once, down lowers it at once
SELECT allowed, reason, used, quota FROM tiermeter.record_usage('c-tier', 3600);
SELECT tiermeter.set_org_tier('c-tier', 'basic');
SELECT :cols FROM tiermeter.check_org_limits('c-tier');
SELECT tiermeter.set_org_tier('c-tier', 'free');
SELECT :cols FROM tiermeter.check_org_limits('c-tier');
SELECT tiermeter.set_org_tier('c-tier', 'professional');
SELECT :cols FROM tiermeter.check_org_limits('c-tier');

-- a feature missing from tier_quotas is not included (quota 0)
INSERT INTO tiermeter.features VALUES ('voice_minutes', 'period', 'min', 'test feature');
SELECT :cols FROM tiermeter.check_org_limits('c-tier', 'voice_minutes');
DELETE FROM tiermeter.features WHERE feature = 'voice_minutes';

-- the result's descriptor is kept per backend while the type is unchanged:
-- a column added to limit_status is seen at the next call (an error: the
-- library builds the columns it knows), and its removal too
SELECT used FROM tiermeter.check_org_limits('c-tier');
BEGIN;
ALTER TYPE tiermeter.limit_status ADD ATTRIBUTE extra integer;
SELECT used FROM tiermeter.check_org_limits('c-tier');
ROLLBACK;
SELECT used FROM tiermeter.check_org_limits('c-tier');
SELECT (tiermeter.record_usage('c-tier', 1)).used;
-- a column retyped or dropped by hand: an error, not a value of another shape
BEGIN;
ALTER TYPE tiermeter.limit_status ALTER ATTRIBUTE used TYPE text;
SELECT used FROM tiermeter.check_org_limits('c-tier');
ROLLBACK;
BEGIN;
ALTER TYPE tiermeter.limit_status DROP ATTRIBUTE reserved;
SELECT used FROM tiermeter.check_org_limits('c-tier');
ROLLBACK;
SELECT used FROM tiermeter.check_org_limits('c-tier');
