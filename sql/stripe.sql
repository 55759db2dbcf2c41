-- apply_subscription_event: realistic event sequences built from Stripe's own
-- fixture Subscription object (test/fixtures/stripe/fixtures3.json), in both API
-- shapes.  Usage is never touched by any of them.
SET timezone = 'UTC';
\i test/fixtures/stripe/events.sql

-- the fixture really is Stripe's object, in the current shape
SELECT sub->>'object' AS object, sub ? 'current_period_start' AS period_on_subscription,
       sub->'items'->'data'->0 ? 'current_period_start' AS period_on_item
  FROM fx;

INSERT INTO tiermeter.stripe_prices VALUES
	('price_basic_monthly', 'basic'), ('price_pro_monthly', 'professional'), ('pro_lookup', 'professional');

-- the subscription's period: this calendar month (UTC), so that usage
-- recorded now falls in it whatever day the test runs
SELECT extract(epoch FROM date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::bigint AS p0,
       extract(epoch FROM (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')::bigint AS p1
\gset

-- acme has used 3000 s before subscribing
SELECT used FROM tiermeter.record_usage('acme', 3000);

-- created -> updated (upgrade) -> updated (downgrade) -> deleted
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_1', 'customer.subscription.created', 1000,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"organizationId": "acme"}')));
SELECT tier_id, stripe_customer_id, stripe_subscription_id,
       billing_anchor = to_timestamp(:p0) AS anchor_set,
       period_start = to_timestamp(:p0) AND period_end = to_timestamp(:p1) AS period_set
  FROM tiermeter.orgs WHERE org_id = 'acme';
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_2', 'customer.subscription.updated', 2000,
	pg_temp.sub('active', 'price_pro_monthly', :p0, :p1, '{"organizationId": "acme"}')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'acme';
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_3', 'customer.subscription.updated', 3000,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"organizationId": "acme"}')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'acme';
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_4', 'customer.subscription.deleted', 4000,
	pg_temp.sub('canceled', 'price_basic_monthly', :p0, :p1, '{"organizationId": "acme"}')));
-- cancelled: the default tier, the anchor kept
SELECT tier_id, billing_anchor = to_timestamp(:p0) AS anchor_kept FROM tiermeter.orgs WHERE org_id = 'acme';
SELECT payload->>'from' AS "from", payload->>'to' AS "to", payload->>'source' AS source, payload->>'event_id' AS event
  FROM tiermeter.limit_events WHERE org_id = 'acme' AND kind = 'tier_changed' ORDER BY id;
-- the usage is all still there
SELECT sum(amount) AS usage_kept FROM tiermeter.usage_log WHERE org_id = 'acme';

-- a replay is a duplicate and changes nothing, however late
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_2', 'customer.subscription.updated', 2000,
	pg_temp.sub('active', 'price_pro_monthly', :p0, :p1, '{"organizationId": "acme"}')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'acme';

-- out of order: updated arrives before created; then an older update after a newer one
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_b2', 'customer.subscription.updated', 2000,
	pg_temp.sub('active', 'price_pro_monthly', :p0, :p1, '{"org_id": "beta"}', 'cus_beta', sub_id => 'sub_beta')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_b1', 'customer.subscription.created', 1000,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "beta"}', 'cus_beta', sub_id => 'sub_beta')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_b4', 'customer.subscription.updated', 4000,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "beta"}', 'cus_beta', sub_id => 'sub_beta')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_b3', 'customer.subscription.updated', 3000,
	pg_temp.sub('active', 'price_pro_monthly', :p0, :p1, '{"org_id": "beta"}', 'cus_beta', sub_id => 'sub_beta')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'beta';

-- later events without metadata find the org their subscription belongs to
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_b5', 'customer.subscription.updated', 5000,
	pg_temp.sub('active', 'price_pro_monthly', :p0, :p1, '{}', 'cus_beta', sub_id => 'sub_beta')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'beta';

