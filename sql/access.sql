-- access: the levels of grant_access (app, billing, reader), what a role of
-- each level may and may not do, revoke_access, and their errors.  Roles
-- belong to the cluster, not to this database: every role made here is
-- dropped at the end.
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS tm_app, tm_billing, tm_reader, tm_two;	-- left by an interrupted run
RESET client_min_messages;
CREATE ROLE tm_app;
CREATE ROLE tm_billing;
CREATE ROLE tm_reader;
CREATE ROLE tm_two;

-- every privilege a tm_ role holds on an object of the schema, from the catalogs
CREATE TEMP VIEW held AS
SELECT r.rolname AS role, o.kind, o.object,
       string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
  FROM (SELECT 'schema' AS kind, n.nspname::text AS object, n.nspacl AS acl
          FROM pg_namespace n WHERE n.nspname = 'tiermeter'
        UNION ALL
        SELECT 'type', t.typname::text, t.typacl
          FROM pg_type t WHERE t.typnamespace = 'tiermeter'::regnamespace
        UNION ALL
        SELECT 'function', p.proname::text, p.proacl
          FROM pg_proc p WHERE p.pronamespace = 'tiermeter'::regnamespace
        UNION ALL
        SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' ELSE 'table' END,
               c.relname::text, c.relacl
          FROM pg_class c WHERE c.relnamespace = 'tiermeter'::regnamespace
        UNION ALL
        SELECT 'column', c.relname || '.' || a.attname, a.attacl
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = 'tiermeter'::regnamespace AND a.attacl IS NOT NULL) AS o,
       aclexplode(o.acl) AS a
  JOIN pg_roles r ON r.oid = a.grantee
 WHERE r.rolname LIKE 'tm\_%'
 GROUP BY 1, 2, 3;

-- no level yet: nothing
SELECT * FROM held;
SELECT tiermeter.grant_access('tm_app', 'app');
SELECT tiermeter.grant_access('tm_app', 'app');		-- idempotent
SELECT tiermeter.grant_access('tm_billing', 'billing');
SELECT tiermeter.grant_access('tm_reader', 'reader');
SELECT tiermeter.grant_access('tm_two', 'billing'), tiermeter.grant_access('tm_two', 'reader');
SELECT grantee, level FROM tiermeter._access ORDER BY grantee::text, level;
-- exactly these privileges, and no other (docs/security.md)
SELECT * FROM held WHERE role IN ('tm_app', 'tm_billing', 'tm_reader') ORDER BY role, kind, object;
-- billing and reader together: their union
SELECT kind, object, privileges FROM held WHERE role = 'tm_two'
EXCEPT
SELECT kind, object, privileges FROM held WHERE role IN ('tm_billing', 'tm_reader');
SELECT kind, object, privileges FROM held WHERE role IN ('tm_billing', 'tm_reader')
EXCEPT
SELECT kind, object, privileges FROM held WHERE role = 'tm_two';

