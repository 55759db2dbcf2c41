-- The usage period a Stripe subscription gives its org (docs/stripe.md,
-- "Periods"): a monthly price keeps Stripe's current period exactly; any
-- other billing interval (a year, several months, a week, a day) gives
-- monthly usage periods anchored at billing_cycle_anchor, month-end clamped;
-- an event without a billing interval keeps Stripe's period when it is at
-- most a month long.  Each case in both API shapes, with events built from
-- Stripe's own fixture Subscription object (test/fixtures/stripe/fixtures3.json).
-- The dates follow the day the test runs: the output shows how each stored
-- period compares with the one expected.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
\i test/fixtures/stripe/events.sql

CREATE FUNCTION pg_temp.unix(t timestamptz) RETURNS bigint LANGUAGE sql AS $$ SELECT extract(epoch FROM t)::bigint $$;

-- The billing interval, where the API version puts it: on the first item's
-- price (price.recurring), else on its plan, else on the subscription's
-- plan (older API versions).  The fixture's item also has a plan (interval
-- month, interval_count 797691627): the price's comes first.  'none' takes
-- every one away.
CREATE FUNCTION pg_temp.billed(s jsonb, via text, rec jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	plan jsonb := s->'items'->'data'->0->'plan';
BEGIN
	IF via = 'price' THEN
		RETURN jsonb_set(s, '{items,data,0,price,recurring}', s->'items'->'data'->0->'price'->'recurring' || rec);
	END IF;
	s := jsonb_set(s, '{items,data,0,price,recurring}', 'null');
	IF via = 'item plan' THEN
		RETURN jsonb_set(s, '{items,data,0,plan}', plan || rec);
	END IF;
	s := jsonb_set(s, '{items,data,0,plan}', 'null');
	IF via = 'subscription plan' THEN
		RETURN s || jsonb_build_object('plan', plan || rec);
	END IF;
	RETURN s;					-- none
END $$;

INSERT INTO tiermeter.stripe_prices VALUES ('price_basic', 'basic');

-- Anchors: the last January 31, 12:00 UTC (its months are clamped: Feb 28
-- or 29, Mar 31, Apr 30, ...), and others a few days or weeks ago.
SELECT CASE WHEN now() >= make_timestamptz(extract(year FROM now())::int, 1, 31, 12, 0, 0, 'UTC')
			THEN make_timestamptz(extract(year FROM now())::int, 1, 31, 12, 0, 0, 'UTC')
			ELSE make_timestamptz(extract(year FROM now())::int - 1, 1, 31, 12, 0, 0, 'UTC') END AS jan31,
       date_trunc('second', now()) AS now_s
\gset
CREATE TEMP TABLE cases (
	name		text PRIMARY KEY,
	via			text,			-- where the billing interval is
	rec			jsonb,			-- the interval
	status		text,
	anchor		timestamptz,	-- billing_cycle_anchor
	ps			timestamptz,	-- Stripe's current period
	pe			timestamptz,
	monthly		boolean			-- Stripe's period is the usage period
);
INSERT INTO cases VALUES
	('yearly', 'price', '{"interval": "year", "interval_count": 1}', 'active',
		:'jan31', :'jan31', :'jan31'::timestamptz + interval '1 year', false),
	('quarterly', 'price', '{"interval": "month", "interval_count": 3}', 'active',
		:'now_s'::timestamptz - interval '50 days 7 hours', :'now_s'::timestamptz - interval '50 days 7 hours',
		:'now_s'::timestamptz - interval '50 days 7 hours' + interval '3 months', false),
	('weekly', 'price', '{"interval": "week", "interval_count": 1}', 'active',
		:'now_s'::timestamptz - interval '3 days', :'now_s'::timestamptz - interval '3 days',
		:'now_s'::timestamptz + interval '4 days', false),
	('daily', 'price', '{"interval": "day", "interval_count": 1}', 'active',
		:'now_s'::timestamptz - interval '40 days 1 hour', :'now_s'::timestamptz - interval '1 hour',
		:'now_s'::timestamptz + interval '23 hours', false),
	('monthly', 'price', '{"interval": "month", "interval_count": 1}', 'active',
		:'jan31', :'now_s'::timestamptz - interval '10 days', :'now_s'::timestamptz + interval '15 days', true),
	('monthly, 14-day trial', 'price', '{"interval": "month", "interval_count": 1}', 'trialing',
		:'now_s'::timestamptz + interval '12 days', :'now_s'::timestamptz - interval '2 days',
		:'now_s'::timestamptz + interval '12 days', true),
	('yearly, item plan', 'item plan', '{"interval": "year", "interval_count": 1}', 'active',
		:'jan31', :'jan31', :'jan31'::timestamptz + interval '1 year', false),
	('yearly, subscription plan', 'subscription plan', '{"interval": "year", "interval_count": 1}', 'active',
		:'jan31', :'jan31', :'jan31'::timestamptz + interval '1 year', false),
	('no interval, a month', 'none', NULL, 'active',
		:'jan31', :'now_s'::timestamptz - interval '10 days', :'now_s'::timestamptz + interval '15 days', true),
	('no interval, a year', 'none', NULL, 'active',
		:'jan31', :'jan31', :'jan31'::timestamptz + interval '1 year', false);
CREATE TEMP TABLE shapes (shape text PRIMARY KEY);
INSERT INTO shapes VALUES ('new'), ('old');

-- each case, in each shape: one org, one subscription
SELECT c.name, s.shape, tiermeter.apply_subscription_event(pg_temp.ev('evt_' || c.name || '_' || s.shape,
		'customer.subscription.created', pg_temp.unix(now()) - 5,
		pg_temp.billed(pg_temp.sub(c.status, 'price_basic', pg_temp.unix(c.ps), pg_temp.unix(c.pe),
									jsonb_build_object('organizationId', c.name || ' ' || s.shape),
									'cus_' || c.name || '_' || s.shape, old_api => s.shape = 'old',
									sub_id => 'sub_' || c.name || '_' || s.shape)
					   || jsonb_build_object('billing_cycle_anchor', pg_temp.unix(c.anchor)),
					   c.via, c.rec))) AS outcome
  FROM cases c, shapes s ORDER BY c.name, s.shape;

-- what each subscription was billed by
SELECT subscription_id, billing_interval, billing_interval_count
  FROM tiermeter.stripe_subscriptions ORDER BY subscription_id;

-- the stored usage period: Stripe's for a monthly price (or a period of at
-- most a month without an interval), else the month from the anchor that
-- contains now(); each a month at most, month-end clamped
SELECT o.org_id, o.tier_id,
       (o.period_start, o.period_end) = (c.ps, c.pe) AS stripes_period,
       (o.period_start, o.period_end) = (b.period_start, b.period_end) AS month_from_anchor,
       o.billing_anchor = c.anchor AS anchored,
       o.period_start <= now() AND now() < o.period_end AS contains_now,
       o.period_end <= (tiermeter.period_bounds(o.period_start, o.period_start)).period_end AS at_most_a_month
  FROM cases c
  JOIN tiermeter.orgs o ON o.org_id IN (c.name || ' new', c.name || ' old'),
	   tiermeter.period_bounds(c.anchor, now()) b
 ORDER BY o.org_id;
