-- Writes that bypass the functions (a backfill, COPY, pg_restore
-- --data-only, logical replication) are seen by the next call, whether or
-- not the library is preloaded: its cache learns of them at commit.
SET timezone = 'UTC';

-- usage_log: an INSERT by the owner counts at once
SELECT used, allowed FROM tiermeter.record_usage('fw-1', 100);
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('fw-1', 'conversation_seconds', 8000, now());
SELECT used, allowed, reason FROM tiermeter.check_org_limits('fw-1');
-- and consume does not let the org pass its quota
SELECT used, allowed, reason FROM tiermeter.consume('fw-1', 1);
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'fw-1';

-- COPY, several orgs in one statement
SELECT used FROM tiermeter.check_org_limits('fw-2');
SELECT used FROM tiermeter.check_org_limits('fw-3', 'reports');
COPY tiermeter.usage_log (org_id, feature, amount, occurred_at) FROM PROGRAM $$
	now=$(date -u '+%Y-%m-%d %H:%M:%S+00')
	printf 'fw-2\tconversation_seconds\t1200\t%s\nfw-2\tconversation_seconds\t300\t%s\nfw-3\treports\t2\t%s\n' "$now" "$now" "$now"
$$;
SELECT used FROM tiermeter.check_org_limits('fw-2');
SELECT used FROM tiermeter.check_org_limits('fw-3', 'reports');

-- orgs: an org inserted by the owner, after the cache answered for it as
-- unknown, has the tier it was inserted with
SELECT tier, quota FROM tiermeter.check_org_limits('fw-4');
INSERT INTO tiermeter.orgs (org_id, tier_id, billing_anchor, period_start, period_end)
VALUES ('fw-4', 'enterprise', date_trunc('month', now(), 'UTC'), date_trunc('month', now(), 'UTC'),
        date_trunc('month', now(), 'UTC') + interval '1 month');
SELECT tier, quota, unlimited FROM tiermeter.check_org_limits('fw-4');

-- inside the transaction that writes, its own rows count; after a rollback,
-- they never did
BEGIN;
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('fw-5', 'conversation_seconds', 50, now());
SELECT used FROM tiermeter.check_org_limits('fw-5');
ROLLBACK;
SELECT used FROM tiermeter.check_org_limits('fw-5');

-- the functions' own writes go on as before
SELECT used FROM tiermeter.record_usage('fw-5', 7);
SELECT used FROM tiermeter.check_org_limits('fw-5');
