-- Builds: with the library preloaded, a key the cache does not hold is read
-- from the tables' indexes directly (the org, its override, the sums of its
-- usage and grants in the period).  Each answer below is compared with a sum
-- over the tables written out in SQL; on the table path (no preload) the
-- same comparisons hold.  A direct write to a table invalidates the key, so
-- each check after one is a new build.
SET timezone = 'UTC';

CREATE FUNCTION pg_temp.ledger(o text, f text, ps timestamptz, pe timestamptz)
RETURNS bigint LANGUAGE sql AS $$
	SELECT COALESCE(sum(amount), 0)::bigint FROM tiermeter.usage_log
	 WHERE org_id = o AND feature = f AND occurred_at >= ps AND occurred_at < pe
$$;

-- an org anchored mid-month: its period is not the calendar month; rows at
-- its start (counted), just before it, and at its end (not counted)
INSERT INTO tiermeter.orgs (org_id, tier_id, billing_anchor, period_start, period_end)
SELECT 'bld-1', 'basic', p.ps - interval '2 months', p.ps, p.pe
  FROM (SELECT now() - interval '3 days' AS ps, now() + interval '20 days' AS pe) p;
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'bld-1', 'conversation_seconds', a, t
  FROM tiermeter.orgs o, LATERAL (VALUES (100, o.period_start), (1000, o.period_start - interval '1 microsecond'),
                                         (10000, o.period_end), (7, now())) v(a, t)
 WHERE o.org_id = 'bld-1';
SELECT used, quota, used = pg_temp.ledger('bld-1', 'conversation_seconds', period_start, period_end) AS equals_ledger
  FROM tiermeter.check_org_limits('bld-1');

-- a grant this period counts, one dated in the last period does not
INSERT INTO tiermeter.usage_grants (org_id, feature, amount, granted_at)
SELECT 'bld-1', 'conversation_seconds', g, t
  FROM tiermeter.orgs o, LATERAL (VALUES (500, now()), (50000, o.period_start - interval '1 day')) v(g, t)
 WHERE o.org_id = 'bld-1';
SELECT used, quota FROM tiermeter.check_org_limits('bld-1');

-- an override of the tier's quota, then an unlimited one
INSERT INTO tiermeter.org_quotas VALUES ('bld-1', 'conversation_seconds', 40);
SELECT used, quota, allowed FROM tiermeter.check_org_limits('bld-1');
UPDATE tiermeter.org_quotas SET quota = NULL WHERE org_id = 'bld-1';
SELECT used, quota, unlimited FROM tiermeter.check_org_limits('bld-1');

-- a gauge sums every row, whatever its date
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('bld-1', 'documents', 3, now() - interval '2 years'), ('bld-1', 'documents', -1, now()),
       ('bld-1', 'documents', 1, now() - interval '40 days');
SELECT used FROM tiermeter.check_org_limits('bld-1', 'documents');

-- ledger rows of an org that has no orgs row yet (written by a backfill):
-- answered on the default tier, its rows of this calendar month counted
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('bld-none', 'conversation_seconds', 11, now()),
       ('bld-none', 'conversation_seconds', 22, date_trunc('month', now()) - interval '1 second');
SELECT tier, used, period_start = date_trunc('month', now()) AS calendar_month
  FROM tiermeter.check_org_limits('bld-none');

-- rows deleted and rows of pages not yet all-visible are read through the
-- heap; after VACUUM the sum comes from the index alone: the same answers
DELETE FROM tiermeter.usage_log WHERE org_id = 'bld-1' AND amount = 7;
SELECT used FROM tiermeter.check_org_limits('bld-1');
VACUUM tiermeter.usage_log;
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at) VALUES ('bld-1', 'conversation_seconds', 2, now());
DELETE FROM tiermeter.usage_log WHERE org_id = 'bld-1' AND amount = 2;
SELECT used, used = pg_temp.ledger('bld-1', 'conversation_seconds', period_start, period_end) AS equals_ledger
  FROM tiermeter.check_org_limits('bld-1');

-- sums past bigint are clamped, as before
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'bld-big', 'conversation_seconds', 5000000000000000000, now() FROM generate_series(1, 3);
SELECT used FROM tiermeter.check_org_limits('bld-big');
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'bld-big', 'users', -5000000000000000000, now() FROM generate_series(1, 3);
SELECT used FROM tiermeter.check_org_limits('bld-big', 'users');

-- a gauge row dated at infinity is not counted (the table path's bounds)
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('bld-1', 'documents', 1000, 'infinity'), ('bld-1', 'documents', 1, '-infinity');
SELECT used FROM tiermeter.check_org_limits('bld-1', 'documents');

-- rows in a child table of the ledger count, as the table path's query
-- reads them (builds then run that query instead of reading the index)
CREATE TABLE pg_temp.archived () INHERITS (tiermeter.usage_log);
INSERT INTO pg_temp.archived (org_id, feature, amount, occurred_at)
VALUES ('bld-child', 'conversation_seconds', 25, now());
SELECT used FROM tiermeter.check_org_limits('bld-child');
DROP TABLE pg_temp.archived;
-- ANALYZE clears the flag of a table that had children: builds read the
-- indexes again in the suites after this one
ANALYZE tiermeter.usage_log;
SELECT relhassubclass FROM pg_class WHERE oid = 'tiermeter.usage_log'::regclass;

-- this transaction's own rows are in its answers, not in the entry others read
BEGIN;
SELECT used FROM tiermeter.record_usage('bld-1', 5);
SELECT used FROM tiermeter.check_org_limits('bld-1');
ROLLBACK;
SELECT used FROM tiermeter.check_org_limits('bld-1');

-- with the library preloaded the sums above were builds (an override or a
-- grant changed the entry's config only: read again without a sum)
SELECT capacity = 0 OR (builds >= 5 AND refreshes >= 3) AS built FROM tiermeter.cache_stats();

-- leave the database as this script found it
DELETE FROM tiermeter.usage_log WHERE org_id LIKE 'bld-%';
DELETE FROM tiermeter.usage_grants WHERE org_id LIKE 'bld-%';
DELETE FROM tiermeter.orgs WHERE org_id LIKE 'bld-%';