-- the cases are what they say
SELECT count(*) FILTER (WHERE monthly AND (o.period_start, o.period_end) = (c.ps, c.pe)) AS monthly_kept,
       count(*) FILTER (WHERE NOT monthly AND (o.period_start, o.period_end) = (b.period_start, b.period_end)
							AND (o.period_start, o.period_end) <> (c.ps, c.pe)) AS others_monthly,
       count(*) AS orgs
  FROM cases c
  JOIN tiermeter.orgs o ON o.org_id IN (c.name || ' new', c.name || ' old'),
	   tiermeter.period_bounds(c.anchor, now()) b;

-- the January 31 anchor: each month starts and ends on a month's last day
-- (Feb 28 or 29, Mar 31, Apr 30, ...) at 12:00
SELECT o.org_id,
       o.period_start = date_trunc('month', o.period_start) + interval '1 month' - interval '12 hours'
			AS starts_on_a_months_last_day,
       o.period_end = date_trunc('month', o.period_end) + interval '1 month' - interval '12 hours'
			AS ends_on_the_next_months_last_day,
       date_trunc('month', o.period_end) = date_trunc('month', o.period_start) + interval '1 month' AS next_month
  FROM tiermeter.orgs o WHERE o.org_id LIKE 'yearly%' ORDER BY o.org_id;

