-- Every function of the schema, called with NULL in each argument in turn
-- (the other arguments valid): an answer or a clear error, never a crash.
-- Generated from the catalog, so a function added later is called too; its
-- lines then appear here and are reviewed.
SET timezone = 'UTC';
CREATE FUNCTION pg_temp.outcome(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN 'ERROR ' || SQLSTATE || CASE WHEN SQLERRM LIKE 'tiermeter: %' THEN ' tiermeter:' ELSE ' ' || SQLERRM END;
END $$;

-- a valid value for an argument, by its name, else by its type
CREATE FUNCTION pg_temp.sample(name text, type regtype) RETURNS text LANGUAGE sql AS $$
	SELECT CASE
		WHEN name = 'feature' THEN quote_literal('conversation_seconds')
		WHEN name = 'tier_id' THEN quote_literal('basic')
		WHEN name = 'is_gauge' THEN 'false'
		WHEN name = 'event' THEN quote_literal('{"id": "evt_n", "type": "invoice.paid", "created": 1, "data": {"object": {}}}')
		WHEN name = 'schedule' THEN quote_literal('*/5 * * * *')
		WHEN name = 'level' THEN quote_literal('app')
		WHEN name = 'role' THEN quote_literal(current_user)
		WHEN name = 'idempotency_key' THEN quote_literal('key-n')
		WHEN type = 'text'::regtype THEN quote_literal('n-1')
		WHEN type IN ('bigint'::regtype, 'integer'::regtype) THEN '60'
		WHEN type = 'timestamptz'::regtype THEN 'now()'
		WHEN type = 'jsonb'::regtype THEN quote_literal('{}')
		WHEN type = 'boolean'::regtype THEN 'false'
		ELSE 'NULL' END || '::' || type::text
$$;

WITH fns AS (
	SELECT p.oid, p.proname, p.pronargs, ARRAY(SELECT unnest(p.proargtypes)) AS types, p.proargnames AS names
	  FROM pg_proc p
	 WHERE p.pronamespace = 'tiermeter'::regnamespace
	   AND p.prorettype <> 'trigger'::regtype
	   AND p.proname NOT IN ('rollover', 'schedule_rollover')	-- owner's jobs, tried below
), calls AS (
	SELECT f.proname, n AS null_arg, f.names[n] AS arg,
	       format('SELECT tiermeter.%I(%s)', f.proname,
	              (SELECT string_agg(CASE WHEN i = n THEN 'NULL::' || f.types[i]::regtype::text
	                                      ELSE pg_temp.sample(f.names[i], f.types[i]::regtype) END,
	                                 ', ' ORDER BY i)
	                 FROM generate_series(1, f.pronargs) AS i)) AS q
	  FROM fns f, generate_series(1, f.pronargs) AS n
)
SELECT proname, null_arg, arg, pg_temp.outcome(q) FROM calls ORDER BY proname, null_arg;

-- the owner's jobs
SELECT pg_temp.outcome('SELECT tiermeter.rollover(NULL)') AS rollover,
       pg_temp.outcome('SELECT tiermeter.schedule_rollover(NULL)') AS schedule_rollover;

