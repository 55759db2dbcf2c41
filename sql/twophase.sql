-- Two-phase commit: a prepared transaction's usage, reservations, config
-- changes and limit events count from COMMIT PREPARED on, whichever
-- session runs it; ROLLBACK PREPARED leaves nothing.  The same output with
-- and without the library preloaded (the cluster needs
-- max_prepared_transactions > 0).  A restart with a transaction still
-- prepared, and NOTIFY: test/t/016_twophase.pl; consumers of one org from
-- several sessions: test/specs/twophase_consume.spec.
SET timezone = 'UTC';

-- usage: not counted while prepared, counted from COMMIT PREPARED
SELECT used FROM tiermeter.record_usage('tp-1', 100);
BEGIN;
SELECT used FROM tiermeter.record_usage('tp-1', 1000, conversation_id => 'c1');
PREPARE TRANSACTION 'tp-a';
SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'tp-%';
SELECT used FROM tiermeter.check_org_limits('tp-1');
-- other transactions record meanwhile
SELECT used FROM tiermeter.record_usage('tp-1', 10);
COMMIT PREPARED 'tp-a';
SELECT used FROM tiermeter.check_org_limits('tp-1');
SELECT used FROM tiermeter.check_org_limits('tp-1');
SELECT tiermeter.usage_stats('tp-1')->'usage'->'conversations_count' AS conversations;

-- ROLLBACK PREPARED: nothing counts
BEGIN;
SELECT used FROM tiermeter.record_usage('tp-1', 500);
PREPARE TRANSACTION 'tp-b';
ROLLBACK PREPARED 'tp-b';
SELECT used FROM tiermeter.check_org_limits('tp-1');

-- an org created by a prepared transaction exists from COMMIT PREPARED on
BEGIN;
SELECT used FROM tiermeter.record_usage('tp-2', 7);
PREPARE TRANSACTION 'tp-c';
SELECT count(*) AS orgs FROM tiermeter.orgs WHERE org_id = 'tp-2';
SELECT used FROM tiermeter.check_org_limits('tp-2');
COMMIT PREPARED 'tp-c';
SELECT used FROM tiermeter.check_org_limits('tp-2');

-- consume: a prepared transaction keeps what it consumed until it is
-- resolved; another consume of the org waits for that (lock_timeout shows
-- the wait), then counts it
SELECT used FROM tiermeter.record_usage('tp-3', 3000);
BEGIN;
SELECT allowed, used FROM tiermeter.consume('tp-3', 500);
PREPARE TRANSACTION 'tp-d';
SET lock_timeout = '100ms';
\set VERBOSITY terse
SELECT allowed, used FROM tiermeter.consume('tp-3', 100);
\set VERBOSITY default
RESET lock_timeout;
COMMIT PREPARED 'tp-d';
SELECT allowed, reason, used FROM tiermeter.consume('tp-3', 101);
SELECT allowed, reason, used FROM tiermeter.consume('tp-3', 100);
-- released by ROLLBACK PREPARED
BEGIN;
SELECT allowed, used FROM tiermeter.consume('tp-2', 3593);
PREPARE TRANSACTION 'tp-e';
ROLLBACK PREPARED 'tp-e';
SELECT allowed, used FROM tiermeter.consume('tp-2', 3593);

-- config changes take effect at COMMIT PREPARED, for every org
BEGIN;
SELECT tiermeter.set_org_quota('tp-1', 'conversation_seconds', 5000);
UPDATE tiermeter.tier_quotas SET quota = 4000
 WHERE tier_id = 'free' AND feature = 'conversation_seconds';
PREPARE TRANSACTION 'tp-f';
SELECT org_id, quota FROM tiermeter.check_org_limits('tp-1')
UNION ALL SELECT org_id, quota FROM tiermeter.check_org_limits('tp-3');
COMMIT PREPARED 'tp-f';
SELECT org_id, quota FROM tiermeter.check_org_limits('tp-1')
UNION ALL SELECT org_id, quota FROM tiermeter.check_org_limits('tp-3');
UPDATE tiermeter.tier_quotas SET quota = 3600
 WHERE tier_id = 'free' AND feature = 'conversation_seconds';

-- limit events: a transaction that writes one can be prepared (it cannot
-- NOTIFY: COMMIT PREPARED announces them); those of a rolled-back
-- savepoint are not written
BEGIN;
SAVEPOINT s;
SELECT used FROM tiermeter.record_usage('tp-4', 3600);
ROLLBACK TO SAVEPOINT s;
SELECT used FROM tiermeter.record_usage('tp-4', 2900);
PREPARE TRANSACTION 'tp-g';
SELECT count(*) AS events FROM tiermeter.limit_events WHERE org_id = 'tp-4';
COMMIT PREPARED 'tp-g';
SELECT kind, feature, threshold FROM tiermeter.limit_events WHERE org_id = 'tp-4';
SELECT count(*) AS unannounced FROM tiermeter._unannounced;
-- a tier change through a prepared transaction
BEGIN;
SELECT tiermeter.set_org_tier('tp-4', 'basic');
PREPARE TRANSACTION 'tp-h';
SELECT tier, quota FROM tiermeter.check_org_limits('tp-4');
COMMIT PREPARED 'tp-h';
SELECT tier, quota FROM tiermeter.check_org_limits('tp-4');
SELECT kind FROM tiermeter.limit_events WHERE org_id = 'tp-4' ORDER BY id;

-- a session begun by a prepared transaction is active from COMMIT PREPARED
SELECT used FROM tiermeter.record_usage('tp-5', 1);
BEGIN;
SELECT allowed, active FROM tiermeter.begin_session('tp-5', 'conv');
PREPARE TRANSACTION 'tp-i';
-- (it holds the org's admission lock until then)
SET lock_timeout = '100ms';
\set VERBOSITY terse
SELECT allowed, reason FROM tiermeter.begin_session('tp-5', 'other');
\set VERBOSITY default
RESET lock_timeout;
COMMIT PREPARED 'tp-i';
SELECT allowed, reason FROM tiermeter.begin_session('tp-5', 'other');
SELECT active, active_sessions FROM tiermeter.check_session_limits('tp-5', 'conv');

SELECT count(*) AS still_prepared FROM pg_prepared_xacts;
