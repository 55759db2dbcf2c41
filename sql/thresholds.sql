-- threshold_reached events: once per org, period feature, period and
-- threshold of alert_thresholds (80 and 100 as seeded), written by the
-- transaction that records usage and sees the threshold reached, its own
-- usage included.  (NOTIFY is shown by test/t/009_notify_payload.pl.)
SET timezone = 'UTC';
CREATE TEMP VIEW ev AS
SELECT e.org_id, e.feature, e.threshold,
       e.period_start = (SELECT c.period_start FROM tiermeter.check_org_limits(e.org_id, e.feature) c) AS this_period,
       e.payload
  FROM tiermeter.limit_events e WHERE e.kind = 'threshold_reached' AND e.org_id LIKE 'th-%';

-- below 80 % of 3600 s: nothing; reaching it (2880 s, with this call's own
-- usage): one event; more usage below 100 %: no second one
SELECT used, percent_used FROM tiermeter.record_usage('th-1', 2879);
SELECT count(*) AS events FROM ev WHERE org_id = 'th-1';
SELECT used, percent_used FROM tiermeter.record_usage('th-1', 1);
SELECT * FROM ev WHERE org_id = 'th-1';
SELECT used FROM tiermeter.record_usage('th-1', 100);
SELECT used FROM tiermeter.record_usage('th-1', 100);
SELECT count(*) AS events FROM ev WHERE org_id = 'th-1';
-- 100 %: its own event
SELECT used, allowed FROM tiermeter.record_usage('th-1', 520);
SELECT threshold, payload FROM ev WHERE org_id = 'th-1' ORDER BY threshold;

-- crossing two thresholds in one call writes both
SELECT used FROM tiermeter.record_usage('th-2', 3600);
SELECT threshold, payload FROM ev WHERE org_id = 'th-2' ORDER BY threshold;

-- a crossing that rolls back writes nothing; the next one writes it
BEGIN;
SELECT used FROM tiermeter.record_usage('th-3', 3000);
SELECT threshold FROM ev WHERE org_id = 'th-3';
ROLLBACK;
SELECT count(*) AS events FROM ev WHERE org_id = 'th-3';
-- a savepoint holding the crossing rolls back: the same
BEGIN;
SELECT used FROM tiermeter.record_usage('th-3', 2000);
SAVEPOINT s;
SELECT used FROM tiermeter.record_usage('th-3', 1000);
ROLLBACK TO SAVEPOINT s;
SELECT used FROM tiermeter.record_usage('th-3', 100);
COMMIT;
SELECT count(*) AS events FROM ev WHERE org_id = 'th-3';
SELECT used FROM tiermeter.record_usage('th-3', 780);
SELECT threshold FROM ev WHERE org_id = 'th-3';

-- usage that reached a threshold without an event (a backfill straight into
-- the ledger): the next writer that sees it reached writes it
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at) VALUES ('th-4', 'conversation_seconds', 3000, now());
SELECT count(*) AS events FROM ev WHERE org_id = 'th-4';
SELECT used FROM tiermeter.record_usage('th-4', 1);
SELECT threshold, payload FROM ev WHERE org_id = 'th-4';

-- consume writes them too; a refused consume records nothing and writes nothing
SELECT allowed, used FROM tiermeter.consume('th-5', 2880);
SELECT allowed, used FROM tiermeter.consume('th-5', 1000);
SELECT threshold FROM ev WHERE org_id = 'th-5';

-- and the session functions, whose time is usage
SET tiermeter.idle_timeout = 3600;
SELECT used FROM tiermeter.record_usage('th-6', 2870);
SELECT allowed FROM tiermeter._begin_session('th-6', 'conv', NULL, now() - interval '20 s');
SELECT duration_seconds, used FROM tiermeter._touch_session('th-6', 'conv', now() - interval '5 s');
SELECT threshold FROM ev WHERE org_id = 'th-6';
RESET tiermeter.idle_timeout;

-- armed again in the next period: last period's event does not count
INSERT INTO tiermeter.limit_events (org_id, kind, feature, threshold, period_start)
SELECT 'th-7', 'threshold_reached', 'conversation_seconds', 80,
       (SELECT period_start FROM tiermeter.check_org_limits('th-7')) - interval '1 month';
SELECT used FROM tiermeter.record_usage('th-7', 2900);
SELECT threshold, this_period FROM ev WHERE org_id = 'th-7' ORDER BY this_period;

-- none for gauges, unlimited quotas or features the tier does not include
SELECT used, percent_used FROM tiermeter.record_usage('th-8', 1, 'users');
SELECT used, percent_used FROM tiermeter.record_usage('th-8', 1, 'reports');
SELECT tiermeter.set_org_tier('th-9', 'enterprise');
SELECT used, unlimited FROM tiermeter.record_usage('th-9', 100000);
SELECT count(*) AS events FROM ev WHERE org_id IN ('th-8', 'th-9');

-- a threshold added later gets its event from the next writer that is past
-- it, even where higher ones exist already
INSERT INTO tiermeter.alert_thresholds VALUES (50);
SELECT used FROM tiermeter.record_usage('th-1', 1);
SELECT threshold FROM ev WHERE org_id = 'th-1' ORDER BY threshold;
DELETE FROM tiermeter.alert_thresholds WHERE percent = 50;

-- a grant that lowers percent_used below a threshold keeps its event, and
-- crossing it again in the same period writes no second one
SELECT used, quota FROM tiermeter.grant_usage('th-2', 3600);
SELECT used, percent_used FROM tiermeter.record_usage('th-2', 2200);
SELECT threshold, count(*) FROM ev WHERE org_id = 'th-2' GROUP BY threshold ORDER BY threshold;

-- every event is a limit event with a NOTIFY: the kind is in the table
SELECT kind, count(*) FROM tiermeter.limit_events WHERE org_id LIKE 'th-%' GROUP BY kind ORDER BY kind;
