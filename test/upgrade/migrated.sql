-- What an update from the oldest release migrates on purpose (CHANGELOG.md):
-- the seeded config keys fill.sql deleted are remembered for restores.
\set ON_ERROR_STOP 1
SELECT tbl, key FROM tiermeter._deleted_seeds ORDER BY tbl, key::text;
-- a stripe_unmapped event with no org known has org_id NULL (0.1.0 wrote '')
SELECT kind, org_id IS NULL AS org_is_null, payload->>'event_id' AS event
  FROM tiermeter.limit_events WHERE kind = 'stripe_unmapped' ORDER BY id;
-- each customer's org, as 0.1.0 kept it on orgs.stripe_customer_id
SELECT customer_id, org_id, linked_by, event_id FROM tiermeter.stripe_customers ORDER BY customer_id;
-- each subscription's state: its org's tier, period and anchor when it is
-- the org's current subscription, live unless its org is on the default tier
-- or its last event deleted it; its customer from its last event
SELECT s.subscription_id, s.org_id, s.customer_id, s.status, s.live, s.tier_id,
       (s.period_start, s.period_end, s.billing_cycle_anchor) = (o.period_start, o.period_end, o.billing_anchor)
		AS orgs_period_and_anchor,
       s.billing_interval, s.subscription_created
  FROM tiermeter.stripe_subscriptions s LEFT JOIN tiermeter.orgs o ON o.org_id = s.org_id
 ORDER BY s.subscription_id;
-- no event kept a payload (0.1.0 stored none)
SELECT count(*) AS payloads FROM tiermeter.stripe_events WHERE payload IS NOT NULL;
