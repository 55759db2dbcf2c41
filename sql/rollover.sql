-- rollover: moves each org whose stored period ended to the period that
-- contains as_of; housekeeping only, answers never depend on it.
SET timezone = 'UTC';

SELECT used FROM tiermeter.record_usage('ro-1', 10);
SELECT used FROM tiermeter.record_usage('ro-2', 20);
-- ro-1's stored period ended long ago (anchored Jan 31 12:00)
UPDATE tiermeter.orgs
   SET billing_anchor = '2024-01-31 12:00+00',
       period_start = '2024-01-31 12:00+00', period_end = '2024-02-29 12:00+00'
 WHERE org_id = 'ro-1';

-- as of Mar 10, 2024: ro-1 moves to Feb 29 - Mar 31 (ro-2's period is later)
SELECT tiermeter.rollover('2024-03-10');
SELECT period_start, period_end FROM tiermeter.orgs WHERE org_id = 'ro-1';
-- the same as_of again moves nothing
SELECT tiermeter.rollover('2024-03-10');

-- as of now: ro-1 moves to the period containing now (month-end clamped,
-- 12:00 UTC); orgs created this month have nothing to move
SELECT tiermeter.rollover() AS moved;
SELECT period_start <= now() AND now() < period_end AS contains_now,
       extract(hour FROM period_start) AS start_hour
  FROM tiermeter.orgs WHERE org_id = 'ro-1';
SELECT tiermeter.rollover() AS moved_again;

-- usage is untouched, and the answers are the same as before
SELECT used FROM tiermeter.check_org_limits('ro-1');
SELECT used FROM tiermeter.check_org_limits('ro-2');
SELECT sum(amount) AS ledger FROM tiermeter.usage_log WHERE org_id IN ('ro-1', 'ro-2');

-- bad input
SELECT tiermeter.rollover(NULL);
SELECT tiermeter.rollover('infinity');

-- without pg_cron in this database, scheduling is a clear error with a hint
SELECT tiermeter.schedule_rollover();
SELECT tiermeter.schedule_rollover('');
