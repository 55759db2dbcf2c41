-- The tiermeter demo: an org on the free tier uses its conversation time up,
-- is refused, moves up a tier, and is allowed again with its usage kept.
\set ON_ERROR_STOP on
\set QUIET on
\pset footer off
SET timezone = 'UTC';
CREATE EXTENSION tiermeter;

\echo
\echo '== The seeded tiers and their monthly conversation time'
SELECT t.tier_id, t.price_cents_monthly AS price_cents,
       tiermeter.format_duration(q.quota) AS conversation_time,
       coalesce(t.max_active_sessions::text, 'unlimited') AS max_sessions
  FROM tiermeter.tiers t
  JOIN tiermeter.tier_quotas q ON q.tier_id = t.tier_id AND q.feature = 'conversation_seconds'
 ORDER BY t.rank;

\echo '== acme has never been seen: before its first conversation the backend asks'
\echo '   SELECT tiermeter.check_org_limits(''acme'')'
SELECT org_id, tier, allowed, used, quota, remaining, percent_used
  FROM tiermeter.check_org_limits('acme');

\echo '== acme talks for 40 minutes (record_usage creates it on the free tier)'
SELECT org_id, tier, allowed, used, quota, remaining, percent_used, warning
  FROM tiermeter.record_usage('acme', 2400, conversation_id => 'conv-1');

\echo '== 15 more minutes: past the 80 % threshold, a warning'
SELECT org_id, tier, allowed, used, quota, remaining, percent_used, warning
  FROM tiermeter.record_usage('acme', 900, conversation_id => 'conv-2');

\echo '== a 10-minute conversation asks to consume 600 s: it would pass the quota, refused, nothing recorded'
SELECT org_id, tier, allowed, reason, used, quota, remaining
  FROM tiermeter.consume('acme', 600, conversation_id => 'conv-3');

\echo '== the last 5 minutes fit exactly; then the hour is spent'
SELECT org_id, tier, allowed, reason, used, quota, remaining, percent_used
  FROM tiermeter.consume('acme', 300, conversation_id => 'conv-3');

\echo '== the next check refuses acme: limit_exceeded'
SELECT org_id, tier, allowed, reason, used, quota, remaining, percent_used
  FROM tiermeter.check_org_limits('acme');

\echo '== a conversation that already happened is recorded even past the quota; its retry (same idempotency key) counts once'
SELECT used FROM tiermeter.record_usage('acme', 60, idempotency_key => 'call-77');
SELECT used FROM tiermeter.record_usage('acme', 60, idempotency_key => 'call-77');

\echo '== acme subscribes to basic (5 hours a month) in Stripe; Stripe calls the webhook'
INSERT INTO tiermeter.stripe_prices VALUES ('price_basic_monthly', 'basic');
-- the event Stripe sends, for a subscription whose period is this month
SELECT jsonb_build_object(
  'id', 'evt_demo_1', 'object', 'event', 'type', 'customer.subscription.created',
  'created', extract(epoch FROM now())::bigint,
  'data', jsonb_build_object('object', jsonb_build_object(
    'id', 'sub_demo', 'object', 'subscription', 'status', 'active', 'customer', 'cus_demo',
    'metadata', jsonb_build_object('organizationId', 'acme'),
    'billing_cycle_anchor', extract(epoch FROM period_start)::bigint,
    'items', jsonb_build_object('object', 'list', 'data', jsonb_build_array(jsonb_build_object(
      'object', 'subscription_item',
      'price', jsonb_build_object('id', 'price_basic_monthly', 'lookup_key', NULL),
      'current_period_start', extract(epoch FROM period_start)::bigint,
      'current_period_end', extract(epoch FROM period_end)::bigint)))))
  )::text AS body,
  extract(epoch FROM now())::bigint AS t
  FROM tiermeter.check_org_limits('acme') \gset
-- Stripe signs "<t>.<body>" with the endpoint secret (here: openssl, as Stripe would)
\setenv DEMO_SIGNED :t.:body
\set sig `printf '%s' "$DEMO_SIGNED" | openssl dgst -sha256 -hmac whsec_demo | sed 's/.*= //'`
\echo '   the handler checks the signature, then applies the event:'
SELECT tiermeter.verify_stripe_signature(:'body', 't=' || :'t' || ',v1=' || :'sig', 'whsec_demo') AS signature_ok,
       tiermeter.verify_stripe_signature(:'body', 't=' || :'t' || ',v1=' || :'sig', 'wrong_secret') AS with_a_wrong_secret;
SELECT tiermeter.apply_subscription_event(:'body'::jsonb) AS outcome;
\echo '   Stripe retries the same event: nothing changes'
SELECT tiermeter.apply_subscription_event(:'body'::jsonb) AS outcome;
SELECT kind, payload FROM tiermeter.limit_events WHERE org_id = 'acme';

\echo '== allowed again, and the hour already used this month still counts'
SELECT org_id, tier, allowed, reason, used, quota, remaining, percent_used
  FROM tiermeter.check_org_limits('acme');
SELECT tiermeter.format_duration(used) AS used, tiermeter.format_duration(remaining) AS remaining
  FROM tiermeter.check_org_limits('acme');
