-- consume: check-and-record; records only if used + amount <= quota.
SET timezone = 'UTC';
\set cols 'org_id, tier, feature, allowed, reason, used, quota, remaining, percent_used, warning, unlimited'

SELECT :cols FROM tiermeter.consume('k-1', 3000);
-- exactly up to the quota is allowed
SELECT :cols FROM tiermeter.consume('k-1', 600);
-- one more second is refused and records nothing
SELECT :cols FROM tiermeter.consume('k-1', 1);
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'k-1';

-- a refusal below the quota: the amount would pass it
SELECT :cols FROM tiermeter.consume('k-2', 3000);
SELECT :cols FROM tiermeter.consume('k-2', 601);
SELECT :cols FROM tiermeter.consume('k-2', 600);

-- a feature the tier does not include: not_included
SELECT :cols FROM tiermeter.consume('k-3', 1, 'reports');
SELECT count(*) AS rows FROM tiermeter.usage_log WHERE org_id = 'k-3';
-- but the org was seen, so it exists now
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'k-3';

-- unlimited: always recorded
SELECT tiermeter.set_org_tier('k-4', 'enterprise');
SELECT :cols FROM tiermeter.consume('k-4', 999999);

-- a replayed idempotency key is not recorded again; it says allowed, as the
-- first call was recorded
SELECT allowed, reason, used FROM tiermeter.consume('k-5', 100, idempotency_key => 'c1');
SELECT allowed, reason, used FROM tiermeter.consume('k-5', 100, idempotency_key => 'c1');
-- a key used by record_usage is the same event
SELECT allowed, used FROM tiermeter.record_usage('k-5', 7, idempotency_key => 'c2');
SELECT allowed, used FROM tiermeter.consume('k-5', 7, idempotency_key => 'c2');
-- a refused key is not stored: a retry is judged afresh
SELECT allowed, reason, used FROM tiermeter.consume('k-5', 5000, idempotency_key => 'c3');
SELECT quota FROM tiermeter.grant_usage('k-5', 2000);
SELECT allowed, reason, used, quota FROM tiermeter.consume('k-5', 5000, idempotency_key => 'c3');
SELECT count(*) AS key_rows FROM tiermeter.usage_log WHERE org_id = 'k-5' AND idempotency_key IS NOT NULL;

-- rolled back: not counted
BEGIN;
SELECT allowed, used FROM tiermeter.consume('k-6', 3600);
ROLLBACK;
SELECT allowed, used FROM tiermeter.consume('k-6', 3600);

-- within one transaction, earlier consumes count
BEGIN;
SELECT allowed, used FROM tiermeter.consume('k-7', 2000);
SELECT allowed, used FROM tiermeter.consume('k-7', 2000);
SELECT allowed, used FROM tiermeter.consume('k-7', 1600);
COMMIT;

-- and so under REPEATABLE READ, where the latest committed usage still counts
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT allowed, used FROM tiermeter.consume('k-7', 1);
COMMIT;

-- gauges: a seat is added only while under the quota; releasing is allowed
SELECT allowed, reason, used, quota FROM tiermeter.consume('k-8', 1, 'users');
SELECT allowed, reason, used, quota FROM tiermeter.consume('k-8', 1, 'users');
SELECT allowed, reason, used, quota FROM tiermeter.consume('k-8', -1, 'users');
SELECT allowed, reason, used, quota FROM tiermeter.consume('k-8', -1, 'users');
