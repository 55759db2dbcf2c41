-- The shared-memory cache (with shared_preload_libraries; expected/cache_1.out
-- is the same script on the table path).  Every answer must be the one the
-- tables give, whatever happened in between.
SET timezone = 'UTC';

-- with the library preloaded, a warm check reads no table
SELECT used FROM tiermeter.record_usage('m-1', 100);
SELECT used FROM tiermeter.check_org_limits('m-1');
SELECT pg_stat_force_next_flush();
SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS scans FROM pg_stat_user_tables
 WHERE relid = 'tiermeter.usage_log'::regclass \gset before_
SELECT used FROM tiermeter.check_org_limits('m-1');
SELECT used FROM tiermeter.check_org_limits('m-1');
SELECT used FROM tiermeter.check_org_limits('m-1');
SELECT pg_stat_force_next_flush();
SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) - :before_scans AS ledger_scans_for_3_checks
  FROM pg_stat_user_tables WHERE relid = 'tiermeter.usage_log'::regclass;

-- a transaction sees its own usage; others see it once committed
BEGIN;
SELECT used FROM tiermeter.record_usage('m-1', 10);
SELECT used FROM tiermeter.check_org_limits('m-1');
ROLLBACK;
SELECT used FROM tiermeter.check_org_limits('m-1');

-- savepoints: what a rolled-back subtransaction recorded is gone
BEGIN;
SELECT used FROM tiermeter.record_usage('m-2', 100);
SAVEPOINT a;
SELECT used FROM tiermeter.record_usage('m-2', 50);
SAVEPOINT b;
SELECT used FROM tiermeter.record_usage('m-2', 7);
RELEASE SAVEPOINT b;
SELECT used FROM tiermeter.check_org_limits('m-2');
ROLLBACK TO SAVEPOINT a;
SELECT used FROM tiermeter.check_org_limits('m-2');
SELECT used FROM tiermeter.record_usage('m-2', 1);
COMMIT;
SELECT used FROM tiermeter.check_org_limits('m-2');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'm-2';

-- a reservation rolled back with its savepoint is free again
BEGIN;
SELECT allowed, used FROM tiermeter.consume('m-3', 3000);
SAVEPOINT a;
SELECT allowed, used FROM tiermeter.consume('m-3', 600);
SELECT allowed, used FROM tiermeter.consume('m-3', 1);
ROLLBACK TO SAVEPOINT a;
SELECT allowed, used FROM tiermeter.consume('m-3', 600);
COMMIT;
SELECT allowed, used FROM tiermeter.consume('m-3', 1);
SELECT used FROM tiermeter.check_org_limits('m-3');

-- an error inside a PL/pgSQL exception block is a subtransaction too
DO $$
BEGIN
	PERFORM tiermeter.record_usage('m-4', 5);
	BEGIN
		PERFORM tiermeter.record_usage('m-4', 1000);
		PERFORM tiermeter.record_usage('m-4', -1);	-- fails: rolls back the 1000
	EXCEPTION WHEN invalid_parameter_value THEN
		NULL;
	END;
END $$;
SELECT used FROM tiermeter.check_org_limits('m-4');

-- this transaction's own config change is seen at once, by this
-- transaction only, and by everyone after commit
SELECT used FROM tiermeter.record_usage('m-5', 4000);
BEGIN;
SELECT tiermeter.set_org_tier('m-5', 'basic');
SELECT tier, allowed, used, quota FROM tiermeter.check_org_limits('m-5');
SELECT tier, used FROM tiermeter.record_usage('m-5', 1);
ROLLBACK;
SELECT tier, allowed, used, quota FROM tiermeter.check_org_limits('m-5');
SELECT tiermeter.set_org_tier('m-5', 'basic');
SELECT tier, allowed, used, quota FROM tiermeter.check_org_limits('m-5');

-- edits made directly to the tables are seen on the next call
UPDATE tiermeter.tier_quotas SET quota = 20000 WHERE tier_id = 'basic' AND feature = 'conversation_seconds';
SELECT quota FROM tiermeter.check_org_limits('m-5');
UPDATE tiermeter.tier_quotas SET quota = 18000 WHERE tier_id = 'basic' AND feature = 'conversation_seconds';
SELECT quota FROM tiermeter.check_org_limits('m-5');
DELETE FROM tiermeter.usage_log WHERE org_id = 'm-5' AND amount = 4000;
SELECT used FROM tiermeter.check_org_limits('m-5');
INSERT INTO tiermeter.usage_grants (org_id, feature, amount) VALUES ('m-5', 'conversation_seconds', 11);
SELECT quota FROM tiermeter.check_org_limits('m-5');
UPDATE tiermeter.orgs SET tier_id = 'free' WHERE org_id = 'm-5';
SELECT tier, quota FROM tiermeter.check_org_limits('m-5');
TRUNCATE tiermeter.usage_grants;
SELECT quota FROM tiermeter.check_org_limits('m-5');

-- an unknown org asked about, then created by another call: the same answer
SELECT tier, used, quota FROM tiermeter.check_org_limits('m-6');
SELECT tier, used, quota FROM tiermeter.record_usage('m-6', 3);
SELECT count(*) AS created FROM tiermeter.orgs WHERE org_id = 'm-6';

-- ids too long for the cache take the table path, with the same answers
SELECT length(repeat('x', 100)) AS id_length, used
  FROM tiermeter.record_usage(repeat('x', 100), 9);
SELECT allowed, used FROM tiermeter.consume(repeat('x', 100), 3591);
SELECT allowed, used FROM tiermeter.consume(repeat('x', 100), 1);

-- dropping and creating the extension again forgets everything cached
SELECT used FROM tiermeter.check_org_limits('m-1');
DROP EXTENSION tiermeter;
CREATE EXTENSION tiermeter;
SELECT used FROM tiermeter.check_org_limits('m-1');
