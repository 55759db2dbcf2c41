-- apply_subscription_event with several subscriptions per org, a customer
-- shared by two orgs, created in milliseconds and unmapped events: the cases
-- of a real account (docs/stripe.md), each in both API shapes (the period on
-- the first item, and on the subscription for API versions before
-- 2025-03-31), with events built from Stripe's own fixture Subscription
-- object (test/fixtures/stripe/fixtures3.json) as sql/stripe.sql builds them.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
\i test/fixtures/stripe/events.sql

-- one event of a scenario, in one API shape: ids get the shape as a suffix;
-- born is the subscription's own created
CREATE FUNCTION pg_temp.apply(shape text, id text, type text, created bigint, status text, price text,
	org text, customer text, sub_id text, born bigint DEFAULT 1234567890) RETURNS text
LANGUAGE sql AS $$
	SELECT tiermeter.apply_subscription_event(pg_temp.ev(id || '_' || shape, type, created,
		pg_temp.sub(status, price, current_setting('t.p0')::bigint, current_setting('t.p1')::bigint,
					CASE WHEN org IS NULL THEN '{}' ELSE jsonb_build_object('organizationId', org || '-' || shape) END,
					customer || '_' || shape, old_api => shape = 'old', sub_id => sub_id || '_' || shape)
		|| jsonb_build_object('created', born)))
$$;
CREATE TEMP TABLE shapes (shape text PRIMARY KEY);
INSERT INTO shapes VALUES ('new'), ('old');

INSERT INTO tiermeter.stripe_prices VALUES
	('price_basic_monthly', 'basic'), ('price_pro_monthly', 'professional'), ('price_ent_monthly', 'enterprise');

-- the subscriptions' period: this calendar month (UTC)
SELECT extract(epoch FROM date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::bigint AS p0,
       extract(epoch FROM (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')::bigint AS p1
\gset
SET t.p0 = :p0;
SET t.p1 = :p1;

-- both shapes really differ: the period on the item, or on the subscription
SELECT shape, e->'data'->'object' ? 'current_period_start' AS period_on_subscription,
       e->'data'->'object'->'items'->'data'->0 ? 'current_period_start' AS period_on_item
  FROM shapes, pg_temp.ev('x', 'x', 1, pg_temp.sub('active', 'p', :p0, :p1, old_api => shape = 'old')) AS e
 ORDER BY shape;

------------------------------------------------------------------------------
-- 1. An old subscription's deletion does not downgrade an org that moved on.
------------------------------------------------------------------------------

-- the org is on sub_A (basic); sub_B (professional) is created 60 s later
SELECT shape, pg_temp.apply(shape, 'evt_1a', 'customer.subscription.created', 1000, 'active',
	'price_basic_monthly', 'one', 'cus_one', 'sub_A', born => 1000) FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_1b', 'customer.subscription.created', 1060, 'active',
	'price_pro_monthly', 'one', 'cus_one', 'sub_B', born => 1060) FROM shapes ORDER BY shape;
-- sub_A is deleted: the org stays on sub_B, professional
SELECT shape, pg_temp.apply(shape, 'evt_1c', 'customer.subscription.deleted', 1100, 'canceled',
	'price_basic_monthly', 'one', 'cus_one', 'sub_A', born => 1000) FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id, stripe_customer_id,
       period_start = to_timestamp(:p0) AND period_end = to_timestamp(:p1) AS period_of_sub_b
  FROM tiermeter.orgs WHERE org_id LIKE 'one-%' ORDER BY org_id;
-- one tier change per change of tier: none for the deletion
SELECT org_id, payload->>'from' AS "from", payload->>'to' AS "to", payload->>'subscription' AS subscription,
       payload->>'event_id' AS event
  FROM tiermeter.limit_events WHERE org_id LIKE 'one-%' AND kind = 'tier_changed' ORDER BY org_id, id;
-- each subscription keeps its own state
SELECT subscription_id, org_id, status, live, tier_id, last_event_id, customer_id
  FROM tiermeter.stripe_subscriptions WHERE org_id LIKE 'one-%' ORDER BY org_id, subscription_id;

-- ties of rank: the most recently created subscription wins, whatever the
-- order its events arrive in (sub_D, created later, arrives first)
SELECT shape, pg_temp.apply(shape, 'evt_1d', 'customer.subscription.created', 1200, 'active',
	'price_pro_monthly', 'one', 'cus_one', 'sub_D', born => 1150) FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_1e', 'customer.subscription.created', 1210, 'trialing',
	'price_pro_monthly', 'one', 'cus_one', 'sub_C', born => 1140) FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id LIKE 'one-%' ORDER BY org_id;
-- sub_D and sub_B end: sub_C (professional, trialing) is what is left
SELECT shape, pg_temp.apply(shape, 'evt_1f', 'customer.subscription.deleted', 1300, 'canceled',
	'price_pro_monthly', 'one', 'cus_one', 'sub_D', born => 1150) FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_1g', 'customer.subscription.updated', 1310, 'unpaid',
	'price_pro_monthly', 'one', 'cus_one', 'sub_B', born => 1060) FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id LIKE 'one-%' ORDER BY org_id;
