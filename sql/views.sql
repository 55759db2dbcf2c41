-- The analysts' views: org_usage, tier_summary, orgs_near_limit.  They
-- answer from the tables, as check_org_limits does, for every org at once.
SET timezone = 'UTC';
SELECT used FROM tiermeter.record_usage('v-1', 1000);
SELECT used FROM tiermeter.record_usage('v-1', 2, 'users');
SELECT used FROM tiermeter.record_usage('v-2', 3000);
SELECT tiermeter.set_org_tier('v-3', 'enterprise');
SELECT used FROM tiermeter.record_usage('v-3', 50000);
SELECT tiermeter.set_org_quota('v-4', 'conversation_seconds', 100);
SELECT used FROM tiermeter.record_usage('v-4', 150);
SELECT used, quota FROM tiermeter.grant_usage('v-5', 600);
SELECT used FROM tiermeter.record_usage('v-5', 4000);

SELECT org_id, tier, feature, used, quota, remaining, percent_used
  FROM tiermeter.org_usage
 WHERE org_id LIKE 'v-%' AND feature IN ('conversation_seconds', 'users', 'reports')
 ORDER BY org_id, feature;

-- every row is what check_org_limits answers (all orgs of the database:
-- the ones this script made, and any others)
SELECT count(*) FILTER (WHERE v.org_id LIKE 'v-%') AS rows_of_this_script,
       count(*) FILTER (WHERE (v.tier, v.period_start, v.period_end, v.used, v.quota, v.remaining, v.percent_used)
                      IS DISTINCT FROM (c.tier, c.period_start, c.period_end, c.used, c.quota, c.remaining, c.percent_used)) AS different
  FROM tiermeter.org_usage v, tiermeter.check_org_limits(v.org_id, v.feature) c;

-- per tier and feature: a tier of its own, three orgs on it, one at its
-- limit; a tier with no org has zeros
INSERT INTO tiermeter.tiers (tier_id, display_name, rank, price_cents_monthly) VALUES ('vt', 'Views', 20, 0);
INSERT INTO tiermeter.tier_quotas VALUES ('vt', 'conversation_seconds', 1000);
INSERT INTO tiermeter.tiers (tier_id, display_name, rank, price_cents_monthly) VALUES ('vt-empty', 'Nobody', 21, 0);
SELECT tiermeter.set_org_tier('v-' || i, 'vt') FROM generate_series(6, 8) i;
SELECT used FROM tiermeter.record_usage('v-6', 100);
SELECT used FROM tiermeter.record_usage('v-7', 450);
SELECT used FROM tiermeter.record_usage('v-8', 1000);
SELECT tier, feature, orgs, total_used, avg_percent_used, orgs_at_limit
  FROM tiermeter.tier_summary
 WHERE tier IN ('vt', 'vt-empty') AND feature IN ('conversation_seconds', 'reports') ORDER BY tier, feature;

-- at or past 80 % of a feature the tier includes
SELECT org_id, tier, feature, used, quota, percent_used
  FROM tiermeter.orgs_near_limit WHERE org_id LIKE 'v-%' ORDER BY org_id, feature;

-- usage_history: one row per org, period feature and period, closed or open.
-- Usage dated last month lands in last month's row; the tier is the one the
-- org was on at each period's end (its tier_changed events say when it moved)
SELECT tiermeter.set_org_tier('v-9', 'basic');
SELECT used FROM tiermeter.record_usage('v-9', 500);
SELECT used FROM tiermeter.record_usage('v-9', 40,
	occurred_at => (SELECT period_start FROM tiermeter.check_org_limits('v-9')) - interval '1 day');
-- the org moved from free to basic this period: last period it was on free
UPDATE tiermeter.limit_events SET created_at = (SELECT period_start FROM tiermeter.check_org_limits('v-9')) + interval '1 hour'
 WHERE org_id = 'v-9' AND kind = 'tier_changed';
SELECT h.period_start = c.period_start AS open_period, h.tier, h.used, h.quota
  FROM tiermeter.usage_history h, tiermeter.check_org_limits('v-9') c
 WHERE h.org_id = 'v-9' AND h.feature = 'conversation_seconds'
 ORDER BY h.period_start;
-- its other period features have their open row (no usage); gauges none
SELECT count(*) FILTER (WHERE used = 0) AS empty_open_rows, bool_and(f.kind = 'period') AS only_period_features
  FROM tiermeter.usage_history h JOIN tiermeter.features f USING (feature)
 WHERE h.org_id = 'v-9';
-- the open rows equal org_usage
SELECT count(*) AS different
  FROM tiermeter.usage_history h
  JOIN tiermeter.org_usage u ON u.org_id = h.org_id AND u.feature = h.feature AND u.period_start = h.period_start
 WHERE (h.used, h.quota) IS DISTINCT FROM (u.used, u.quota) AND h.tier = u.tier;
