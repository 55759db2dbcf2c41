-- The ledger row of record_usage and consume: without an idempotency key it
-- is written into usage_log and its b-tree indexes directly; when the table
-- is not as installed, or the call cannot write it, the INSERT runs through
-- the executor, which then runs every trigger, rule and constraint.  Which
-- way a call took shows in the calls of tiermeter's own BEFORE INSERT
-- trigger (track_functions): the executor calls it, the direct insert does
-- not.  Each change to the table below is made in a transaction and rolled
-- back.  Same output with and without preloading.
SET timezone = 'UTC';
SET track_functions = 'all';
CREATE EXTENSION amcheck;

-- the trigger's calls since pg_temp.mark() (the counts of earlier
-- transactions may not have been reported yet)
CREATE FUNCTION pg_temp.trigger_calls() RETURNS bigint LANGUAGE sql AS $$
	SELECT coalesce(pg_stat_get_xact_function_calls('tiermeter._invalidate_insert()'::regprocedure), 0)
$$;
CREATE PROCEDURE pg_temp.mark() LANGUAGE sql AS $$
	SELECT set_config('ledger_test.mark', pg_temp.trigger_calls()::text, true)
$$;
CREATE FUNCTION pg_temp.executor_inserts() RETURNS bigint LANGUAGE sql AS $$
	SELECT pg_temp.trigger_calls() - current_setting('ledger_test.mark')::bigint
$$;
CREATE FUNCTION pg_temp.rows(o text)
RETURNS TABLE (feature text, amount bigint, occurred_at text, conversation_id text,
			   idempotency_key text, recorded_now boolean)
LANGUAGE sql AS $$
	SELECT feature, amount,
	       CASE occurred_at WHEN now() THEN 'now()' WHEN now() + interval '10 seconds' THEN 'now() + 10 s'
	       WHEN now() - interval '1 second' THEN 'now() - 1 s' ELSE occurred_at::text END,
	       conversation_id, idempotency_key, recorded_at = now()
	  FROM tiermeter.usage_log WHERE org_id = o ORDER BY amount
$$;
CREATE FUNCTION pg_temp.long_id() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(md5(i::text), '') FROM generate_series(1, 100) i
$$;
-- the orgs exist: creating one is an INSERT through the executor
SELECT tiermeter.set_org_tier(o, 'basic')
  FROM unnest(ARRAY['ldg-1', 'ldg-2', 'ldg-3', left(pg_temp.long_id(), 1000)]) o;

-- the direct way: record_usage (with a conversation and a time), consume,
-- a session's touch (10 s after its start); the rows have every column the INSERT would give them,
-- recorded_at the transaction's now() (its DEFAULT)
BEGIN;
CALL pg_temp.mark();
SELECT used FROM tiermeter.record_usage('ldg-1', 5, 'conversation_seconds', 'c-1', NULL, now() - interval '1 second');
SELECT used FROM tiermeter.record_usage('ldg-1', 7);
SELECT used, allowed FROM tiermeter.consume('ldg-1', 11);
SELECT used FROM tiermeter.record_usage('ldg-1', 2, 'documents');
SELECT allowed FROM tiermeter._begin_session('ldg-1', 'c-2', NULL, now());
SELECT used FROM tiermeter._touch_session('ldg-1', 'c-2', now() + interval '10 seconds');
SELECT pg_temp.executor_inserts() AS executor_inserts;
SELECT * FROM pg_temp.rows('ldg-1');
-- with an idempotency key: INSERT ... ON CONFLICT through the executor
SELECT used FROM tiermeter.record_usage('ldg-1', 13, 'conversation_seconds', NULL, 'k-1');
SELECT used FROM tiermeter.record_usage('ldg-1', 13, 'conversation_seconds', NULL, 'k-1');
SELECT pg_temp.executor_inserts() AS executor_inserts;
COMMIT;

-- both indexes hold exactly the table's rows (the keyed index only the
-- keyed rows): amcheck's heapallindexed
SELECT bt_index_check('tiermeter.usage_log_org_feature_time', true);
SELECT bt_index_check('tiermeter.usage_log_idempotency', true);
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS by_index, sum(amount) AS amount
  FROM tiermeter.usage_log WHERE org_id = 'ldg-1' AND feature = 'conversation_seconds';
SELECT count(*) AS by_key FROM tiermeter.usage_log WHERE org_id = 'ldg-1' AND idempotency_key = 'k-1';
RESET enable_seqscan;
RESET enable_bitmapscan;

-- a savepoint rolled back takes its row with it; a row too long to store
-- as it is (an org and a conversation id of 1000 bytes) goes through TOAST
-- as by the INSERT
BEGIN;
CALL pg_temp.mark();
SELECT used FROM tiermeter.record_usage('ldg-2', 5);
SAVEPOINT a;
SELECT used FROM tiermeter.record_usage('ldg-2', 7);
ROLLBACK TO a;
SELECT used FROM tiermeter.record_usage('ldg-2', 11);
SELECT used FROM tiermeter.record_usage(left(pg_temp.long_id(), 1000), 17, 'conversation_seconds',
										 right(pg_temp.long_id(), 1000));
