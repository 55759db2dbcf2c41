-- set_org_tier, set_org_quota, grant_usage.
SET timezone = 'UTC';
\set cols 'org_id, tier, feature, allowed, reason, used, quota, remaining, percent_used, warning, unlimited'

-- set_org_tier on an unknown org creates it and writes one tier_changed event
SELECT tiermeter.set_org_tier('a-1', 'basic');
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'a-1';
SELECT org_id, kind, feature, threshold, payload FROM tiermeter.limit_events WHERE org_id = 'a-1' ORDER BY id;
-- the same tier again changes nothing
SELECT tiermeter.set_org_tier('a-1', 'basic');
SELECT count(*) AS events FROM tiermeter.limit_events WHERE org_id = 'a-1';
-- a change is one more event
SELECT tiermeter.set_org_tier('a-1', 'professional');
SELECT payload FROM tiermeter.limit_events WHERE org_id = 'a-1' ORDER BY id;

-- set_org_quota overrides the tier quota for one org and feature
SELECT :cols FROM tiermeter.check_org_limits('a-2', 'reports');
SELECT tiermeter.set_org_quota('a-2', 'reports', 3);
SELECT :cols FROM tiermeter.check_org_limits('a-2', 'reports');
SELECT :cols FROM tiermeter.check_org_limits('a-3', 'reports');
-- NULL is unlimited
SELECT tiermeter.set_org_quota('a-2', 'reports', NULL);
SELECT :cols FROM tiermeter.check_org_limits('a-2', 'reports');
-- 0 takes a feature away
SELECT tiermeter.set_org_quota('a-2', 'conversation_seconds', 0);
SELECT :cols FROM tiermeter.check_org_limits('a-2');
-- the override survives a tier change
SELECT tiermeter.set_org_tier('a-2', 'enterprise');
SELECT :cols FROM tiermeter.check_org_limits('a-2');
SELECT :cols FROM tiermeter.check_org_limits('a-2', 'images');

-- grant_usage adds quota for the current period
SELECT :cols FROM tiermeter.record_usage('a-4', 3600);
SELECT :cols FROM tiermeter.grant_usage('a-4', 600, reason => 'support ticket 42');
SELECT :cols FROM tiermeter.grant_usage('a-4', 300);
SELECT org_id, feature, amount, reason FROM tiermeter.usage_grants WHERE org_id = 'a-4' ORDER BY amount;
-- a grant made in an earlier period does not count now
UPDATE tiermeter.usage_grants SET granted_at = granted_at - interval '2 months'
 WHERE org_id = 'a-4' AND amount = 300;
SELECT :cols FROM tiermeter.check_org_limits('a-4');
-- a grant on an override and on a not-included feature
SELECT tiermeter.set_org_quota('a-4', 'conversation_seconds', 4000);
SELECT quota FROM tiermeter.check_org_limits('a-4');
SELECT :cols FROM tiermeter.grant_usage('a-4', 2, 'reports');
-- grants on unlimited stay unlimited
SELECT tiermeter.set_org_tier('a-5', 'enterprise');
SELECT quota, unlimited FROM tiermeter.grant_usage('a-5', 100, 'conversation_seconds');
SELECT quota, unlimited FROM tiermeter.check_org_limits('a-5');