-- the statuses, one event after another
CREATE FUNCTION pg_temp.statuses(p0 bigint, p1 bigint) RETURNS TABLE (status text, outcome text, tier text)
LANGUAGE plpgsql AS $$
DECLARE
	n int := 0;
BEGIN
	FOREACH status IN ARRAY ARRAY['incomplete', 'trialing', 'past_due', 'unpaid', 'active', 'canceled',
								  'active', 'incomplete_expired', 'active', 'paused', 'something_new']
	LOOP
		n := n + 1;
		outcome := tiermeter.apply_subscription_event(pg_temp.ev('evt_s' || n, 'customer.subscription.updated',
			6000 + n, pg_temp.sub(status, 'price_pro_monthly', p0, p1, '{"org_id": "gamma"}', 'cus_gamma',
								  sub_id => 'sub_gamma')));
		SELECT o.tier_id INTO tier FROM tiermeter.orgs o WHERE o.org_id = 'gamma';
		RETURN NEXT;
	END LOOP;
END $$;
SELECT * FROM pg_temp.statuses(:p0, :p1);
-- incomplete did not count as the last applied event
SELECT last_event_id FROM tiermeter.stripe_subscriptions WHERE subscription_id = 'sub_gamma';
-- paused and resumed events
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_g_p', 'customer.subscription.paused', 7000,
	pg_temp.sub('paused', 'price_pro_monthly', :p0, :p1, '{"org_id": "gamma"}', 'cus_gamma', sub_id => 'sub_gamma')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'gamma';
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_g_r', 'customer.subscription.resumed', 7001,
	pg_temp.sub('active', 'price_pro_monthly', :p0, :p1, '{"org_id": "gamma"}', 'cus_gamma', sub_id => 'sub_gamma')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'gamma';

-- tier resolution: lookup key, metadata.tier, and nothing at all
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_d1', 'customer.subscription.created', 100,
	pg_temp.sub('active', 'price_unknown', :p0, :p1, '{"org_id": "delta"}', 'cus_delta', 'pro_lookup', sub_id => 'sub_delta')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'delta';
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_d2', 'customer.subscription.updated', 200,
	pg_temp.sub('active', 'price_unknown', :p0, :p1, '{"org_id": "delta", "tier": "enterprise"}', 'cus_delta', sub_id => 'sub_delta')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'delta';
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_d3', 'customer.subscription.updated', 300,
	pg_temp.sub('active', 'price_unknown', :p0, :p1, '{"org_id": "delta"}', 'cus_delta', sub_id => 'sub_delta')));
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'delta';
SELECT kind, payload->>'event_id' AS event, payload->>'reason' AS reason
  FROM tiermeter.limit_events WHERE kind = 'stripe_unmapped' ORDER BY id;

-- an unknown customer without metadata: unmapped, with an admin event
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u1', 'customer.subscription.created', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{}', 'cus_nobody', sub_id => 'sub_nobody')));
SELECT count(*) AS stripe_unmapped_events FROM tiermeter.limit_events WHERE kind = 'stripe_unmapped';

-- other event types are ignored, but recorded
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_o1', 'invoice.paid', 100,
	'{"object": "invoice", "id": "in_1", "customer": "cus_beta"}'));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_o2', 'customer.subscription.trial_will_end', 100,
	pg_temp.sub('trialing', 'price_pro_monthly', :p0, :p1, '{"org_id": "beta"}', 'cus_beta', sub_id => 'sub_beta')));

-- the older API shape: the period on the subscription, not on its items
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_old', 'customer.subscription.created', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "epsilon"}', 'cus_eps',
				old_api => true, sub_id => 'sub_eps')));
SELECT tier_id, period_start = to_timestamp(:p0) AND period_end = to_timestamp(:p1) AS period_from_subscription
  FROM tiermeter.orgs WHERE org_id = 'epsilon';

-- a customer id is linked to at most one org: the latest to claim it (an
-- org still shows the customer of its own subscription)
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_z1', 'customer.subscription.created', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "zeta"}', 'cus_beta', sub_id => 'sub_zeta')));
SELECT customer_id, org_id FROM tiermeter.stripe_customers WHERE customer_id = 'cus_beta';
SELECT org_id, stripe_customer_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id IN ('beta', 'zeta') ORDER BY org_id;

