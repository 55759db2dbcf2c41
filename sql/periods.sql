-- Billing periods (docs/reference.md): monthly, anchored, the day clamped to the
-- month's last day, computed in UTC whatever the session's time zone.
SET timezone = 'UTC';

-- anchor Jan 31 12:00 UTC: Feb 29 (2024 is a leap year), Mar 31, Apr 30, ...
SELECT at, p.period_start, p.period_end
  FROM unnest(ARRAY['2024-01-31 12:00', '2024-02-15', '2024-02-29 11:59:59',
                    '2024-02-29 12:00', '2024-03-31 11:00', '2024-03-31 12:00',
                    '2024-04-30 12:00', '2024-12-31 12:00', '2025-02-28 12:00']::timestamptz[]) AS at,
       tiermeter.period_bounds('2024-01-31 12:00+00', at) p;

-- 2023 is not a leap year: Feb 28; every boundary comes from the anchor, so
-- the clamped February does not move March
SELECT p.period_start, p.period_end
  FROM tiermeter.period_bounds('2023-01-31 12:00+00', '2023-03-15') p;
SELECT p.period_start, p.period_end
  FROM tiermeter.period_bounds('2023-01-31 12:00+00', '2023-03-31 12:00') p;

-- before the anchor too
SELECT p.period_start, p.period_end
  FROM tiermeter.period_bounds('2024-03-31 00:00+00', '2024-01-15') p;

-- the session's time zone changes how instants print, not which they are
SET timezone = 'America/New_York';
SELECT p.period_start AT TIME ZONE 'UTC' AS start_utc, p.period_end AT TIME ZONE 'UTC' AS end_utc
  FROM tiermeter.period_bounds('2024-01-31 12:00+00', '2024-03-01 03:00+00') p;
SET timezone = 'Asia/Tokyo';
SELECT p.period_start AT TIME ZONE 'UTC' AS start_utc, p.period_end AT TIME ZONE 'UTC' AS end_utc
  FROM tiermeter.period_bounds('2024-01-01 00:00+00', '2024-01-31 23:30+00') p;
SET timezone = 'UTC';

-- a stored period (from Stripe) is taken exactly; the next one starts at its
-- end and then follows the anchor; an earlier one ends at its start
SELECT p.* FROM tiermeter.period_bounds('2024-01-10 00:00+00', '2024-05-20',
                                       '2024-05-03', '2024-06-03') p;
SELECT p.* FROM tiermeter.period_bounds('2024-01-10 00:00+00', '2024-06-05',
                                       '2024-05-03', '2024-06-03') p;
SELECT p.* FROM tiermeter.period_bounds('2024-01-10 00:00+00', '2024-07-15',
                                       '2024-05-03', '2024-06-03') p;
SELECT p.* FROM tiermeter.period_bounds('2024-01-10 00:00+00', '2024-05-01',
                                       '2024-05-03', '2024-06-03') p;
SELECT p.* FROM tiermeter.period_bounds('2024-01-10 00:00+00', '2024-04-01',
                                       '2024-05-03', '2024-06-03') p;
-- bad stored periods
SELECT p.* FROM tiermeter.period_bounds('2024-01-10', '2024-04-01', '2024-05-03', NULL) p;
SELECT p.* FROM tiermeter.period_bounds('2024-01-10', '2024-04-01', '2024-05-03', '2024-05-03') p;
SELECT p.* FROM tiermeter.period_bounds('infinity', '2024-04-01') p;

-- A new org is anchored at the first of the current calendar month, UTC.
SELECT period_start = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS starts_month,
       period_end = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC' AS ends_next_month
  FROM tiermeter.record_usage('p-new', 10);
SELECT billing_anchor = period_start AS anchored_at_period_start,
       extract(day FROM billing_anchor AT TIME ZONE 'UTC') AS anchor_day,
       (billing_anchor AT TIME ZONE 'UTC')::time AS anchor_time
  FROM tiermeter.orgs WHERE org_id = 'p-new';

-- Usage lands in the period that contains its occurred_at: late usage of the
-- previous period does not count now.
SELECT used FROM tiermeter.record_usage('p-late', 100);
SELECT used, period_start
  FROM tiermeter.record_usage('p-late', 7, occurred_at => (SELECT period_start FROM tiermeter.check_org_limits('p-late')) - interval '1 second')
  \gset late_
SELECT :late_used AS used_now;
SELECT sum(amount) AS previous_period_usage
  FROM tiermeter.usage_log
 WHERE org_id = 'p-late'
   AND occurred_at < :'late_period_start';
-- the first instant of the period counts in it
SELECT used FROM tiermeter.record_usage('p-late', 1, occurred_at => :'late_period_start');

-- An anchored org, with no rollover ever run: its stored period ended long
-- ago, yet it is answered from the period that contains now(), and usage
-- from the old period is not counted.  Nothing is reset: old usage stays.
SELECT used FROM tiermeter.record_usage('p-anchored', 500);
UPDATE tiermeter.orgs
   SET billing_anchor = '2024-01-31 12:00+00',
       period_start = '2024-01-31 12:00+00', period_end = '2024-02-29 12:00+00'
 WHERE org_id = 'p-anchored';
SELECT used FROM tiermeter.record_usage('p-anchored', 40, occurred_at => '2024-02-10');
SELECT s.period_start = b.period_start AS same_start, s.period_end = b.period_end AS same_end,
       s.period_start <= now() AND now() < s.period_end AS contains_now,
       extract(hour FROM s.period_start) AS start_hour,
       extract(day FROM s.period_start) IN (28, 29, 30, 31) AS month_end_day,
       s.used
  FROM tiermeter.check_org_limits('p-anchored') s,
       tiermeter.period_bounds('2024-01-31 12:00+00', now(), '2024-01-31 12:00+00', '2024-02-29 12:00+00') b;
SELECT sum(amount) AS all_usage_kept FROM tiermeter.usage_log WHERE org_id = 'p-anchored';
