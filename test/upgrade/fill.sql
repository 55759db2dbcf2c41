-- Fills a database whose tiermeter was created at the oldest released
-- version the way a live one is: edited config rows, orgs on several tiers,
-- usage with idempotency keys and conversation ids, grants and overrides,
-- Stripe state (applied, stale, duplicate, ignored and unmapped events) and
-- limit events.  Run by scripts/upgrade.sh, from the project's top folder.
\set ON_ERROR_STOP 1
SET timezone = 'UTC';
\set fixtures `cat test/fixtures/stripe/fixtures3.json`

-- config edits: a changed quota, a new feature, a new tier, a threshold, prices
UPDATE tiermeter.tier_quotas SET quota = 4000
 WHERE tier_id = 'free' AND feature = 'conversation_seconds';
INSERT INTO tiermeter.features VALUES ('exports', 'period', 'exports', 'CSV exports per period');
INSERT INTO tiermeter.tiers VALUES ('team', 'Team', 10, 19900, 5400, 5, false);
INSERT INTO tiermeter.tier_quotas VALUES
	('free', 'exports', 2), ('basic', 'exports', 20), ('professional', 'exports', NULL),
	('enterprise', 'exports', NULL), ('team', 'conversation_seconds', 36000), ('team', 'exports', 50);
INSERT INTO tiermeter.alert_thresholds VALUES (50);
INSERT INTO tiermeter.stripe_prices VALUES ('price_basic_monthly', 'basic'), ('team_lookup', 'team');
-- seeded rows deleted (a later version remembers them for restores)
DELETE FROM tiermeter.tier_quotas WHERE tier_id = 'free' AND feature = 'images';
DELETE FROM tiermeter.alert_thresholds WHERE percent = 100;

-- a free org: keyed usage (one key sent twice), conversations, consume
SELECT used FROM tiermeter.record_usage('o-free', 600, conversation_id => 'c1', idempotency_key => 'k1');
SELECT used FROM tiermeter.record_usage('o-free', 600, conversation_id => 'c1', idempotency_key => 'k1');
SELECT used FROM tiermeter.record_usage('o-free', 400, conversation_id => 'c2', idempotency_key => 'k2');
SELECT used, allowed FROM tiermeter.consume('o-free', 500, conversation_id => 'c3');
SELECT used FROM tiermeter.record_usage('o-free', 2, 'documents');

-- past the lowest warning threshold (50, added above)
SELECT used, warning FROM tiermeter.record_usage('o-half', 2400);

-- a free org at its limit: the last consume is refused
SELECT used, allowed FROM tiermeter.consume('o-full', 4000);
SELECT used, allowed, reason FROM tiermeter.consume('o-full', 1);

-- set by hand: basic, professional with an override and a grant, enterprise, team
SELECT tiermeter.set_org_tier('o-basic', 'basic');
SELECT used FROM tiermeter.record_usage('o-basic', 5000);
SELECT used FROM tiermeter.record_usage('o-basic', 10, 'web_scrapes', idempotency_key => 'scrape-1');
SELECT used FROM tiermeter.record_usage('o-basic', 2, 'users');
SELECT used FROM tiermeter.record_usage('o-basic', -1, 'users');
SELECT tiermeter.set_org_tier('o-pro', 'professional');
SELECT tiermeter.set_org_quota('o-pro', 'reports', 8);
SELECT tiermeter.set_org_quota('o-pro', 'images', NULL);
SELECT used FROM tiermeter.record_usage('o-pro', 3, 'reports');
SELECT quota FROM tiermeter.grant_usage('o-pro', 1000, reason => 'support ticket 7');
SELECT used FROM tiermeter.record_usage('o-pro', 60000);
SELECT tiermeter.set_org_tier('o-ent', 'enterprise');
SELECT used FROM tiermeter.record_usage('o-ent', 123456);
SELECT tiermeter.set_org_tier('o-team', 'team');
SELECT used FROM tiermeter.record_usage('o-team', 5, 'exports');

-- late usage: dated in the previous period, it does not count now
SELECT used FROM tiermeter.record_usage('o-late', 700, occurred_at => now() - interval '40 days');
SELECT used FROM tiermeter.record_usage('o-late', 30);

-- Stripe: events built from Stripe's own Subscription object
CREATE TEMP TABLE fx AS SELECT (:'fixtures'::jsonb)->'resources' AS r;
SELECT extract(epoch FROM date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::bigint AS p0,
       extract(epoch FROM (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')::bigint AS p1
\gset
CREATE FUNCTION pg_temp.ev(id text, type text, created bigint, status text, price text,
	lookup_key text, meta jsonb, customer text, sub_id text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	s jsonb := (SELECT fx.r->'subscription' FROM fx);
BEGIN
	s := s || jsonb_build_object('id', sub_id, 'status', status, 'metadata', meta,
								 'customer', customer, 'billing_cycle_anchor', current_setting('fill.p0')::bigint);
	s := jsonb_set(s, '{items,data,0,price,id}', to_jsonb(price));
	s := jsonb_set(s, '{items,data,0,price,lookup_key}', coalesce(to_jsonb(lookup_key), 'null'));
	s := jsonb_set(s, '{items,data,0,current_period_start}', to_jsonb(current_setting('fill.p0')::bigint));
	s := jsonb_set(s, '{items,data,0,current_period_end}', to_jsonb(current_setting('fill.p1')::bigint));
	RETURN jsonb_build_object('id', id, 'object', 'event', 'api_version', '2025-03-31.basil',
		'created', created, 'livemode', false, 'type', type, 'data', jsonb_build_object('object', s));
END $$;
SET fill.p0 = :p0;
SET fill.p1 = :p1;

SELECT used FROM tiermeter.record_usage('o-stripe', 2000, conversation_id => 'c9');
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u1', 'customer.subscription.created', :p0 + 100,
	'active', 'price_basic_monthly', NULL, '{"organizationId": "o-stripe"}', 'cus_U1', 'sub_U1'));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u2', 'customer.subscription.updated', :p0 + 200,
	'active', 'price_other', 'team_lookup', '{}', 'cus_U1', 'sub_U1'));
-- older than the last applied one: stale
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u3', 'customer.subscription.updated', :p0 + 150,
	'active', 'price_basic_monthly', NULL, '{}', 'cus_U1', 'sub_U1'));
-- a replay: duplicate
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u2', 'customer.subscription.updated', :p0 + 200,
	'active', 'price_other', 'team_lookup', '{}', 'cus_U1', 'sub_U1'));
-- no org known for this customer: unmapped (and a stripe_unmapped event)
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u4', 'customer.subscription.created', :p0 + 300,
	'active', 'price_basic_monthly', NULL, '{}', 'cus_nobody', 'sub_U4'));
-- another type: ignored, still recorded
SELECT tiermeter.apply_subscription_event(jsonb_build_object('id', 'evt_u5', 'type', 'invoice.paid',
	'created', :p0 + 400, 'data', jsonb_build_object('object', (SELECT fx.r->'invoice' FROM fx))));
-- an org whose subscription was deleted is back on the default tier
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u6', 'customer.subscription.created', :p0 + 500,
	'active', 'price_basic_monthly', NULL, '{"org_id": "o-gone"}', 'cus_U6', 'sub_U6'));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_u7', 'customer.subscription.deleted', :p0 + 600,
	'canceled', 'price_basic_monthly', NULL, '{"org_id": "o-gone"}', 'cus_U6', 'sub_U6'));

-- rollover has nothing to move: every stored period contains now()
SELECT tiermeter.rollover();