-- every event is on record, with its outcome
SELECT event_id, type, extract(epoch FROM created) AS created, org_id, subscription_id, outcome,
       received_at <= now() AS received
  FROM tiermeter.stripe_events ORDER BY created, event_id;

-- malformed events are errors, and change nothing
SELECT count(*) AS events_before FROM tiermeter.stripe_events \gset
SELECT tiermeter.apply_subscription_event(NULL);
SELECT tiermeter.apply_subscription_event('[1, 2]');
SELECT tiermeter.apply_subscription_event('"evt"');
SELECT tiermeter.apply_subscription_event('{"type": "customer.subscription.updated", "created": 1, "data": {"object": {}}}');
SELECT tiermeter.apply_subscription_event('{"id": "evt_x", "created": 1, "data": {"object": {}}}');
SELECT tiermeter.apply_subscription_event('{"id": "evt_x", "type": "customer.subscription.updated", "created": 1}');
SELECT tiermeter.apply_subscription_event('{"id": "evt_x", "type": "customer.subscription.updated", "created": 1, "data": {"object": []}}');
SELECT tiermeter.apply_subscription_event('{"id": "evt_x", "type": "customer.subscription.updated", "data": {"object": {}}}');
-- the fixture's own item period ends before it starts: an error
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_bad', 'customer.subscription.updated', 100, (SELECT sub FROM fx)));
SELECT count(*) - :events_before AS events_added FROM tiermeter.stripe_events;

-- through all of it, acme's usage: counted in the period Stripe set
SELECT org_id, tier, used, quota FROM tiermeter.check_org_limits('acme');

-- Stripe's input is checked: timestamps are integer Unix seconds, created at
-- most a day ahead, metadata naming an org or a tier holds strings, ids are
-- short; each is an error and changes nothing
SELECT count(*) AS events_before FROM tiermeter.stripe_events \gset
SELECT tiermeter.apply_subscription_event('{"id": "evt_s1", "type": "customer.subscription.updated", "created": "1700000000", "data": {"object": {}}}');
SELECT tiermeter.apply_subscription_event('{"id": "evt_s2", "type": "customer.subscription.updated", "created": 1700000000.5, "data": {"object": {}}}');
SELECT tiermeter.apply_subscription_event('{"id": "evt_s3", "type": "customer.subscription.updated", "created": -1, "data": {"object": {}}}');
-- (these two depend on the clock: the message only)
\set VERBOSITY terse
SELECT tiermeter.apply_subscription_event(jsonb_build_object('id', 'evt_s4', 'type', 'customer.subscription.updated',
	'created', extract(epoch FROM now())::bigint * 1000, 'data', '{"object": {}}'::jsonb));
SELECT tiermeter.apply_subscription_event(jsonb_build_object('id', 'evt_s4', 'type', 'customer.subscription.updated',
	'created', extract(epoch FROM now() + interval '2 days')::bigint, 'data', '{"object": {}}'::jsonb));
\set VERBOSITY default
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_s5', 'customer.subscription.updated', 100,
	jsonb_set(pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "theta"}'),
			  '{items,data,0,current_period_end}', to_jsonb(:p1::text))));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_s6', 'customer.subscription.updated', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, 1000000000000000, '{"org_id": "theta"}')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_s7', 'customer.subscription.updated', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"organizationId": {"a": 1}}')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_s8', 'customer.subscription.updated', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "theta", "tier": 3}')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev(repeat('e', 256), 'customer.subscription.updated', 100,
	pg_temp.sub('active', 'price_basic_monthly', :p0, :p1, '{"org_id": "theta"}')));
SELECT count(*) - :events_before AS events_added FROM tiermeter.stripe_events;
SELECT count(*) AS theta FROM tiermeter.orgs WHERE org_id = 'theta';
