-- What the data filled by fill.sql answers.  scripts/upgrade.sh runs it on
-- the oldest released SQL under the new library, after an update that rolled
-- back, and after the update: each time the output must equal
-- expected/answers.out, which the oldest release itself gave.  It changes
-- nothing (calls that write run in transactions that roll back).
\set ON_ERROR_STOP 1
SET timezone = 'UTC';
SELECT extract(epoch FROM date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::bigint AS p0
\gset
\set cols 'org_id, tier, feature, allowed, reason, used, quota, remaining, percent_used, warning, unlimited, pg_temp.lbl(period_start) AS period_start, pg_temp.lbl(period_end) AS period_end'

-- times as labels, so that the output is the same whatever day it runs
CREATE FUNCTION pg_temp.lbl(ts timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT CASE
		WHEN ts IS NULL THEN NULL
		WHEN ts = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' THEN 'month start'
		WHEN ts = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC' THEN 'next month start'
		WHEN ts > now() - interval '1 hour' AND ts <= now() THEN 'just now'
		WHEN ts > now() - interval '40 days 1 hour' AND ts <= now() - interval '40 days' THEN '40 days ago'
		ELSE ts::text END
$$;

-- the limit status of every org and feature that has something to show
SELECT :cols FROM (VALUES ('o-free'), ('o-half'), ('o-full'), ('o-basic'), ('o-pro'), ('o-ent'), ('o-team'),
		('o-late'), ('o-stripe'), ('o-gone'), ('o-unknown')) AS o(id),
	LATERAL tiermeter.check_org_limits(o.id) ORDER BY 1;
SELECT :cols FROM (VALUES ('o-free', 'documents'), ('o-free', 'exports'), ('o-basic', 'web_scrapes'),
		('o-basic', 'users'), ('o-pro', 'reports'), ('o-pro', 'images'), ('o-pro', 'api_access'),
		('o-team', 'exports'), ('o-ent', 'multipage_scrapes')) AS o(id, f),
	LATERAL tiermeter.check_org_limits(o.id, o.f) ORDER BY 1, 3;

-- the usage endpoint's shape
SELECT tiermeter.usage_stats(id) - 'current_period' AS stats,
       pg_temp.lbl((tiermeter.usage_stats(id)->'current_period'->>'start')::timestamptz) AS period_start
  FROM (VALUES ('o-free'), ('o-stripe'), ('o-ent')) AS o(id) ORDER BY id;

-- pure functions
SELECT tiermeter.format_duration(s) FROM (VALUES (NULL::bigint), (0), (59), (2700), (3600), (3900)) AS v(s);
SELECT period_start, period_end
  FROM tiermeter.period_bounds('2025-01-31 12:00+00', '2025-03-05 00:00+00');
SELECT tiermeter.verify_stripe_signature('{"id":"evt_sig","object":"event"}',
	't=1700000000,v1=db01f43cf2ef1dc4f510ec8a89fec3a776f127399334f70cc7562186d2cc5ebe',
	'whsec_upgrade', 300, to_timestamp(1700000100)) AS valid,
       tiermeter.verify_stripe_signature('{"id":"evt_sig","object":"event"}',
	't=1700000000,v1=db01f43cf2ef1dc4f510ec8a89fec3a776f127399334f70cc7562186d2cc5ebe',
	'whsec_upgrade', 300, to_timestamp(1700000400)) AS too_old;

-- the write paths, rolled back: a repeated key counts nothing, consume
-- refuses past the quota, a replayed event is a duplicate
BEGIN;
SELECT :cols FROM tiermeter.record_usage('o-free', 600, conversation_id => 'c1', idempotency_key => 'k1');
SELECT :cols FROM tiermeter.consume('o-full', 1);
SELECT :cols FROM tiermeter.record_usage('o-full', 100);
SELECT :cols FROM tiermeter.consume('o-basic', 100);
SELECT tiermeter.apply_subscription_event('{"id": "evt_u2", "type": "customer.subscription.updated", "created": 1, "data": {"object": {}}}');
ROLLBACK;

-- the tables, as a user reads them
SELECT org_id, tier_id, pg_temp.lbl(billing_anchor) AS anchor, pg_temp.lbl(period_start) AS period_start,
       pg_temp.lbl(period_end) AS period_end, stripe_customer_id, stripe_subscription_id
  FROM tiermeter.orgs ORDER BY org_id;
SELECT * FROM tiermeter.org_quotas ORDER BY org_id, feature;
SELECT org_id, feature, amount, reason, pg_temp.lbl(granted_at) AS granted_at
  FROM tiermeter.usage_grants ORDER BY org_id, feature, amount;
SELECT org_id, feature, amount, pg_temp.lbl(occurred_at) AS occurred_at, conversation_id, idempotency_key
  FROM tiermeter.usage_log ORDER BY org_id, feature, amount, idempotency_key;
-- threshold_reached events are new in 0.2.0's library (0.1.0 wrote none,
-- so the rows 0.1.0 gave are all the others); sql/thresholds.sql tests them
SELECT org_id, kind, feature, threshold, payload FROM tiermeter.limit_events
 WHERE kind <> 'threshold_reached' ORDER BY id;
SELECT event_id, type, outcome, org_id, subscription_id, customer_id
  FROM tiermeter.stripe_events ORDER BY event_id;
SELECT subscription_id, org_id, last_created - to_timestamp(:p0) AS after_p0, last_event_id
  FROM tiermeter.stripe_subscriptions ORDER BY 1;
SELECT * FROM tiermeter.tiers ORDER BY rank;
SELECT * FROM tiermeter.features ORDER BY feature;
SELECT * FROM tiermeter.tier_quotas ORDER BY tier_id, feature;
SELECT * FROM tiermeter.stripe_prices ORDER BY price_id;
SELECT * FROM tiermeter.alert_thresholds ORDER BY percent;
