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

SELECT CASE relkind
		WHEN 'r' THEN format($q$SELECT %L || ' ' || r::text FROM (SELECT (SELECT jsonb_object_agg(k, v) FROM jsonb_each(to_jsonb(t)) AS e(k, v) WHERE k = ANY (%L::text[])) AS r FROM tiermeter.%I t) s ORDER BY 1$q$,
		                     relname, cols, relname)
		ELSE format($q$SELECT %L || ' ' || last_value || ' ' || is_called FROM tiermeter.%I$q$, relname, relname) END
  FROM upgrade_check.cols ORDER BY relname
\gexec
