-- Savepoints and PL/pgSQL exception blocks: usage and reservations of a
-- subtransaction that rolls back are undone, nested ones too; those of one
-- that commits belong to its parent.  (With the library preloaded this runs
-- through the cache's undo records; without it, through the tables: the same
-- answers either way.)
SET timezone = 'UTC';

BEGIN;
SELECT used FROM tiermeter.record_usage('sp-1', 1);
SAVEPOINT a;
SELECT used FROM tiermeter.record_usage('sp-1', 10);
SAVEPOINT b;
SELECT used FROM tiermeter.record_usage('sp-1', 100);
RELEASE b;
SAVEPOINT c;
SELECT used FROM tiermeter.record_usage('sp-1', 1000);
SAVEPOINT d;
SELECT used FROM tiermeter.record_usage('sp-1', 10000);
RELEASE d;
ROLLBACK TO c;
SELECT used FROM tiermeter.check_org_limits('sp-1');
ROLLBACK TO a;
SELECT used FROM tiermeter.check_org_limits('sp-1');
SELECT used FROM tiermeter.record_usage('sp-1', 2);
COMMIT;
SELECT used FROM tiermeter.check_org_limits('sp-1');

-- a consume rolled back to a savepoint gives its reservation back
BEGIN;
SAVEPOINT a;
SELECT allowed, used FROM tiermeter.consume('sp-2', 3000);
ROLLBACK TO a;
SELECT allowed, used FROM tiermeter.consume('sp-2', 3600);
COMMIT;
SELECT used, reserved FROM tiermeter.check_org_limits('sp-2');

-- several orgs in one subtransaction, then more at its parent's level
BEGIN;
SELECT used FROM tiermeter.record_usage('sp-3', 5);
SAVEPOINT a;
SELECT used FROM tiermeter.record_usage('sp-3', 50);
SELECT used FROM tiermeter.record_usage('sp-4', 50);
SAVEPOINT b;
SELECT used FROM tiermeter.record_usage('sp-4', 500);
ROLLBACK TO b;
RELEASE a;
SAVEPOINT c;
SELECT used FROM tiermeter.record_usage('sp-3', 5000);
ROLLBACK TO c;
COMMIT;
SELECT org_id, used FROM tiermeter.check_org_limits('sp-3')
UNION ALL SELECT org_id, used FROM tiermeter.check_org_limits('sp-4');

-- 2000 calls, each in its own exception block, every other one failing
-- after it recorded: exactly the half that did not fail counts.  Each
-- rollback looks at its own undo records only, never at the earlier ones
-- (4000 records: 4000 looks at most, where rescanning the list at every
-- rollback would make millions; 0 without the library preloaded)
SELECT tiermeter._undo_visits() AS visits_before \gset
DO $$
BEGIN
	FOR i IN 1..2000 LOOP
		BEGIN
			PERFORM tiermeter.record_usage('sp-5', 1);
			PERFORM tiermeter.consume('sp-6', 1);
			IF i % 2 = 0 THEN
				RAISE EXCEPTION 'fail %', i;
			END IF;
		EXCEPTION WHEN raise_exception THEN NULL;
		END;
	END LOOP;
END $$;
SELECT org_id, used, reserved FROM tiermeter.check_org_limits('sp-5')
UNION ALL SELECT org_id, used, reserved FROM tiermeter.check_org_limits('sp-6');
SELECT org_id, sum(amount) AS ledger FROM tiermeter.usage_log
 WHERE org_id IN ('sp-5', 'sp-6') GROUP BY org_id ORDER BY org_id;
SELECT tiermeter._undo_visits() - :visits_before <= 4000 AS undo_linear;
