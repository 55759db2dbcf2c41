-- usage_stats: the shape a usage endpoint returns (docs/reference.md).
SET timezone = 'UTC';

-- an unknown org: answered as new on the default tier, nothing written
SELECT tiermeter.usage_stats('u-new') - 'current_period' AS stats;
SELECT count(*) AS orgs_written FROM tiermeter.orgs WHERE org_id = 'u-new';

-- usage from record_usage and consume, three distinct conversations (and
-- usage without one); another feature and last period do not count
SELECT used FROM tiermeter.record_usage('u-1', 1200, conversation_id => 'c1');
SELECT used FROM tiermeter.record_usage('u-1', 600, conversation_id => 'c1');
SELECT used FROM tiermeter.consume('u-1', 900, conversation_id => 'c2');
SELECT used FROM tiermeter.record_usage('u-1', 300);
SELECT used FROM tiermeter.record_usage('u-1', 1, 'images', conversation_id => 'c9');
SELECT used FROM tiermeter.record_usage('u-1', 30, conversation_id => 'c3');
SELECT used FROM tiermeter.record_usage('u-1', 5, conversation_id => 'c-old',
	occurred_at => (SELECT period_start FROM tiermeter.check_org_limits('u-1')) - interval '1 hour');
SELECT jsonb_pretty(tiermeter.usage_stats('u-1') - 'current_period') AS stats;

-- the period is the org's current one
SELECT (s->'current_period'->>'start')::timestamptz = c.period_start AS start_ok,
       (s->'current_period'->>'end')::timestamptz = c.period_end AS end_ok
  FROM tiermeter.usage_stats('u-1') s, tiermeter.check_org_limits('u-1') c;

-- past the quota, and unlimited
SELECT used FROM tiermeter.record_usage('u-1', 2000, conversation_id => 'c4');
SELECT tiermeter.usage_stats('u-1')->'usage' AS usage, tiermeter.usage_stats('u-1')->'status' AS status;
SELECT tiermeter.set_org_tier('u-1', 'enterprise');
SELECT tiermeter.usage_stats('u-1')->'usage' AS usage, tiermeter.usage_stats('u-1')->'status' AS status,
       tiermeter.usage_stats('u-1')->'tier' AS tier;

-- bad ids
SELECT tiermeter.usage_stats(NULL);
SELECT tiermeter.usage_stats('');
