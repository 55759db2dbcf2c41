-- record_usage: always recorded, counted only on commit, idempotent by key,
-- occurred_at rules, org created on first sight.
SET timezone = 'UTC';
\set cols 'org_id, tier, feature, allowed, reason, used, quota, remaining, percent_used, warning, unlimited'

-- first sight creates the org on the default tier, without a tier_changed event
SELECT :cols FROM tiermeter.record_usage('r-1', 60, conversation_id => 'conv-1');
SELECT org_id, tier_id FROM tiermeter.orgs WHERE org_id = 'r-1';
SELECT count(*) AS tier_events FROM tiermeter.limit_events WHERE org_id = 'r-1';
SELECT feature, amount, conversation_id, idempotency_key, occurred_at = recorded_at AS occurred_at_is_now
  FROM tiermeter.usage_log WHERE org_id = 'r-1';

-- rolled back: not counted; committed: counted
BEGIN;
SELECT used FROM tiermeter.record_usage('r-1', 1000);
ROLLBACK;
SELECT used FROM tiermeter.check_org_limits('r-1');
BEGIN;
SELECT used FROM tiermeter.record_usage('r-1', 1000);
SAVEPOINT s;
SELECT used FROM tiermeter.record_usage('r-1', 5);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT used FROM tiermeter.check_org_limits('r-1');

-- an unknown org rolled back is not created either
BEGIN;
SELECT used FROM tiermeter.record_usage('r-ghost', 1);
ROLLBACK;
SELECT count(*) AS ghost_orgs FROM tiermeter.orgs WHERE org_id = 'r-ghost';

-- a repeated (org_id, idempotency_key) is never counted twice and returns
-- the current status
SELECT used FROM tiermeter.record_usage('r-1', 10, idempotency_key => 'evt-1');
SELECT used FROM tiermeter.record_usage('r-1', 10, idempotency_key => 'evt-1');
-- the same key with another amount or feature names another call: an error
-- with the first call's values, and nothing recorded
SELECT used FROM tiermeter.record_usage('r-1', 99, idempotency_key => 'evt-1');
SELECT used FROM tiermeter.record_usage('r-1', 1, 'images', idempotency_key => 'evt-1');
SELECT used FROM tiermeter.consume('r-1', 11, idempotency_key => 'evt-1');
SELECT used FROM tiermeter.consume('r-1', 10, idempotency_key => 'evt-1');
SELECT count(*) AS rows_with_key FROM tiermeter.usage_log WHERE org_id = 'r-1' AND idempotency_key = 'evt-1';
-- however far apart: a key from last year still counts once
SELECT used FROM tiermeter.record_usage('r-1', 3, idempotency_key => 'evt-old', occurred_at => now() - interval '1 year');
SELECT used FROM tiermeter.record_usage('r-1', 3, idempotency_key => 'evt-old');
SELECT count(*) AS rows_with_old_key FROM tiermeter.usage_log WHERE org_id = 'r-1' AND idempotency_key = 'evt-old';
-- the same key of another org is another event
SELECT used FROM tiermeter.record_usage('r-2', 10, idempotency_key => 'evt-1');
-- a key rolled back can be used again
BEGIN;
SELECT used FROM tiermeter.record_usage('r-2', 5, idempotency_key => 'evt-2');
ROLLBACK;
SELECT used FROM tiermeter.record_usage('r-2', 5, idempotency_key => 'evt-2');

-- occurred_at: up to 5 minutes ahead is fine, more is an error, past is fine
-- (which period each lands in depends on the date the test runs, so count rows)
SELECT org_id FROM tiermeter.record_usage('r-3', 1, occurred_at => now() + interval '4 minutes 59 seconds');
SELECT org_id FROM tiermeter.record_usage('r-3', 1, occurred_at => now() + interval '5 minutes 1 second');
SELECT org_id FROM tiermeter.record_usage('r-3', 1, occurred_at => 'infinity');
SELECT org_id FROM tiermeter.record_usage('r-3', 1, occurred_at => '-infinity');
SELECT org_id FROM tiermeter.record_usage('r-3', 1, occurred_at => now() - interval '10 minutes');
SELECT org_id FROM tiermeter.record_usage('r-3', 1, occurred_at => now() - interval '3 months');
SELECT count(*) AS accepted FROM tiermeter.usage_log WHERE org_id = 'r-3';
DELETE FROM tiermeter.usage_log WHERE org_id = 'r-3';

-- an amount of 0 is accepted; 10^12 is the largest amount
SELECT used FROM tiermeter.record_usage('r-3', 0);
SELECT used, quota, allowed FROM tiermeter.record_usage('r-3', 1000000000000);
SELECT used, quota, allowed FROM tiermeter.record_usage('r-3', 2);

-- every other metered feature records the same way
SELECT feature, used, quota, allowed, reason FROM tiermeter.record_usage('r-4', 1, 'web_scrapes');
SELECT tiermeter.set_org_tier('r-4', 'basic');
SELECT feature, used, quota, allowed, reason FROM tiermeter.record_usage('r-4', 50, 'web_scrapes');
SELECT feature, used, quota, allowed, reason FROM tiermeter.record_usage('r-4', 7, 'images');

-- a replayed negative gauge delta returns the current status, even once the
-- level is 0 (the key is checked before the floor)
SELECT used FROM tiermeter.record_usage('g-replay', 1, 'users');
SELECT used FROM tiermeter.record_usage('g-replay', -1, 'users', idempotency_key => 'release-1');
SELECT used FROM tiermeter.record_usage('g-replay', -1, 'users', idempotency_key => 'release-1');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'g-replay';