SELECT pg_temp.executor_inserts() AS executor_inserts;
COMMIT;
SELECT amount FROM tiermeter.usage_log WHERE org_id = 'ldg-2' ORDER BY amount;
SELECT used FROM tiermeter.check_org_limits('ldg-2');
-- the same row by a plain INSERT (18): stored the same way
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at, conversation_id)
SELECT left(pg_temp.long_id(), 1000), 'conversation_seconds', 18, now(), right(pg_temp.long_id(), 1000);
SELECT amount, length(org_id) AS org_length, conversation_id = right(pg_temp.long_id(), 1000) AS same_conversation,
       pg_column_size(org_id) AS org_stored, pg_column_size(conversation_id) AS conversation_stored
  FROM tiermeter.usage_log u WHERE org_id = left(pg_temp.long_id(), 1000) ORDER BY amount;
SELECT used FROM tiermeter.check_org_limits(left(pg_temp.long_id(), 1000));
SELECT bt_index_check('tiermeter.usage_log_org_feature_time', true);

-- an index of the user's, b-tree on columns: still direct, the index gets
-- the row; a unique one raises its own error on a duplicate
BEGIN;
CALL pg_temp.mark();
CREATE INDEX usage_log_conv ON tiermeter.usage_log (conversation_id);
CREATE UNIQUE INDEX usage_log_conv_unique ON tiermeter.usage_log (org_id, conversation_id);
SELECT used FROM tiermeter.record_usage('ldg-3', 5, 'conversation_seconds', 'c-u');
SELECT pg_temp.executor_inserts() AS executor_inserts;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
SELECT count(*) AS by_user_index FROM tiermeter.usage_log WHERE conversation_id = 'c-u';
SELECT bt_index_check('tiermeter.usage_log_conv_unique', true);
SELECT used FROM tiermeter.record_usage('ldg-3', 7, 'conversation_seconds', 'c-u');
ROLLBACK;

-- every other change: the INSERT runs through the executor, which does
-- what the change asks
-- a trigger of the user's
CREATE TABLE public.ledger_seen (org_id text, amount bigint);
CREATE FUNCTION public.ledger_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ledger_seen VALUES (NEW.org_id, NEW.amount);
	NEW.conversation_id := 'from-trigger';
	RETURN NEW;
END $$;
CREATE FUNCTION public.ledger_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ledger_seen VALUES ('statement', NULL);
	RETURN NULL;
END $$;
BEGIN;
CALL pg_temp.mark();
CREATE TRIGGER ledger_note BEFORE INSERT ON tiermeter.usage_log
	FOR EACH ROW EXECUTE FUNCTION public.ledger_note();
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT pg_temp.executor_inserts() AS executor_inserts;
SELECT * FROM public.ledger_seen;
SELECT conversation_id FROM tiermeter.usage_log WHERE org_id = 'ldg-3';
ROLLBACK;
-- a trigger of the user's that changes the row: what the call answers and
-- what the cache counts after the commit is what the ledger holds (before,
-- the calls answered 5, 6 and 8, and the cache kept 8 against the ledger's
-- 16)
CREATE FUNCTION public.ledger_double() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.amount := NEW.amount * 2;
	RETURN NEW;
END $$;
SELECT used FROM tiermeter.check_org_limits('ldg-4');
CREATE TRIGGER ledger_double BEFORE INSERT ON tiermeter.usage_log
	FOR EACH ROW EXECUTE FUNCTION public.ledger_double();
SELECT used FROM tiermeter.record_usage('ldg-4', 5);
SELECT used FROM tiermeter.record_usage('ldg-4', 1, idempotency_key => 'ldg-4-k');
SELECT used FROM tiermeter.consume('ldg-4', 2);
DROP TRIGGER ledger_double ON tiermeter.usage_log;
DROP FUNCTION public.ledger_double();
SELECT used FROM tiermeter.check_org_limits('ldg-4');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'ldg-4';
-- a trigger of the user's that inserts another ledger row during the
-- call's own (a fee): both rows count, in the answer and in the cache (the
-- fee's row was taken for the call's own, and the cache kept 5 against the
-- ledger's 105, in a first version)
CREATE FUNCTION public.ledger_fee() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.amount <> 100 THEN
		INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
		VALUES (NEW.org_id, NEW.feature, 100, NEW.occurred_at);
	END IF;
	RETURN NULL;
END $$;
SELECT used FROM tiermeter.check_org_limits('ldg-5');
CREATE TRIGGER ledger_fee AFTER INSERT ON tiermeter.usage_log
	FOR EACH ROW EXECUTE FUNCTION public.ledger_fee();
