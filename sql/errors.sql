-- Bad input is an ERROR starting "tiermeter:", SQLSTATE 22004 for NULL ids
-- and 22023 for everything else, and changes nothing.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; hint text;
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
	RETURN st || ' ' || msg || CASE WHEN hint <> '' THEN ' | HINT: ' || hint ELSE '' END;
END $$;

CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM tiermeter.orgs) AS orgs,
       (SELECT count(*) FROM tiermeter.usage_log) AS usage,
       (SELECT count(*) FROM tiermeter.usage_grants) AS grants,
       (SELECT count(*) FROM tiermeter.org_quotas) AS quotas,
       (SELECT count(*) FROM tiermeter.limit_events) AS events;

SELECT q, pg_temp.err(q) FROM unnest(ARRAY[
	-- NULL ids: 22004
	$q$SELECT tiermeter.check_org_limits(NULL)$q$,
	$q$SELECT tiermeter.check_org_limits('e-1', NULL)$q$,
	$q$SELECT tiermeter.record_usage(NULL, 1)$q$,
	$q$SELECT tiermeter.record_usage('e-1', NULL)$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, NULL)$q$,
	$q$SELECT tiermeter.consume(NULL, 1)$q$,
	$q$SELECT tiermeter.consume('e-1', NULL)$q$,
	$q$SELECT tiermeter.set_org_tier(NULL, 'basic')$q$,
	$q$SELECT tiermeter.set_org_tier('e-1', NULL)$q$,
	$q$SELECT tiermeter.set_org_quota(NULL, 'reports', 1)$q$,
	$q$SELECT tiermeter.set_org_quota('e-1', NULL, 1)$q$,
	$q$SELECT tiermeter.grant_usage(NULL, 1)$q$,
	$q$SELECT tiermeter.grant_usage('e-1', NULL)$q$,
	-- empty ids: 22023
	$q$SELECT tiermeter.check_org_limits('')$q$,
	$q$SELECT tiermeter.record_usage('', 1)$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, '')$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, conversation_id => '')$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, idempotency_key => '')$q$,
	$q$SELECT tiermeter.consume('', 1)$q$,
	$q$SELECT tiermeter.set_org_tier('', 'basic')$q$,
	$q$SELECT tiermeter.set_org_tier('e-1', '')$q$,
	-- blank ids (whitespace only), ids over 1024 bytes: 22023
	$q$SELECT tiermeter.check_org_limits('   ')$q$,
	$q$SELECT tiermeter.record_usage(E' \t\n', 1)$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, ' ')$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, idempotency_key => '  ')$q$,
	$q$SELECT tiermeter.set_org_tier(' ', 'basic')$q$,
	$q$SELECT tiermeter.record_usage(repeat('x', 1025), 1)$q$,
	$q$SELECT tiermeter.record_usage(repeat('é', 513), 1)$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, idempotency_key => repeat('k', 1025))$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, conversation_id => repeat('c', 1025))$q$,
	$q$SELECT tiermeter.consume(repeat('x', 3000), 1)$q$,
	$q$SELECT tiermeter.set_org_tier(repeat('x', 8000), 'basic')$q$,
	-- negative amounts on period features, amounts above 10^12
	$q$SELECT tiermeter.record_usage('e-1', -1)$q$,
	$q$SELECT tiermeter.consume('e-1', -5, 'reports')$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1000000000001)$q$,
	$q$SELECT tiermeter.record_usage('e-1', -1000000000001, 'users')$q$,
	$q$SELECT tiermeter.consume('e-1', 1000000000001)$q$,
	$q$SELECT tiermeter.grant_usage('e-1', -1)$q$,
	$q$SELECT tiermeter.grant_usage('e-1', 0)$q$,
	$q$SELECT tiermeter.grant_usage('e-1', 1000000000001)$q$,
	$q$SELECT tiermeter.grant_usage('e-1', 1, 'users')$q$,
	$q$SELECT tiermeter.set_org_quota('e-1', 'reports', -1)$q$,
	$q$SELECT tiermeter.set_org_quota('e-1', 'reports', 1000000000001)$q$,
	-- a gauge below zero
	$q$SELECT tiermeter.record_usage('e-1', -1, 'users')$q$,
	$q$SELECT tiermeter.consume('e-1', -1, 'users')$q$,
	-- unknown features and tiers, with a HINT naming the known ones
	$q$SELECT tiermeter.check_org_limits('e-1', 'minutes')$q$,
	$q$SELECT tiermeter.record_usage('e-1', 1, 'minutes')$q$,
	$q$SELECT tiermeter.consume('e-1', 1, 'minutes')$q$,
	$q$SELECT tiermeter.set_org_quota('e-1', 'minutes', 1)$q$,
	$q$SELECT tiermeter.grant_usage('e-1', 1, 'minutes')$q$,
	$q$SELECT tiermeter.set_org_tier('e-1', 'gold')$q$,
	-- occurred_at too far ahead
	$q$SELECT tiermeter.record_usage('e-1', 1, occurred_at => now() + interval '1 hour')$q$,
	-- signature checks: bad arguments (a bad header is just false)
	$q$SELECT tiermeter.verify_stripe_signature(NULL, $$t=1,v1=00$$, $$s$$)$q$,
	$q$SELECT tiermeter.verify_stripe_signature($$x$$, $$t=1,v1=00$$, $$$$)$q$,
	$q$SELECT tiermeter.verify_stripe_signature($$x$$, $$t=1,v1=00$$, $$s$$, -5)$q$
]) AS q;

-- nothing changed
SELECT (SELECT count(*) FROM tiermeter.orgs) - orgs AS orgs,
       (SELECT count(*) FROM tiermeter.usage_log) - usage AS usage,
       (SELECT count(*) FROM tiermeter.usage_grants) - grants AS grants,
       (SELECT count(*) FROM tiermeter.org_quotas) - quotas AS quotas,
       (SELECT count(*) FROM tiermeter.limit_events) - events AS events
  FROM before;

-- an id of exactly 1024 bytes, and one with spaces around other characters
SELECT length(org_id) AS id_length, used
  FROM tiermeter.record_usage(repeat('x', 1024), 1, idempotency_key => repeat('k', 1024));
SELECT org_id, used FROM tiermeter.record_usage(' e 2 ', 1);

-- the whole message, detail and hint, as a client sees them
SELECT tiermeter.record_usage('e-1', 1, 'minutes');
SELECT tiermeter.set_org_tier('e-1', 'gold');
SELECT tiermeter.record_usage('e-1', -3);

-- no default tier: a clear error, not a wrong answer
BEGIN;
UPDATE tiermeter.tiers SET is_default = false;
SELECT pg_temp.err($q$SELECT tiermeter.check_org_limits('e-1')$q$);
ROLLBACK;