-- a new past_due enterprise subscription outranks the trialing professional one
SELECT shape, pg_temp.apply(shape, 'evt_1h', 'customer.subscription.created', 1400, 'past_due',
	'price_ent_monthly', 'one', 'cus_one', 'sub_E', born => 1390) FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id LIKE 'one-%' ORDER BY org_id;
-- sub_C ends (no change: sub_E is higher), then sub_E is paused: none is
-- live, the default tier; the anchor and the ids stay
SELECT shape, pg_temp.apply(shape, 'evt_1i', 'customer.subscription.deleted', 1500, 'canceled',
	'price_pro_monthly', 'one', 'cus_one', 'sub_C', born => 1140) FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_1j', 'customer.subscription.paused', 1510, 'paused',
	'price_ent_monthly', 'one', 'cus_one', 'sub_E', born => 1390) FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id, billing_anchor = to_timestamp(:p0) AS anchor_kept
  FROM tiermeter.orgs WHERE org_id LIKE 'one-%' ORDER BY org_id;
SELECT org_id, payload->>'from' AS "from", payload->>'to' AS "to", payload->>'subscription' AS subscription,
       payload->>'status' AS status, payload->>'event_id' AS event
  FROM tiermeter.limit_events WHERE org_id LIKE 'one-%' AND kind = 'tier_changed' ORDER BY org_id, id;

------------------------------------------------------------------------------
-- 2. A customer shared by two orgs does not move a subscription to the
--    wrong org.
------------------------------------------------------------------------------

-- org x's sub_X and org y's sub_Y use one customer; y claims it last
SELECT shape, pg_temp.apply(shape, 'evt_2a', 'customer.subscription.created', 2000, 'active',
	'price_basic_monthly', 'x', 'cus_shared', 'sub_X') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_2b', 'customer.subscription.created', 2010, 'active',
	'price_pro_monthly', 'y', 'cus_shared', 'sub_Y') FROM shapes ORDER BY shape;
SELECT customer_id, org_id, linked_by, event_id FROM tiermeter.stripe_customers
 WHERE customer_id LIKE 'cus_shared%' ORDER BY 1;
-- an update of sub_X without metadata goes to x, the org sub_X belongs to
SELECT shape, pg_temp.apply(shape, 'evt_2c', 'customer.subscription.updated', 2020, 'active',
	'price_ent_monthly', NULL, 'cus_shared', 'sub_X') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id, stripe_customer_id
  FROM tiermeter.orgs WHERE org_id ~ '^[xy]-' ORDER BY org_id;
-- so do sub_Y's: y
SELECT shape, pg_temp.apply(shape, 'evt_2d', 'customer.subscription.updated', 2030, 'active',
	'price_basic_monthly', NULL, 'cus_shared', 'sub_Y') FROM shapes ORDER BY shape;
-- a new subscription of the customer, without metadata: the customer's org, y
SELECT shape, pg_temp.apply(shape, 'evt_2e', 'customer.subscription.created', 2040, 'active',
	'price_pro_monthly', NULL, 'cus_shared', 'sub_Z') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id ~ '^[xy]-' ORDER BY org_id;
-- metadata naming another org moves a subscription: sub_Z to x (and y,
-- left with sub_Y, is recomputed)
SELECT shape, pg_temp.apply(shape, 'evt_2f', 'customer.subscription.updated', 2050, 'active',
	'price_pro_monthly', 'x', 'cus_shared', 'sub_Z') FROM shapes ORDER BY shape;
SELECT org_id, tier_id, stripe_subscription_id FROM tiermeter.orgs WHERE org_id ~ '^[xy]-' ORDER BY org_id;
SELECT subscription_id, org_id FROM tiermeter.stripe_subscriptions WHERE subscription_id ~ '^sub_[XYZ]_' ORDER BY 1;
-- and the org named in metadata claimed the customer
SELECT customer_id, org_id FROM tiermeter.stripe_customers WHERE customer_id LIKE 'cus_shared%' ORDER BY 1;

------------------------------------------------------------------------------
-- 5. created must be Unix seconds: milliseconds are refused, so they
--    cannot make the subscription's later events stale.
------------------------------------------------------------------------------