------------------------------------------------------------------------------
-- app: the hot path, and nothing else
------------------------------------------------------------------------------
SET ROLE tm_app;
SELECT allowed, used, quota FROM tiermeter.check_org_limits('acc-1');
SELECT allowed, used FROM tiermeter.record_usage('acc-1', 60, idempotency_key => 'acc-k1');
SELECT allowed, used FROM tiermeter.consume('acc-1', 60);
SELECT allowed, reason, used FROM tiermeter.consume('acc-1', 3600);
-- its own functions may return the result type
CREATE FUNCTION pg_temp.app_check(org text) RETURNS tiermeter.limit_status
LANGUAGE sql AS $$ SELECT * FROM tiermeter.check_org_limits(org) $$;
SELECT tier, used FROM pg_temp.app_check('acc-1');
-- the session functions, but not their moment-taking internals nor the table
SELECT allowed, active FROM tiermeter.begin_session('acc-s', 'conv-1');
SELECT allowed, active FROM tiermeter.touch_session('acc-s', 'conv-1');
SELECT allowed, active FROM tiermeter.check_session_limits('acc-s', 'conv-1');
SELECT allowed, active FROM tiermeter.end_session('acc-s', 'conv-1');
SELECT tiermeter._touch_session('acc-s', 'conv-1', now() - interval '1 hour');
SELECT count(*) FROM tiermeter.sessions;
UPDATE tiermeter.sessions SET duration_seconds = 0;
-- no table: not the ledger, the orgs, the config, the events
SELECT count(*) FROM tiermeter.usage_log;
SELECT count(*) FROM tiermeter.orgs;
SELECT count(*) FROM tiermeter.tiers;
SELECT count(*) FROM tiermeter.limit_events;
SELECT count(*) FROM tiermeter._access;
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('acc-1', 'conversation_seconds', -120, now());
DELETE FROM tiermeter.usage_log;
UPDATE tiermeter.orgs SET tier_id = 'enterprise';
INSERT INTO tiermeter.usage_grants (org_id, feature, amount) VALUES ('acc-1', 'conversation_seconds', 100000);
INSERT INTO tiermeter.org_quotas (org_id, feature, quota) VALUES ('acc-1', 'conversation_seconds', NULL);
UPDATE tiermeter.tier_quotas SET quota = NULL;
INSERT INTO tiermeter.tiers (tier_id, display_name, rank) VALUES ('acc-gold', 'Gold', 100);
INSERT INTO tiermeter.alert_thresholds VALUES (50);
INSERT INTO tiermeter._access VALUES ('tm_app', 'billing');
CREATE TABLE tiermeter.acc_mine (x int);
-- no billing, reporting, maintenance or internal function
SELECT tiermeter.set_org_tier('acc-1', 'enterprise');
SELECT tiermeter.set_org_quota('acc-1', 'conversation_seconds', NULL);
SELECT tiermeter.grant_usage('acc-1', 100000);
SELECT tiermeter.apply_subscription_event('{}');
SELECT tiermeter.verify_stripe_signature('{}', 't=1,v1=00', 'whsec_x');
SELECT tiermeter.usage_stats('acc-1');
SELECT tiermeter.cache_stats();
SELECT count(*) FROM tiermeter.org_usage;
SELECT tiermeter.rollover();
SELECT tiermeter.schedule_rollover();
SELECT tiermeter._ensure_org('acc-1');
-- nor give itself, or anyone, more
SELECT tiermeter.grant_access('tm_app', 'billing');
SELECT tiermeter.revoke_access('tm_reader', 'reader');
GRANT EXECUTE ON FUNCTION tiermeter.set_org_tier(text, text) TO tm_app;
GRANT SELECT ON tiermeter.usage_log TO tm_app;
GRANT EXECUTE ON FUNCTION tiermeter.check_org_limits(text, text) TO tm_reader;
RESET ROLE;
-- none of that changed anything
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'acc-1';
SELECT used, quota FROM tiermeter.check_org_limits('acc-1');
SELECT count(*) AS ledger_rows FROM tiermeter.usage_log WHERE org_id = 'acc-1';
SELECT * FROM held WHERE role = 'tm_app' AND kind <> 'type' AND object NOT IN ('tiermeter', 'check_org_limits', 'record_usage', 'consume',
	'begin_session', 'touch_session', 'end_session', 'check_session_limits');
SELECT * FROM held WHERE role = 'tm_reader' AND object = 'check_org_limits';

------------------------------------------------------------------------------
-- billing: app, the billing functions and the config tables
------------------------------------------------------------------------------
SET ROLE tm_billing;
SELECT allowed, used FROM tiermeter.record_usage('acc-2', 30);
-- new config rows
INSERT INTO tiermeter.tiers (tier_id, display_name, rank, price_cents_monthly)
VALUES ('acc-team', 'Team', 100, 19900);
INSERT INTO tiermeter.features (feature, kind, unit) VALUES ('acc_widgets', 'period', 'widgets');
INSERT INTO tiermeter.tier_quotas (tier_id, feature, quota)
VALUES ('acc-team', 'conversation_seconds', 100000), ('acc-team', 'acc_widgets', 10);
INSERT INTO tiermeter.stripe_prices (price_id, tier_id) VALUES ('price_acc_team', 'acc-team');
INSERT INTO tiermeter.alert_thresholds (percent) VALUES (90);
-- inserting a row whose key an untouched seeded row holds replaces it
-- (the trigger _replace_seed, run as this role, reads tiermeter._seeds)
INSERT INTO tiermeter.tier_quotas (tier_id, feature, quota) VALUES ('basic', 'reports', 2);
INSERT INTO tiermeter.tiers (tier_id, display_name, rank, price_cents_monthly, max_session_seconds, max_active_sessions)
VALUES ('basic', 'Basic', 1, 3900, 3600, 3);
SELECT tier_id, feature, quota FROM tiermeter.tier_quotas WHERE tier_id = 'basic' AND feature = 'reports';
SELECT tier_id, price_cents_monthly, is_default FROM tiermeter.tiers WHERE tier_id = 'basic';
-- a key held by a row it made: the usual rules
INSERT INTO tiermeter.tiers (tier_id, display_name, rank) VALUES ('acc-team', 'Team', 101);
-- updates, checked at commit for exactly one default tier
UPDATE tiermeter.tiers SET display_name = 'Team plan' WHERE tier_id = 'acc-team';
UPDATE tiermeter.tiers SET is_default = false;
SELECT tier_id FROM tiermeter.tiers WHERE is_default;
-- the billing functions
SELECT tiermeter.set_org_tier('acc-2', 'acc-team');
SELECT tier, used, quota FROM tiermeter.check_org_limits('acc-2');
SELECT tiermeter.set_org_quota('acc-2', 'acc_widgets', 20);
SELECT quota FROM tiermeter.check_org_limits('acc-2', 'acc_widgets');
SELECT used, quota FROM tiermeter.grant_usage('acc-2', 500, reason => 'access test');
SELECT tiermeter.verify_stripe_signature('{}', 't=1,v1=00', 'whsec_x', at => to_timestamp(1));
SELECT tiermeter.apply_subscription_event($${"id": "evt_acc_1", "type": "customer.subscription.updated",
  "created": 1700000000, "data": {"object": {"object": "subscription", "id": "sub_acc_1",
  "customer": "cus_acc_1", "status": "active", "metadata": {"organizationId": "acc-3"},
  "items": {"data": [{"price": {"id": "price_acc_team"}}]}}}}$$::jsonb) AS outcome;
