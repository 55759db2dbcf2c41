-- Stripe Checkout and the repair functions (docs/stripe.md): a
-- checkout.session.completed links its customer and subscription to the org
-- in client_reference_id (or metadata.organizationId), whichever of it and
-- the subscription's events arrives first; an unmapped event keeps its
-- payload and is re-applied once a mapping exists; link_stripe_customer,
-- link_stripe_subscription and reapply_stripe_events repair by hand.  Each
-- case in both API shapes, with events built from Stripe's own fixture
-- Subscription and Checkout Session objects (test/fixtures/stripe/fixtures3.json).
SET timezone = 'UTC';
\set SHOW_CONTEXT never
\i test/fixtures/stripe/events.sql

-- one subscription event of a scenario, in one API shape: ids get the shape
-- as a suffix; org NULL: no metadata
CREATE FUNCTION pg_temp.apply(shape text, id text, type text, created bigint, status text, price text,
	org text, customer text, sub_id text) RETURNS text
LANGUAGE sql AS $$
	SELECT tiermeter.apply_subscription_event(pg_temp.ev(id || '_' || shape, type, created,
		pg_temp.sub(status, price, current_setting('t.p0')::bigint, current_setting('t.p1')::bigint,
					CASE WHEN org IS NULL THEN '{}' ELSE jsonb_build_object('organizationId', org || '-' || shape) END,
					customer || '_' || shape, old_api => shape = 'old', sub_id => sub_id || '_' || shape)))
$$;