SELECT count(*) AS events_before FROM tiermeter.stripe_events \gset
\set VERBOSITY terse
SELECT shape, pg_temp.apply(shape, 'evt_5a', 'customer.subscription.created', extract(epoch FROM now())::bigint * 1000,
	'active', 'price_basic_monthly', 'five', 'cus_five', 'sub_five') FROM shapes WHERE shape = 'new';
SELECT shape, pg_temp.apply(shape, 'evt_5a', 'customer.subscription.created', extract(epoch FROM now())::bigint * 1000,
	'active', 'price_basic_monthly', 'five', 'cus_five', 'sub_five') FROM shapes WHERE shape = 'old';
\set VERBOSITY default
SELECT count(*) - :events_before AS events_added,
       (SELECT count(*) FROM tiermeter.stripe_subscriptions WHERE subscription_id LIKE 'sub_five%') AS subscriptions,
       (SELECT count(*) FROM tiermeter.orgs WHERE org_id LIKE 'five-%') AS orgs
  FROM tiermeter.stripe_events;
-- the events in seconds that follow apply
SELECT shape, pg_temp.apply(shape, 'evt_5b', 'customer.subscription.created', extract(epoch FROM now())::bigint - 60,
	'active', 'price_basic_monthly', 'five', 'cus_five', 'sub_five') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_5c', 'customer.subscription.updated', extract(epoch FROM now())::bigint,
	'active', 'price_pro_monthly', 'five', 'cus_five', 'sub_five') FROM shapes ORDER BY shape;
SELECT org_id, tier_id FROM tiermeter.orgs WHERE org_id LIKE 'five-%' ORDER BY org_id;

------------------------------------------------------------------------------
-- 7. An unmapped event with no org known has org_id NULL (one whose org is
--    known, but not its tier, names the org).
------------------------------------------------------------------------------

SELECT shape, pg_temp.apply(shape, 'evt_7a', 'customer.subscription.created', 7000, 'active',
	'price_basic_monthly', NULL, 'cus_seven', 'sub_seven') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_7b', 'customer.subscription.created', 7000, 'active',
	'price_unknown', 'seven', 'cus_seven2', 'sub_seven2') FROM shapes ORDER BY shape;
SELECT org_id IS NULL AS org_is_null, org_id, payload->>'event_id' AS event, payload->>'reason' AS reason
  FROM tiermeter.limit_events WHERE kind = 'stripe_unmapped' ORDER BY id;
SELECT count(*) AS empty_org_ids FROM tiermeter.limit_events WHERE org_id = '';
-- their payloads are kept, to be re-applied (sql/stripe_checkout.sql)
SELECT event_id, outcome, org_id, payload->'data'->'object'->>'id' AS payload_subscription
  FROM tiermeter.stripe_events WHERE event_id LIKE 'evt_7%' ORDER BY event_id;
-- an applied event keeps none
SELECT count(*) AS payloads_of_other_events FROM tiermeter.stripe_events
 WHERE payload IS NOT NULL AND outcome <> 'unmapped';

------------------------------------------------------------------------------
-- Ties: two events of one subscription in the same created second are
-- applied in the order they arrive (the later one wins), except after the
-- subscription's deletion, which is final.
------------------------------------------------------------------------------

SELECT shape, pg_temp.apply(shape, 'evt_8a', 'customer.subscription.updated', 8000, 'active',
	'price_pro_monthly', 'eight', 'cus_eight', 'sub_eight') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_8b', 'customer.subscription.updated', 8000, 'active',
	'price_basic_monthly', 'eight', 'cus_eight', 'sub_eight') FROM shapes ORDER BY shape;
SELECT org_id, tier_id FROM tiermeter.orgs WHERE org_id LIKE 'eight-%' ORDER BY org_id;
SELECT shape, pg_temp.apply(shape, 'evt_8c', 'customer.subscription.deleted', 8001, 'canceled',
	'price_basic_monthly', 'eight', 'cus_eight', 'sub_eight') FROM shapes ORDER BY shape;
SELECT shape, pg_temp.apply(shape, 'evt_8d', 'customer.subscription.updated', 8001, 'active',
	'price_basic_monthly', 'eight', 'cus_eight', 'sub_eight') FROM shapes ORDER BY shape;
SELECT org_id, tier_id FROM tiermeter.orgs WHERE org_id LIKE 'eight-%' ORDER BY org_id;

-- leave the database as this script found it: no Stripe state
\i test/fixtures/stripe/forget.sql
DELETE FROM tiermeter.stripe_prices WHERE price_id IN ('price_basic_monthly', 'price_pro_monthly', 'price_ent_monthly');
