-- Every datum of the extension's tables and sequences, one line per row,
-- ordered: scripts/upgrade.sh takes it before and after the update and
-- compares.  Only the columns the tables had before the update are shown,
-- so that a column an update adds is not a difference (what it holds is
-- checked by the answers and the regression suite).
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset footer off
SET timezone = 'UTC';
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS upgrade_check;
CREATE TABLE IF NOT EXISTS upgrade_check.cols AS
SELECT c.relname, c.relkind, array_agg(a.attname::text ORDER BY a.attnum) AS cols
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'tiermeter'::regnamespace AND c.relkind IN ('r', 'S')
 GROUP BY c.relname, c.relkind;

-- The one value the update changes on purpose (CHANGELOG.md, 0.2.0): a
-- stripe_unmapped limit event with no org has org_id NULL, where 0.1.0
-- wrote ''.  Both read as NULL here; test/upgrade/migrated.sql shows it.
SELECT CASE relkind
		WHEN 'r' THEN format($q$SELECT %L || ' ' || r::text FROM (SELECT (SELECT jsonb_object_agg(k, CASE WHEN %L = 'limit_events' AND k = 'org_id' AND v = '""' AND to_jsonb(t)->>'kind' = 'stripe_unmapped' THEN 'null' ELSE v END) FROM jsonb_each(to_jsonb(t)) AS e(k, v) WHERE k = ANY (%L::text[])) AS r FROM tiermeter.%I t) s ORDER BY 1$q$,
		                     relname, relname, cols, relname)
		ELSE format($q$SELECT %L || ' ' || last_value || ' ' || is_called FROM tiermeter.%I$q$, relname, relname) END
  FROM upgrade_check.cols ORDER BY relname
\gexec
