-- pgTAP: the shape of the public API (docs/reference.md) and its access rules.
BEGIN;
SELECT plan(41);

SELECT has_schema('tiermeter');
SELECT tables_are('tiermeter', ARRAY['tiers', 'features', 'tier_quotas', 'stripe_prices',
	'alert_thresholds', 'orgs', 'org_quotas', 'usage_grants', 'usage_log', 'limit_events',
	'stripe_events', 'stripe_subscriptions', 'stripe_customers', '_seeds', '_access', '_deleted_seeds',
	'sessions', '_session_slots', '_unannounced']);

SELECT has_type('tiermeter', 'limit_status', 'limit_status exists');
SELECT columns_are('tiermeter', 'limit_status', ARRAY['org_id', 'tier', 'feature', 'allowed',
	'reason', 'used', 'quota', 'remaining', 'percent_used', 'warning', 'unlimited',
	'period_start', 'period_end', 'reserved']);

SELECT has_type('tiermeter', 'session_status', 'session_status exists');
SELECT columns_are('tiermeter', 'session_status', ARRAY['org_id', 'conversation_id', 'allowed',
	'reason', 'active', 'started_at', 'last_active_at', 'duration_seconds', 'session_quota',
	'session_remaining', 'active_sessions', 'max_active_sessions', 'used', 'quota', 'period_end']);
SELECT function_returns('tiermeter', 'begin_session', ARRAY['text', 'text', 'text'], 'tiermeter.session_status');
SELECT function_returns('tiermeter', 'touch_session', ARRAY['text', 'text'], 'tiermeter.session_status');
SELECT function_returns('tiermeter', 'end_session', ARRAY['text', 'text'], 'tiermeter.session_status');
SELECT function_returns('tiermeter', 'check_session_limits', ARRAY['text', 'text'], 'tiermeter.session_status');

SELECT function_returns('tiermeter', 'check_org_limits', ARRAY['text', 'text'], 'tiermeter.limit_status');
SELECT function_returns('tiermeter', 'record_usage',
	ARRAY['text', 'bigint', 'text', 'text', 'text', 'timestamp with time zone'], 'tiermeter.limit_status');
SELECT function_returns('tiermeter', 'consume', ARRAY['text', 'bigint', 'text', 'text', 'text'], 'tiermeter.limit_status');
SELECT function_returns('tiermeter', 'set_org_tier', ARRAY['text', 'text'], 'void');
SELECT function_returns('tiermeter', 'set_org_quota', ARRAY['text', 'text', 'bigint'], 'void');
SELECT function_returns('tiermeter', 'grant_usage', ARRAY['text', 'bigint', 'text', 'text'], 'tiermeter.limit_status');
SELECT function_returns('tiermeter', 'format_duration', ARRAY['bigint'], 'text');
SELECT function_returns('tiermeter', 'verify_stripe_signature',
	ARRAY['text', 'text', 'text', 'integer', 'timestamp with time zone'], 'boolean');
SELECT function_returns('tiermeter', 'apply_subscription_event', ARRAY['jsonb'], 'text');
SELECT function_returns('tiermeter', 'link_stripe_customer', ARRAY['text', 'text'], 'text');
SELECT function_returns('tiermeter', 'link_stripe_subscription', ARRAY['text', 'text'], 'text');
SELECT function_returns('tiermeter', 'reapply_stripe_events', ARRAY[]::text[], 'setof record');
SELECT function_returns('tiermeter', 'usage_stats', ARRAY['text'], 'jsonb');
SELECT function_returns('tiermeter', 'rollover', ARRAY['timestamp with time zone'], 'bigint');
SELECT function_returns('tiermeter', 'schedule_rollover', ARRAY['text'], 'bigint');
SELECT function_returns('tiermeter', 'distribute', ARRAY[]::text[], 'setof record');
SELECT function_returns('tiermeter', 'grant_access', ARRAY['regrole', 'text'], 'void');
SELECT function_returns('tiermeter', 'revoke_access', ARRAY['regrole', 'text'], 'void');

SELECT volatility_is('tiermeter', 'check_org_limits', ARRAY['text', 'text'], 'volatile');
SELECT volatility_is('tiermeter', 'format_duration', ARRAY['bigint'], 'immutable');

-- every SECURITY DEFINER function pins search_path
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_proc p
	 WHERE p.pronamespace = 'tiermeter'::regnamespace AND p.prosecdef
	   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
$$, 'every SECURITY DEFINER function pins search_path');

-- the argument defaults of docs/reference.md
SELECT is((tiermeter.check_org_limits('t-1')).feature, 'conversation_seconds', 'check defaults to conversation_seconds');
SELECT is((tiermeter.record_usage('t-1', 5)).used, 5::bigint, 'record_usage defaults to conversation_seconds');
SELECT is((tiermeter.consume('t-1', 5)).used, 10::bigint, 'consume defaults to conversation_seconds');

-- a role with no grants is refused everything
CREATE ROLE tm_tap_nobody;
SET LOCAL ROLE tm_tap_nobody;
SELECT throws_ok($$SELECT tiermeter.check_org_limits('t-1')$$, '42501', NULL, 'no access without a grant');
SELECT throws_ok($$SELECT * FROM tiermeter.usage_log$$, '42501', NULL, 'no table access without a grant');
RESET ROLE;

-- a role allowed to call the functions, but not to touch the tables, can
-- still record usage: the functions act as the extension owner
GRANT USAGE ON SCHEMA tiermeter TO tm_tap_nobody;
GRANT EXECUTE ON FUNCTION tiermeter.record_usage(text, bigint, text, text, text, timestamptz),
	tiermeter.check_org_limits(text, text) TO tm_tap_nobody;
SET LOCAL ROLE tm_tap_nobody;
SELECT is((tiermeter.record_usage('t-2', 7)).used, 7::bigint, 'record_usage works without table privileges');
SELECT is((tiermeter.check_org_limits('t-2')).used, 7::bigint, 'check works without table privileges');
SELECT throws_ok($$INSERT INTO tiermeter.usage_log VALUES ('t-2', 'conversation_seconds', 1, now())$$,
	'42501', NULL, 'but cannot write the ledger directly');
SELECT throws_ok($$UPDATE tiermeter.orgs SET tier_id = 'enterprise'$$,
	'42501', NULL, 'nor change a tier');
RESET ROLE;
SELECT is((SELECT count(*) FROM tiermeter.usage_log WHERE org_id = 't-2'), 1::bigint, 'one ledger row');

SELECT * FROM finish();
ROLLBACK;
