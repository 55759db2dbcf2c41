-- tiermeter.distribute() spreads the tables over a Citus cluster.  Without
-- Citus it is a clear error that changes nothing; on a Citus cluster it is
-- tested by test/t/017_citus.pl (run when Citus is installed).
\set VERBOSITY default
SELECT * FROM tiermeter.distribute();
\set VERBOSITY terse
-- nothing was dropped: the seed-tracking triggers and foreign keys are there
SELECT count(*) AS seed_triggers FROM pg_trigger
 WHERE tgrelid = 'tiermeter.tiers'::regclass AND tgname IN ('tiers_deleted_seeds', 'tiers_replace_seed');
SELECT conname FROM pg_constraint
 WHERE conrelid = 'tiermeter.org_quotas'::regclass AND contype = 'f' ORDER BY 1;
-- it belongs to no access level: the extension's owner runs it
CREATE ROLE tm_dist_billing;
SELECT tiermeter.grant_access('tm_dist_billing', 'billing');
SET ROLE tm_dist_billing;
SELECT * FROM tiermeter.distribute();
RESET ROLE;
SELECT tiermeter.revoke_access('tm_dist_billing', 'billing');
DROP ROLE tm_dist_billing;
-- the org lookup of the table path reads the org's rows in one subquery
-- filtered by org_id (so that Citus routes it to one shard): an override,
-- an org without one, and an unknown org
SELECT tiermeter.set_org_quota('dist-1', 'reports', 3);
BEGIN;
SELECT tiermeter.set_org_quota('dist-1', 'images', NULL);	-- config changed: the table path
SELECT org_id, tier, feature, quota, unlimited FROM tiermeter.check_org_limits('dist-1', 'reports');
SELECT org_id, tier, feature, quota, unlimited FROM tiermeter.check_org_limits('dist-1', 'images');
SELECT org_id, tier, feature, quota, unlimited FROM tiermeter.check_org_limits('dist-1', 'documents');
SELECT org_id, tier, feature, quota, unlimited FROM tiermeter.check_org_limits('dist-none', 'reports');
ROLLBACK;