SELECT tier FROM tiermeter.check_org_limits('acc-3');
-- but not the orgs, the ledger, the events, the seeds
SELECT count(*) FROM tiermeter.orgs;
SELECT count(*) FROM tiermeter.usage_log;
SELECT count(*) FROM tiermeter.usage_grants;
SELECT count(*) FROM tiermeter.limit_events;
SELECT count(*) FROM tiermeter.stripe_events;
UPDATE tiermeter.orgs SET tier_id = 'enterprise' WHERE org_id = 'acc-2';
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
VALUES ('acc-2', 'conversation_seconds', -30, now());
DELETE FROM tiermeter._seeds;
TRUNCATE tiermeter.tiers;
SELECT tiermeter.usage_stats('acc-2');
SELECT tiermeter.rollover();
SELECT tiermeter.grant_access('tm_billing', 'reader');
RESET ROLE;

------------------------------------------------------------------------------
-- reader: usage_stats, format_duration, limit_events and cache_stats; the
-- statistics' reset is the owner's
------------------------------------------------------------------------------
SET ROLE tm_reader;
SELECT tiermeter.usage_stats('acc-1')->'usage' AS usage;
SELECT tiermeter.format_duration(3900);
SELECT capacity >= 0 AS cache_stats_readable FROM tiermeter.cache_stats();
SELECT org_id, feature, used FROM tiermeter.org_usage WHERE org_id = 'acc-1' AND feature = 'conversation_seconds';
SELECT count(*) >= 0 AS readable FROM tiermeter.tier_summary;
SELECT count(*) >= 0 AS readable FROM tiermeter.orgs_near_limit;
SELECT org_id, feature, tier, used FROM tiermeter.usage_history WHERE org_id = 'acc-1' AND feature = 'conversation_seconds';
SELECT tiermeter.cache_stats_reset();
SELECT org_id, kind, payload->>'from' AS from_tier, payload->>'to' AS to_tier
  FROM tiermeter.limit_events WHERE org_id LIKE 'acc-%' ORDER BY id;
SELECT tiermeter.check_org_limits('acc-1');
SELECT tiermeter.record_usage('acc-1', 60);
SELECT tiermeter.consume('acc-1', 60);
SELECT tiermeter.set_org_tier('acc-1', 'enterprise');
SELECT count(*) FROM tiermeter.usage_log;
SELECT count(*) FROM tiermeter.orgs;
SELECT count(*) FROM tiermeter.tiers;
INSERT INTO tiermeter.limit_events (org_id, kind) VALUES ('acc-1', 'tier_changed');
DELETE FROM tiermeter.limit_events;
SELECT nextval('tiermeter.limit_events_id_seq');
RESET ROLE;