-- a completed Checkout Session (Stripe's fixture, mode subscription): the org
-- in client_reference_id (ref) or in the metadata; NULLs leave them out
CREATE FUNCTION pg_temp.checkout(shape text, id text, created bigint, ref text, customer text, sub_id text,
	meta jsonb DEFAULT '{}') RETURNS text
LANGUAGE sql AS $$
	SELECT tiermeter.apply_subscription_event(pg_temp.ev(id || '_' || shape, 'checkout.session.completed', created,
		(SELECT fx.session FROM fx) || jsonb_build_object(
			'id', 'cs_test_' || id || '_' || shape, 'mode', 'subscription', 'status', 'complete',
			'payment_status', 'paid', 'client_reference_id', ref || '-' || shape,
			'customer', customer || '_' || shape, 'subscription', sub_id || '_' || shape,
			'metadata', (SELECT coalesce(jsonb_object_agg(k, v #>> '{}' || '-' || shape), '{}')
						   FROM jsonb_each(meta) AS e(k, v)))))
$$;
CREATE TEMP TABLE shapes (shape text PRIMARY KEY);
INSERT INTO shapes VALUES ('new'), ('old');

INSERT INTO tiermeter.stripe_prices VALUES ('price_basic_monthly', 'basic'), ('price_pro_monthly', 'professional');
SELECT extract(epoch FROM date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::bigint AS p0,
       extract(epoch FROM (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')::bigint AS p1
\gset
SET t.p0 = :p0;
SET t.p1 = :p1;

-- the fixture really is Stripe's Checkout Session
SELECT session->>'object' AS object, session ? 'client_reference_id' AS has_client_reference_id FROM fx;

------------------------------------------------------------------------------
-- The Checkout first: its client_reference_id links the customer and the
-- subscription, and the subscription's events (no metadata) map.
------------------------------------------------------------------------------

SELECT shape, pg_temp.checkout(shape, 'evt_a1', 100, 'a', 'cus_a', 'sub_a') FROM shapes ORDER BY shape;
SELECT customer_id, org_id, linked_by, event_id FROM tiermeter.stripe_customers
 WHERE customer_id LIKE 'cus_a_%' ORDER BY 1;
SELECT subscription_id, org_id, customer_id, live, last_event_id FROM tiermeter.stripe_subscriptions
 WHERE subscription_id LIKE 'sub_a_%' ORDER BY 1;
-- the org exists, still on the default tier: nothing is billed yet
SELECT org_id, tier_id, stripe_customer_id, stripe_subscription_id FROM tiermeter.orgs
 WHERE org_id LIKE 'a-%' ORDER BY 1;
SELECT shape, pg_temp.apply(shape, 'evt_a2', 'customer.subscription.created', 101, 'active',
	'price_basic_monthly', NULL, 'cus_a', 'sub_a') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_customer_id, stripe_subscription_id FROM tiermeter.orgs
 WHERE org_id LIKE 'a-%' ORDER BY 1;

------------------------------------------------------------------------------
-- The subscription's events first (Stripe does not order events): they are
-- unmapped, their payloads kept; the Checkout re-applies them, oldest first.
------------------------------------------------------------------------------

SELECT shape, pg_temp.apply(shape, 'evt_b1', 'customer.subscription.created', 200, 'active',
	'price_basic_monthly', NULL, 'cus_b', 'sub_b') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_b2', 'customer.subscription.updated', 202, 'active',
	'price_pro_monthly', NULL, 'cus_b', 'sub_b') FROM shapes ORDER BY shape;
SELECT event_id, outcome, org_id, payload IS NOT NULL AS payload_kept FROM tiermeter.stripe_events
 WHERE event_id LIKE 'evt_b%' ORDER BY created, event_id;
SELECT org_id IS NULL AS no_org, payload->>'event_id' AS event FROM tiermeter.limit_events
 WHERE kind = 'stripe_unmapped' ORDER BY id;
SELECT shape, pg_temp.checkout(shape, 'evt_b3', 201, 'b', 'cus_b', 'sub_b') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id LIKE 'b-%' ORDER BY 1;
-- each stored event now says what it did, and a row of its own records the
-- re-application (by the Checkout's event)
SELECT event_id, type, outcome, org_id FROM tiermeter.stripe_events
 WHERE event_id LIKE 'evt_b%' ORDER BY created, event_id;
SELECT type, outcome, org_id, subscription_id, payload->>'event_id' AS event,
       payload->>'reapplied_by' AS reapplied_by
  FROM tiermeter.stripe_events WHERE type = 'tiermeter.reapply' ORDER BY payload->>'event_id';
SELECT org_id, payload->>'from' AS "from", payload->>'to' AS "to", payload->>'event_id' AS event
  FROM tiermeter.limit_events WHERE kind = 'tier_changed' AND org_id LIKE 'b-%' ORDER BY org_id, id;
-- a replay of the Checkout is a duplicate, and re-applies nothing
SELECT shape, pg_temp.checkout(shape, 'evt_b3', 201, 'b', 'cus_b', 'sub_b') FROM shapes ORDER BY shape;
SELECT count(*) AS reapplications FROM tiermeter.stripe_events WHERE type = 'tiermeter.reapply';

------------------------------------------------------------------------------
-- metadata.organizationId instead of client_reference_id; a Checkout with
-- nothing to link is ignored (recorded).
------------------------------------------------------------------------------

SELECT shape, pg_temp.checkout(shape, 'evt_c1', 300, NULL, 'cus_c', 'sub_c', '{"organizationId": "c"}')
  FROM shapes ORDER BY shape;
SELECT customer_id, org_id FROM tiermeter.stripe_customers WHERE customer_id LIKE 'cus_c_%' ORDER BY 1;
-- no org named
SELECT shape, pg_temp.checkout(shape, 'evt_c2', 301, NULL, 'cus_c2', 'sub_c2') FROM shapes ORDER BY shape;
-- a one-time payment: no customer, no subscription
SELECT shape, tiermeter.apply_subscription_event(pg_temp.ev('evt_c3_' || shape, 'checkout.session.completed', 302,
	(SELECT fx.session FROM fx) || jsonb_build_object('client_reference_id', 'c-' || shape))) FROM shapes ORDER BY shape;
SELECT event_id, type, outcome, org_id, customer_id, subscription_id FROM tiermeter.stripe_events
 WHERE event_id ~ '^evt_c[23]_' ORDER BY event_id;

------------------------------------------------------------------------------
-- An incomplete subscription before the Checkout (the first payment is still
-- pending) changes nothing and raises no alert: ignored, not unmapped.
------------------------------------------------------------------------------

SELECT shape, pg_temp.apply(shape, 'evt_d1', 'customer.subscription.created', 400, 'incomplete',
	'price_pro_monthly', NULL, 'cus_d', 'sub_d') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.checkout(shape, 'evt_d2', 401, 'd', 'cus_d', 'sub_d') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_d3', 'customer.subscription.updated', 402, 'active',
	'price_pro_monthly', NULL, 'cus_d', 'sub_d') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id LIKE 'd-%' ORDER BY 1;
SELECT count(*) AS alerts FROM tiermeter.limit_events
 WHERE kind = 'stripe_unmapped' AND payload->>'event_id' LIKE 'evt_d%';

------------------------------------------------------------------------------
-- A Checkout is more specific than a customer's link: a subscription that
-- went to the customer's org moves to the Checkout's (and both orgs are
-- recomputed).
------------------------------------------------------------------------------

-- org p's subscription claims the customer; a second subscription of that
-- customer (no metadata) goes to p too
SELECT shape, pg_temp.apply(shape, 'evt_e1', 'customer.subscription.created', 500, 'active',
	'price_basic_monthly', 'p', 'cus_e', 'sub_p') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_e2', 'customer.subscription.created', 501, 'active',
	'price_pro_monthly', NULL, 'cus_e', 'sub_q') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id ~ '^[pq]-' ORDER BY 1;
-- its Checkout names org q: sub_q moves there, p falls back on sub_p, and
-- the customer is now q's
SELECT shape, pg_temp.checkout(shape, 'evt_e3', 502, 'q', 'cus_e', 'sub_q') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id ~ '^[pq]-' ORDER BY 1;
SELECT org_id, payload->>'from' AS "from", payload->>'to' AS "to", payload->>'subscription' AS subscription,
       payload->>'event_id' AS event
  FROM tiermeter.limit_events WHERE kind = 'tier_changed' AND org_id ~ '^[pq]-' ORDER BY org_id, id;
SELECT customer_id, org_id, linked_by FROM tiermeter.stripe_customers WHERE customer_id LIKE 'cus_e_%' ORDER BY 1;

------------------------------------------------------------------------------
-- Repair by hand: link a customer or a subscription to an org, then
-- re-apply the stored unmapped events.
------------------------------------------------------------------------------

-- unmapped: no org (cus_g), then no tier (a price not in stripe_prices)
SELECT shape, pg_temp.apply(shape, 'evt_g1', 'customer.subscription.created', 600, 'active',
	'price_basic_monthly', NULL, 'cus_g', 'sub_g') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_h1', 'customer.subscription.created', 601, 'active',
	'price_team_monthly', 'h', 'cus_h', 'sub_h') FROM shapes ORDER BY shape;
-- and an event that will be older than its subscription's last one
SELECT shape, pg_temp.apply(shape, 'evt_j1', 'customer.subscription.updated', 602, 'active',
	'price_pro_monthly', NULL, 'cus_j', 'sub_j') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_j2', 'customer.subscription.updated', 603, 'active',
	'price_basic_monthly', 'j', 'cus_j', 'sub_j') FROM shapes ORDER BY shape;

-- link cus_g to org g: applied, then ignored (it already is), each audited
SELECT tiermeter.link_stripe_customer('g-' || shape, 'cus_g_' || shape) FROM shapes ORDER BY shape;
SELECT tiermeter.link_stripe_customer('g-' || shape, 'cus_g_' || shape) FROM shapes ORDER BY shape;
SELECT type, outcome, org_id, customer_id, payload->>'previous_org_id' AS previous_org,
       created = received_at AS created_when_received, event_id LIKE 'tiermeter_%' AS own_id
  FROM tiermeter.stripe_events WHERE type LIKE 'tiermeter.link%' ORDER BY customer_id, outcome;
-- the price exists now
INSERT INTO tiermeter.stripe_prices VALUES ('price_team_monthly', 'enterprise');

-- re-apply: every stored unmapped event, oldest first, with its outcome now
SELECT * FROM tiermeter.reapply_stripe_events();
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id ~ '^[ghj]-' ORDER BY 1;
-- idempotent: nothing is left to re-apply
SELECT count(*) AS again FROM tiermeter.reapply_stripe_events();
SELECT type, count(*) FROM tiermeter.stripe_events WHERE type LIKE 'tiermeter.%' GROUP BY type ORDER BY type;

-- link a subscription by hand: it moves, with its state, and both orgs are
-- recomputed; again: ignored
SELECT tiermeter.link_stripe_subscription('k-' || shape, 'sub_g_' || shape) FROM shapes ORDER BY shape;
SELECT tiermeter.link_stripe_subscription('k-' || shape, 'sub_g_' || shape) FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id ~ '^[gk]-' ORDER BY 1;
SELECT org_id, payload->>'from' AS "from", payload->>'to' AS "to", payload->>'source' AS source
  FROM tiermeter.limit_events WHERE kind = 'tier_changed' AND org_id ~ '^[gk]-' ORDER BY org_id, id;
SELECT type, outcome, org_id, subscription_id, customer_id, payload->>'previous_org_id' AS previous_org
  FROM tiermeter.stripe_events WHERE type = 'tiermeter.link_stripe_subscription' ORDER BY subscription_id, outcome;
-- the subscription's next event (no metadata) goes to k, where it belongs now
SELECT shape, pg_temp.apply(shape, 'evt_g2', 'customer.subscription.updated', 610, 'active',
	'price_pro_monthly', NULL, 'cus_g', 'sub_g') FROM shapes ORDER BY shape;
SELECT org_id, tier_id FROM tiermeter.orgs WHERE org_id ~ '^[gk]-' ORDER BY 1;
-- a subscription nothing is known of yet: linked ahead of its events
SELECT tiermeter.link_stripe_subscription('m-' || shape, 'sub_m_' || shape) FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_m1', 'customer.subscription.created', 620, 'active',
	'price_basic_monthly', NULL, 'cus_m', 'sub_m') FROM shapes ORDER BY shape;
SELECT org_id, tier_id FROM tiermeter.orgs WHERE org_id LIKE 'm-%' ORDER BY 1;

-- still no mapping: re-applying leaves the event as it was
SELECT shape, pg_temp.apply(shape, 'evt_n1', 'customer.subscription.created', 630, 'active',
	'price_basic_monthly', NULL, 'cus_n', 'sub_n') FROM shapes ORDER BY shape;
SELECT event_id, type, outcome, org_id FROM tiermeter.reapply_stripe_events();
SELECT count(*) AS alerts FROM tiermeter.limit_events
 WHERE kind = 'stripe_unmapped' AND payload->>'event_id' LIKE 'evt_n1%';

-- bad ids are errors, and change nothing
SELECT count(*) AS events_before FROM tiermeter.stripe_events \gset
SELECT tiermeter.link_stripe_customer(NULL, 'cus_x');
SELECT tiermeter.link_stripe_customer('x', NULL);
SELECT tiermeter.link_stripe_customer('x', '  ');
SELECT tiermeter.link_stripe_customer('', 'cus_x');
SELECT tiermeter.link_stripe_subscription('x', repeat('s', 256));
SELECT tiermeter.link_stripe_subscription('x', NULL);
SELECT count(*) - :events_before AS events_added, (SELECT count(*) FROM tiermeter.orgs WHERE org_id = 'x') AS x
  FROM tiermeter.stripe_events;
-- a Checkout's client_reference_id is a string
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_x1', 'checkout.session.completed', 700,
	(SELECT fx.session FROM fx) || '{"client_reference_id": 42, "customer": "cus_x"}'));
-- a customer.subscription event carries a Subscription
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_x2', 'customer.subscription.updated', 700,
	(SELECT fx.session FROM fx)));
SELECT count(*) - :events_before AS events_added FROM tiermeter.stripe_events;

-- usage is never touched by any of it
SELECT count(*) AS usage_rows FROM tiermeter.usage_log;

-- leave the database as this script found it: no Stripe state
\i test/fixtures/stripe/forget.sql
DELETE FROM tiermeter.stripe_prices WHERE price_id IN ('price_basic_monthly', 'price_pro_monthly', 'price_team_monthly');
