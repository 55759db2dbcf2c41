-- Sums of usage saturate at 9223372036854775807 (the end of bigint): never a
-- wrapped, negative used, and never an error, on the cache and on the tables.
SET timezone = 'UTC';
SELECT tiermeter.set_org_tier('big-1', 'enterprise');
-- 10^12 short of the end of bigint, written around the functions
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'big-1', 'conversation_seconds', a, now()
  FROM (SELECT 1000000000000000000 FROM generate_series(1, 9)
        UNION ALL SELECT 223371036854775808) AS r(a);
SELECT used, allowed, unlimited FROM tiermeter.check_org_limits('big-1');
-- one more 10^12 reaches the end, the next stays there
SELECT used, allowed FROM tiermeter.record_usage('big-1', 1000000000000);
SELECT used, allowed FROM tiermeter.record_usage('big-1', 1000000000000);
SELECT used FROM tiermeter.check_org_limits('big-1');
-- in one transaction, several calls
BEGIN;
SELECT used FROM tiermeter.record_usage('big-1', 1000000000000);
SELECT used FROM tiermeter.record_usage('big-1', 1000000000000);
SELECT used FROM tiermeter.check_org_limits('big-1');
COMMIT;
-- after the entry is rebuilt from the ledger (a quota change invalidates it)
SELECT tiermeter.set_org_quota('big-1', 'reports', 1);
SELECT used, allowed FROM tiermeter.check_org_limits('big-1');
-- the ledger itself keeps every amount
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'big-1';
-- on a limited tier: refused, remaining 0, percent_used as large as it gets
SELECT tiermeter.set_org_tier('big-1', 'free');
SELECT used, quota, remaining, allowed, reason, percent_used, warning
  FROM tiermeter.check_org_limits('big-1');
SELECT used, allowed, reason FROM tiermeter.consume('big-1', 1);
-- a sum at the end of bigint may stand for a larger one: nothing is taken
-- from it.  A gauge at 1.8 * 10^19 (its ledger rows written around the
-- functions): a delta of -10^12 leaves it far above the end, so it still
-- reads the end, in the call, in its transaction and after
SELECT tiermeter.set_org_tier('big-2', 'enterprise');
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'big-2', 'documents', 9000000000000000000, now() FROM generate_series(1, 2);
SELECT used FROM tiermeter.check_org_limits('big-2', 'documents');
SELECT used FROM tiermeter.record_usage('big-2', -1000000000000, 'documents');
SELECT used FROM tiermeter.check_org_limits('big-2', 'documents');
BEGIN;
SELECT used FROM tiermeter.record_usage('big-2', -1000000000000, 'documents');
SELECT used FROM tiermeter.check_org_limits('big-2', 'documents');
COMMIT;
SELECT used FROM tiermeter.check_org_limits('big-2', 'documents');
-- 5 * 10^11 short of the end: 10^12 more reaches it, and 10^12 less is
-- 5 * 10^11 short again (not 10^12: the end stood for more)
SELECT tiermeter.set_org_tier('big-3', 'enterprise');
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'big-3', 'documents', a, now()
  FROM (VALUES (9000000000000000000), (223371536854775807)) r(a);
SELECT used FROM tiermeter.check_org_limits('big-3', 'documents');
SELECT used FROM tiermeter.record_usage('big-3', 1000000000000, 'documents');
SELECT used FROM tiermeter.check_org_limits('big-3', 'documents');
SELECT used FROM tiermeter.record_usage('big-3', -1000000000000, 'documents');
SELECT used FROM tiermeter.check_org_limits('big-3', 'documents');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'big-3';