------------------------------------------------------------------------------
-- revoke_access: takes a level away, keeps what another level gives
------------------------------------------------------------------------------
-- tm_two keeps reader, with its USAGE on the schema
SELECT tiermeter.revoke_access('tm_two', 'billing');
SELECT tiermeter.revoke_access('tm_two', 'billing');		-- idempotent
SELECT grantee, level FROM tiermeter._access WHERE grantee = 'tm_two'::regrole;
SELECT kind, object, privileges FROM held WHERE role = 'tm_two' ORDER BY kind, object;
SET ROLE tm_two;
SELECT tiermeter.usage_stats('acc-2')->'usage'->'used_seconds' AS used_seconds;
SELECT tiermeter.check_org_limits('acc-2');
SELECT count(*) FROM tiermeter.tiers;
RESET ROLE;
-- app is inside billing: taking app, which tm_billing was not given, keeps it all
SELECT tiermeter.revoke_access('tm_billing', 'app');
SELECT count(*) AS privileges FROM held WHERE role = 'tm_billing';
SET ROLE tm_billing;
SELECT used FROM tiermeter.check_org_limits('acc-2');
RESET ROLE;
-- a level given, and the other one taken: app keeps the schema
SELECT tiermeter.grant_access('tm_reader', 'app');
SELECT tiermeter.revoke_access('tm_reader', 'reader');
SELECT kind, object, privileges FROM held WHERE role = 'tm_reader' ORDER BY kind, object;
-- a recorded level whose privileges were taken by hand (DROP OWNED BY, a
-- REVOKE) keeps nothing alive: tm_app lost app, so taking reader takes all
DROP OWNED BY tm_app;
SELECT grantee, level FROM tiermeter._access WHERE grantee = 'tm_app'::regrole;
SELECT tiermeter.grant_access('tm_app', 'reader');
SELECT tiermeter.revoke_access('tm_app', 'reader');
SELECT grantee, level FROM tiermeter._access WHERE grantee = 'tm_app'::regrole;
SELECT * FROM held WHERE role = 'tm_app';
-- taking the last level takes every privilege
SELECT tiermeter.revoke_access('tm_billing', 'billing');
SELECT * FROM held WHERE role = 'tm_billing';
SET ROLE tm_billing;
SELECT tiermeter.check_org_limits('acc-2');
RESET ROLE;

------------------------------------------------------------------------------
-- errors
------------------------------------------------------------------------------
SELECT tiermeter.grant_access(NULL, 'app');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT tiermeter.grant_access('tm_reader', NULL);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT tiermeter.revoke_access(NULL, 'reader');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT tiermeter.revoke_access('tm_reader', NULL);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT tiermeter.grant_access('tm_reader', 'admin');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT tiermeter.revoke_access('tm_reader', 'App');
SELECT tiermeter.grant_access('tm_reader', '');
\set VERBOSITY terse
-- a role that does not exist, or is not a role
SELECT tiermeter.grant_access('tm_nosuch', 'app');
SELECT tiermeter.grant_access(0::regrole, 'app');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
-- the extension's owner needs no level (and a REVOKE would take its own)
\set VERBOSITY sqlstate
SELECT tiermeter.revoke_access(current_user::regrole, 'app');
\set VERBOSITY terse
-- errors change nothing
SELECT grantee, level FROM tiermeter._access ORDER BY grantee::text, level;
-- a role given EXECUTE on grant_access by mistake still cannot use it
GRANT EXECUTE ON FUNCTION tiermeter.grant_access(regrole, text) TO tm_reader;
SET ROLE tm_reader;
SELECT tiermeter.grant_access('tm_reader', 'billing');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION tiermeter.grant_access(regrole, text) FROM tm_reader;

------------------------------------------------------------------------------
-- clean up: the config as it was, then the roles
------------------------------------------------------------------------------
SELECT tiermeter.set_org_tier('acc-2', 'free'), tiermeter.set_org_tier('acc-3', 'free');
DELETE FROM tiermeter.tiers WHERE tier_id = 'acc-team';		-- its quotas and price go with it
DELETE FROM tiermeter.features WHERE feature = 'acc_widgets';
DELETE FROM tiermeter.alert_thresholds WHERE percent = 90;
UPDATE tiermeter.tiers SET price_cents_monthly = 2900 WHERE tier_id = 'basic';
UPDATE tiermeter.tier_quotas SET quota = 0 WHERE tier_id = 'basic' AND feature = 'reports';
-- the two replaced rows are their seeds again
SELECT s.tbl FROM tiermeter._seeds s
 WHERE (s.tbl = 'tiers' AND s.row_data = (SELECT to_jsonb(t) FROM tiermeter.tiers t WHERE t.tier_id = 'basic'))
    OR (s.tbl = 'tier_quotas' AND s.row_data = (SELECT to_jsonb(q) FROM tiermeter.tier_quotas q
                                                 WHERE q.tier_id = 'basic' AND q.feature = 'reports'))
 ORDER BY 1;
DROP OWNED BY tm_app, tm_billing, tm_reader, tm_two;
DROP ROLE tm_app, tm_billing, tm_reader, tm_two;
SELECT * FROM held;
-- DROP ROLE leaves the rows of the dropped roles: pg_dump leaves them out
-- (the table's dump condition), and the next call deletes them
SELECT count(*) AS rows_of_dropped_roles FROM tiermeter._access;
SELECT format('SELECT count(*) AS dumped FROM tiermeter._access %s', c.cond)
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS c(tbl, cond)
 WHERE e.extname = 'tiermeter' AND c.tbl = 'tiermeter._access'::regclass \gexec
CREATE ROLE tm_app;
SELECT tiermeter.revoke_access('tm_app', 'app');
SELECT count(*) AS rows FROM tiermeter._access;
DROP ROLE tm_app;