-- usage of the yearly org: what it used in the usage month before this one
-- (inside the same billing year or not) does not count against this month
SELECT used FROM tiermeter.record_usage('yearly new', 17000,
	occurred_at => (SELECT o.period_start - interval '1 hour' FROM tiermeter.orgs o WHERE o.org_id = 'yearly new'));
SELECT used FROM tiermeter.record_usage('yearly new', 1000);
SELECT l.tier, l.used, l.quota, (l.period_start, l.period_end) = (o.period_start, o.period_end) AS in_the_stored_period
  FROM tiermeter.check_org_limits('yearly new') l, tiermeter.orgs o WHERE o.org_id = 'yearly new';

-- the stored period moves on from the anchor, month by month
SELECT period_end AS yearly_end FROM tiermeter.orgs WHERE org_id = 'yearly new' \gset
SELECT tiermeter.rollover(:'yearly_end') > 0 AS moved;
SELECT o.period_start = :'yearly_end' AS starts_where_the_last_ended,
       (o.period_start, o.period_end) = (b.period_start, b.period_end) AS next_month_from_anchor
  FROM tiermeter.orgs o, tiermeter.period_bounds(:'jan31', :'yearly_end') b WHERE o.org_id = 'yearly new';

-- cancelled: the default tier, the anchor kept, the period still a month
SELECT s.shape, tiermeter.apply_subscription_event(pg_temp.ev('evt_yearly_end_' || s.shape,
		'customer.subscription.deleted', pg_temp.unix(now()),
		pg_temp.billed(pg_temp.sub('canceled', 'price_basic', pg_temp.unix(c.ps), pg_temp.unix(c.pe),
									jsonb_build_object('organizationId', c.name || ' ' || s.shape),
									'cus_' || c.name || '_' || s.shape, old_api => s.shape = 'old',
									sub_id => 'sub_' || c.name || '_' || s.shape)
					   || jsonb_build_object('billing_cycle_anchor', pg_temp.unix(c.anchor)),
					   c.via, c.rec))) AS outcome
  FROM cases c, shapes s WHERE c.name = 'yearly' ORDER BY s.shape;
SELECT o.org_id, o.tier_id, o.billing_anchor = :'jan31' AS anchor_kept,
       o.period_end <= (tiermeter.period_bounds(o.period_start, o.period_start)).period_end AS at_most_a_month
  FROM tiermeter.orgs o WHERE o.org_id LIKE 'yearly %' ORDER BY o.org_id;

-- a billing interval that is not a string, or a count that is not a
-- positive integer, is malformed
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_bad_interval', 'customer.subscription.created', 100,
	pg_temp.billed(pg_temp.sub('active', 'price_basic', pg_temp.unix(now()), pg_temp.unix(now()) + 86400,
							   '{"organizationId": "bad"}'), 'price', '{"interval": 12}')));
SELECT tiermeter.apply_subscription_event(pg_temp.ev('evt_bad_count', 'customer.subscription.created', 100,
	pg_temp.billed(pg_temp.sub('active', 'price_basic', pg_temp.unix(now()), pg_temp.unix(now()) + 86400,
							   '{"organizationId": "bad"}'), 'item plan', '{"interval": "year", "interval_count": 0.5}')));
SELECT count(*) AS bad FROM tiermeter.orgs WHERE org_id = 'bad';

-- leave the database as this script found it: no Stripe state
\i test/fixtures/stripe/forget.sql
DELETE FROM tiermeter.stripe_prices WHERE price_id IN ('price_basic');
