-- Many calls for one org in one transaction.  Without the cache (the library
-- not preloaded) each call's sum was the org's ledger rows of the period,
-- the transaction's own included: 300 calls read 45,150 rows (by index or
-- sequential scan, whichever the plan used).  The
-- table path now remembers, within the transaction, what it read of other
-- transactions' rows and adds its own rows as it writes them; with the
-- cache, the calls read no ledger at all.  Every answer is the one the
-- ledger gives; the same script runs with and without the library preloaded.
SET timezone = 'UTC';

-- the session's first write is a grant (the memo is off for the rest of
-- its transaction only)
SELECT quota FROM tiermeter.grant_usage('lt-0', 1);

SELECT pg_stat_force_next_flush();
CREATE FUNCTION pg_temp.ledger_reads() RETURNS bigint LANGUAGE sql AS $$
	SELECT (SELECT COALESCE(seq_tup_read, 0) FROM pg_stat_user_tables
	         WHERE relid = 'tiermeter.usage_log'::regclass)
	     + (SELECT COALESCE(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
	         WHERE relid = 'tiermeter.usage_log'::regclass)
$$;
SELECT pg_temp.ledger_reads() AS reads \gset before_
BEGIN;
SELECT count(tiermeter.record_usage('lt-1', 1)) FROM generate_series(1, 300);
SELECT used FROM tiermeter.check_org_limits('lt-1');
SELECT used FROM tiermeter.record_usage('lt-1', 1);
COMMIT;
SELECT pg_stat_force_next_flush();
SELECT pg_temp.ledger_reads() - :before_reads < 2000 AS reads_linear_in_calls;
SELECT used FROM tiermeter.check_org_limits('lt-1');

-- a call and a check in one statement: the check sees what its statement's
-- snapshot sees, as before
BEGIN;
SELECT (tiermeter.record_usage('lt-2', 5)).used AS recorded, (tiermeter.check_org_limits('lt-2')).used AS checked;
SELECT (tiermeter.record_usage('lt-2', 5)).used AS recorded, (tiermeter.check_org_limits('lt-2')).used AS checked;
SELECT used FROM tiermeter.check_org_limits('lt-2');
COMMIT;

-- a subtransaction rolled back takes its rows with it; later calls go on
BEGIN;
SELECT used FROM tiermeter.record_usage('lt-3', 100);
SAVEPOINT a;
SELECT used FROM tiermeter.record_usage('lt-3', 10);
SAVEPOINT b;
SELECT used FROM tiermeter.record_usage('lt-3', 1);
ROLLBACK TO SAVEPOINT a;
SELECT used FROM tiermeter.record_usage('lt-3', 1000);
SELECT used FROM tiermeter.check_org_limits('lt-3');
COMMIT;
SELECT used FROM tiermeter.check_org_limits('lt-3');

-- errors caught in PL/pgSQL, one call in two
DO $$
BEGIN
	FOR i IN 1..20 LOOP
		BEGIN
			PERFORM tiermeter.record_usage('lt-4', 1);
			IF i % 2 = 0 THEN
				RAISE EXCEPTION 'undo';
			END IF;
		EXCEPTION WHEN raise_exception THEN NULL;
		END;
	END LOOP;
END $$;
SELECT used FROM tiermeter.check_org_limits('lt-4');

-- the ledger written by hand in the same transaction: counted, and deleted
-- rows no longer are
BEGIN;
SELECT used FROM tiermeter.record_usage('lt-5', 3);
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('lt-5', 'conversation_seconds', 40, now());
SELECT used FROM tiermeter.record_usage('lt-5', 3);
DELETE FROM tiermeter.usage_log WHERE org_id = 'lt-5' AND amount = 3;
SELECT used FROM tiermeter.record_usage('lt-5', 500);
SELECT used FROM tiermeter.check_org_limits('lt-5');
COMMIT;
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'lt-5';

-- ledger rows deleted by the statement that records: on the table path
-- (expected/long_transactions_1.out) its answer is the ledger's without
-- them, as before; the cache answers from its entry until the statement
-- ends, and from the tables after it
BEGIN;
SELECT used FROM tiermeter.record_usage('lt-10', 50);
SELECT used FROM tiermeter.record_usage('lt-10', 1);
DELETE FROM tiermeter.usage_log WHERE org_id = 'lt-10' AND amount = 50
RETURNING (tiermeter.record_usage('lt-10', 1)).used;
SELECT used FROM tiermeter.check_org_limits('lt-10');
COMMIT;

-- a gauge's grants (written by hand: grant_usage refuses gauges) are those
-- of the org's period: when the period moves in the transaction, a grant of
-- the old period no longer counts
INSERT INTO tiermeter.usage_grants (org_id, feature, amount, granted_at)
VALUES ('lt-11', 'documents', 10, date_trunc('month', now()));
BEGIN;
SELECT used, quota FROM tiermeter.record_usage('lt-11', 1, 'documents');
UPDATE tiermeter.orgs SET billing_anchor = now() - interval '1 hour',
       period_start = now() - interval '1 hour', period_end = now() + interval '20 days'
 WHERE org_id = 'lt-11';
SELECT used, quota FROM tiermeter.record_usage('lt-11', 1, 'documents', occurred_at => now());
ROLLBACK;

-- a grant in the same transaction raises the quota at once
BEGIN;
SELECT used, quota FROM tiermeter.record_usage('lt-6', 10);
SELECT quota FROM tiermeter.grant_usage('lt-6', 77);
SELECT used, quota FROM tiermeter.record_usage('lt-6', 10);
COMMIT;

-- a gauge: every row counts, whatever its date
BEGIN;
SELECT used FROM tiermeter.record_usage('lt-7', 2, 'documents');
SELECT used FROM tiermeter.record_usage('lt-7', -1, 'documents');
SELECT used FROM tiermeter.record_usage('lt-7', 3, 'documents', occurred_at => now() - interval '1 year');
SELECT used FROM tiermeter.check_org_limits('lt-7', 'documents');
COMMIT;

-- usage dated in the last period is not this period's
BEGIN;
SELECT used FROM tiermeter.record_usage('lt-8', 5);
SELECT used FROM tiermeter.record_usage('lt-8', 7, occurred_at => date_trunc('month', now()) - interval '1 second');
SELECT used FROM tiermeter.record_usage('lt-8', 5);
COMMIT;

-- repeatable read: the transaction's one snapshot
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT used FROM tiermeter.record_usage('lt-9', 1);
SELECT count(tiermeter.record_usage('lt-9', 1)) FROM generate_series(1, 50);
SELECT used FROM tiermeter.check_org_limits('lt-9');
COMMIT;

-- leave the database as this script found it
DELETE FROM tiermeter.usage_log WHERE org_id LIKE 'lt-%';
DELETE FROM tiermeter.usage_grants WHERE org_id LIKE 'lt-%';
DELETE FROM tiermeter.limit_events WHERE org_id LIKE 'lt-%';
DELETE FROM tiermeter.orgs WHERE org_id LIKE 'lt-%';
