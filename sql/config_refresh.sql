-- A change of quota, tier, grant or threshold does not re-sum the ledger:
-- with the shared-memory cache, the entry keeps its used (which commits keep
-- exact) and reads its config again; a change that can move usage (the
-- ledger, a feature, an org's period) rebuilds it from the ledger.
--
-- The probe: a ledger row written with the invalidation triggers disabled
-- is one the cache does not know of.  With the cache, a config change leaves
-- it unseen (used is kept, not re-summed) until a ledger change rebuilds the
-- entry; without the cache every answer is the ledger's (the other output).
SET timezone = 'UTC';
SELECT used, quota FROM tiermeter.record_usage('cr-1', 100);
ALTER TABLE tiermeter.usage_log DISABLE TRIGGER usage_log_insert_invalidate;
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('cr-1', 'conversation_seconds', 1000, now());
ALTER TABLE tiermeter.usage_log ENABLE ALWAYS TRIGGER usage_log_insert_invalidate;

-- config changes: the quota, tier, grants and thresholds follow at once
SELECT tiermeter.set_org_quota('cr-1', 'conversation_seconds', 5000);
SELECT used, quota FROM tiermeter.check_org_limits('cr-1');
SELECT tiermeter.set_org_tier('cr-1', 'basic');
SELECT tiermeter.set_org_quota('cr-1', 'conversation_seconds', NULL);
SELECT tier, used, quota, unlimited FROM tiermeter.check_org_limits('cr-1');
DELETE FROM tiermeter.org_quotas WHERE org_id = 'cr-1';
SELECT tier, used, quota FROM tiermeter.check_org_limits('cr-1');
SELECT quota FROM tiermeter.grant_usage('cr-1', 500);
UPDATE tiermeter.tier_quotas SET quota = 20000 WHERE tier_id = 'basic' AND feature = 'conversation_seconds';
SELECT used, quota FROM tiermeter.check_org_limits('cr-1');
INSERT INTO tiermeter.alert_thresholds VALUES (1);
SELECT used, warning FROM tiermeter.check_org_limits('cr-1');
DELETE FROM tiermeter.alert_thresholds WHERE percent = 1;
UPDATE tiermeter.tier_quotas SET quota = 18000 WHERE tier_id = 'basic' AND feature = 'conversation_seconds';

-- usage recorded meanwhile is counted, through the kept used
SELECT used FROM tiermeter.record_usage('cr-1', 7);
SELECT used, allowed FROM tiermeter.consume('cr-1', 3);

-- a change of the ledger rebuilds the entry: now it is the ledger's
DELETE FROM tiermeter.usage_log WHERE org_id = 'cr-1' AND amount = 3;
SELECT used, quota FROM tiermeter.check_org_limits('cr-1');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'cr-1';

-- so does a change of the org's period (a new anchor)
SELECT used FROM tiermeter.record_usage('cr-2', 10);
ALTER TABLE tiermeter.usage_log DISABLE TRIGGER usage_log_insert_invalidate;
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('cr-2', 'conversation_seconds', 20, now());
ALTER TABLE tiermeter.usage_log ENABLE ALWAYS TRIGGER usage_log_insert_invalidate;
UPDATE tiermeter.orgs SET billing_anchor = billing_anchor - interval '1 month' WHERE org_id = 'cr-2';
SELECT used FROM tiermeter.check_org_limits('cr-2');

-- a transaction that changes an org's config and then records for it: its
-- usage goes through the tables, and its commit has the org rebuilt from the
-- ledger, so nothing it recorded is lost and consume stays within the quota
SELECT used FROM tiermeter.record_usage('cr-3', 10);
BEGIN;
SELECT tiermeter.set_org_quota('cr-3', 'conversation_seconds', 100);
SELECT used FROM tiermeter.record_usage('cr-3', 40);
SELECT used, allowed FROM tiermeter.consume('cr-3', 30);
COMMIT;
SELECT used FROM tiermeter.check_org_limits('cr-3');
SELECT allowed, used FROM tiermeter.consume('cr-3', 80);
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'cr-3';
-- the same when the change is to every org's config
SELECT used FROM tiermeter.record_usage('cr-4', 5);
BEGIN;
UPDATE tiermeter.tier_quotas SET quota = quota WHERE tier_id = 'free' AND feature = 'conversation_seconds';
SELECT used FROM tiermeter.record_usage('cr-4', 7);
COMMIT;
SELECT used FROM tiermeter.check_org_limits('cr-4');
