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

\echo '== a webhook retry records the same usage again: counted once'
SELECT used FROM tiermeter.record_usage('acme', 60, idempotency_key => 'call-77');
SELECT used FROM tiermeter.record_usage('acme', 60, idempotency_key => 'call-77');

\echo '== acme upgrades to basic (5 hours a month)'
\o /dev/null
SELECT tiermeter.set_org_tier('acme', 'basic');
\o
SELECT kind, payload FROM tiermeter.limit_events WHERE org_id = 'acme';

\echo '== allowed again, and the hour already used this month still counts'
SELECT org_id, tier, allowed, reason, used, quota, remaining, percent_used
  FROM tiermeter.check_org_limits('acme');
SELECT tiermeter.format_duration(used) AS used, tiermeter.format_duration(remaining) AS remaining
  FROM tiermeter.check_org_limits('acme');