SELECT used FROM tiermeter.record_usage('ldg-5', 5);
DROP TRIGGER ledger_fee ON tiermeter.usage_log;
DROP FUNCTION public.ledger_fee();
SELECT used FROM tiermeter.check_org_limits('ldg-5');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id = 'ldg-5';
-- the table gone for a moment: the calls take the executor's way while it
-- is, and the direct way again once it is back (a first version kept "not
-- there" for the backend's life)
BEGIN;
ALTER TABLE tiermeter.usage_log RENAME TO usage_log_away;
SAVEPOINT away;
SELECT used FROM tiermeter.record_usage('ldg-5', 1);
ROLLBACK TO away;
ROLLBACK;
BEGIN;
CALL pg_temp.mark();
SELECT used FROM tiermeter.record_usage('ldg-5', 1);
SELECT pg_temp.executor_inserts() AS executor_inserts;
ROLLBACK;
-- a statement trigger
BEGIN;
CALL pg_temp.mark();
CREATE TRIGGER ledger_note_stmt AFTER INSERT ON tiermeter.usage_log
	FOR EACH STATEMENT EXECUTE FUNCTION public.ledger_statement();
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT * FROM public.ledger_seen;
ROLLBACK;
-- our own trigger disabled: still direct
BEGIN;
CALL pg_temp.mark();
ALTER TABLE tiermeter.usage_log DISABLE TRIGGER usage_log_insert_invalidate;
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
ALTER TABLE tiermeter.usage_log ENABLE ALWAYS TRIGGER usage_log_insert_invalidate;
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT pg_temp.executor_inserts() AS executor_inserts;
ROLLBACK;
-- a foreign key (its check is a trigger)
BEGIN;
CALL pg_temp.mark();
ALTER TABLE tiermeter.usage_log ADD CONSTRAINT usage_log_org_fk
	FOREIGN KEY (org_id) REFERENCES tiermeter.orgs;
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT pg_temp.executor_inserts() AS executor_inserts;
ROLLBACK;
-- a CHECK constraint
BEGIN;
CALL pg_temp.mark();
ALTER TABLE tiermeter.usage_log ADD CONSTRAINT usage_log_small CHECK (amount < 1000) NOT VALID;
\set VERBOSITY terse
SELECT used FROM tiermeter.record_usage('ldg-3', 5000);
\set VERBOSITY default
ROLLBACK;
-- NOT NULL on conversation_id (the rows without one deleted first)
BEGIN;
CALL pg_temp.mark();
DELETE FROM tiermeter.usage_log WHERE conversation_id IS NULL;
ALTER TABLE tiermeter.usage_log ALTER conversation_id SET NOT NULL;
\set VERBOSITY terse
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
\set VERBOSITY default
ROLLBACK;
-- another default for recorded_at; a column added with a default
BEGIN;
CALL pg_temp.mark();
ALTER TABLE tiermeter.usage_log ALTER recorded_at SET DEFAULT '2000-01-01 00:00+00';
ALTER TABLE tiermeter.usage_log ADD COLUMN note text DEFAULT 'noted';
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT pg_temp.executor_inserts() AS executor_inserts;
SELECT recorded_at, note FROM tiermeter.usage_log WHERE org_id = 'ldg-3';
ROLLBACK;
-- a rule
BEGIN;
CALL pg_temp.mark();
CREATE RULE ledger_also AS ON INSERT TO tiermeter.usage_log
	DO ALSO INSERT INTO public.ledger_seen VALUES (NEW.org_id, NEW.amount * 100);
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT * FROM public.ledger_seen;
ROLLBACK;
-- a conditional DO INSTEAD rule: the INSERT cannot return its row then, and
-- the call answers from the ledger (an INSERT ... RETURNING was refused in
-- a first version); the big amount goes where the rule says
BEGIN;
CREATE RULE ledger_instead AS ON INSERT TO tiermeter.usage_log
	WHERE NEW.amount > 1000 DO INSTEAD
	INSERT INTO public.ledger_seen VALUES (NEW.org_id, NEW.amount);
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT used FROM tiermeter.record_usage('ldg-3', 5000);
SELECT * FROM public.ledger_seen;
ROLLBACK;
-- row security (the functions' owner is not subject to it here)
BEGIN;
CALL pg_temp.mark();
ALTER TABLE tiermeter.usage_log ENABLE ROW LEVEL SECURITY;
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
SELECT pg_temp.executor_inserts() AS executor_inserts;
ROLLBACK;
-- an index on an expression, a partial index, a hash index: each gets the
-- row through the executor
BEGIN;
CALL pg_temp.mark();
CREATE INDEX usage_log_lower ON tiermeter.usage_log (lower(org_id));
CREATE INDEX usage_log_big ON tiermeter.usage_log (org_id) WHERE amount > 100;
CREATE INDEX usage_log_hash ON tiermeter.usage_log USING hash (conversation_id);
SELECT used FROM tiermeter.record_usage('ldg-3', 5, 'conversation_seconds', 'c-h');
SELECT used FROM tiermeter.record_usage('ldg-3', 500);
SELECT pg_temp.executor_inserts() AS executor_inserts;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
SELECT count(*) AS by_lower FROM tiermeter.usage_log WHERE lower(org_id) = 'ldg-3';
SELECT count(*) AS by_partial FROM tiermeter.usage_log WHERE org_id = 'ldg-3' AND amount > 100;
SELECT count(*) AS by_hash FROM tiermeter.usage_log WHERE conversation_id = 'c-h';
ROLLBACK;
-- a partition of another table: its bounds are checked
BEGIN;
CREATE TABLE public.ledger_parent (LIKE tiermeter.usage_log) PARTITION BY RANGE (occurred_at);
DELETE FROM tiermeter.usage_log;
ALTER TABLE public.ledger_parent ATTACH PARTITION tiermeter.usage_log
	FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2001-01-01 00:00+00');
\set VERBOSITY terse
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
\set VERBOSITY default
ROLLBACK;
-- a column renamed: the INSERT names its columns
BEGIN;
ALTER TABLE tiermeter.usage_log RENAME conversation_id TO conv_id;
\set VERBOSITY terse
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
\set VERBOSITY default
ROLLBACK;
-- tiermeter's trigger made a statement trigger, or its function replaced:
-- the executor calls them as they are now
BEGIN;
DROP TRIGGER usage_log_insert_invalidate ON tiermeter.usage_log;
CREATE TRIGGER usage_log_insert_invalidate AFTER INSERT ON tiermeter.usage_log
	FOR EACH STATEMENT EXECUTE FUNCTION tiermeter._invalidate_insert();
\set VERBOSITY terse
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
\set VERBOSITY default
ROLLBACK;
BEGIN;
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
CREATE OR REPLACE FUNCTION tiermeter._invalidate_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ledger_seen VALUES (NEW.org_id, NEW.amount);
	RETURN NEW;
END $$;
SELECT used FROM tiermeter.record_usage('ldg-3', 7);
SELECT * FROM public.ledger_seen;
ROLLBACK;
-- the schema renamed and another made in its place: the row goes to the
-- new tiermeter.usage_log, never to the renamed one (with the library
-- preloaded the call gets that far; without it, it stops earlier, at a
-- table the new schema lacks)
BEGIN;
SELECT used FROM tiermeter.record_usage('ldg-3', 1);
ALTER SCHEMA tiermeter RENAME TO ledger_old;
CREATE SCHEMA tiermeter;
CREATE TABLE tiermeter.usage_log (LIKE ledger_old.usage_log INCLUDING ALL);
CREATE TABLE tiermeter.limit_events (LIKE ledger_old.limit_events INCLUDING ALL);
CREATE TABLE tiermeter.alert_thresholds (LIKE ledger_old.alert_thresholds INCLUDING ALL);
DO $$
BEGIN
	PERFORM ledger_old.record_usage('ldg-3', 55555);
EXCEPTION WHEN undefined_table THEN
END $$;
SELECT count(*) AS in_renamed_schema FROM ledger_old.usage_log WHERE amount = 55555;
ROLLBACK;
-- a read-only transaction: the executor's error, nothing written
BEGIN READ ONLY;
SELECT used FROM tiermeter.record_usage('ldg-3', 5);
ROLLBACK;

-- every change rolled back: direct again, and nothing of the above stayed
BEGIN;
CALL pg_temp.mark();
SELECT used FROM tiermeter.record_usage('ldg-3', 3);
SELECT pg_temp.executor_inserts() AS executor_inserts;
COMMIT;
SELECT org_id, amount, conversation_id FROM tiermeter.usage_log WHERE org_id = 'ldg-3';
SELECT count(*) AS seen FROM public.ledger_seen;
SELECT used FROM tiermeter.check_org_limits('ldg-3');

-- leave the database as this script found it
DELETE FROM tiermeter.usage_log WHERE org_id LIKE 'ldg-%' OR org_id = left(pg_temp.long_id(), 1000);
DELETE FROM tiermeter.sessions WHERE org_id LIKE 'ldg-%';
DELETE FROM tiermeter._session_slots WHERE org_id LIKE 'ldg-%';
DELETE FROM tiermeter.orgs WHERE org_id LIKE 'ldg-%' OR org_id = left(pg_temp.long_id(), 1000);
DROP TABLE public.ledger_seen;
DROP FUNCTION public.ledger_note();
DROP FUNCTION public.ledger_statement();
DROP EXTENSION amcheck;
RESET track_functions;
