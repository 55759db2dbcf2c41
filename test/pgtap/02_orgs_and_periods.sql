-- pgTAP: orgs on first sight, and the period logic seen through the API.
BEGIN;
SELECT plan(10);

SELECT is((SELECT count(*) FROM tiermeter.orgs WHERE org_id = 'p-1'), 0::bigint, 'unknown before');
SELECT lives_ok($$SELECT tiermeter.check_org_limits('p-1')$$, 'check an unknown org');
SELECT is((SELECT count(*) FROM tiermeter.orgs WHERE org_id = 'p-1'), 0::bigint, 'check creates nothing');
SELECT lives_ok($$SELECT tiermeter.consume('p-1', 1)$$, 'consume an unknown org');
SELECT is((SELECT tier_id FROM tiermeter.orgs WHERE org_id = 'p-1'), 'free', 'created on the default tier');

-- a new default tier applies to orgs created afterwards
UPDATE tiermeter.tiers SET is_default = false WHERE tier_id = 'free';
UPDATE tiermeter.tiers SET is_default = true WHERE tier_id = 'basic';
SELECT is((tiermeter.check_org_limits('p-2')).tier, 'basic', 'unknown orgs are answered on the new default');
SELECT is((tiermeter.record_usage('p-2', 1)).quota, 18000::bigint, 'and created on it');
SELECT is((tiermeter.check_org_limits('p-1')).tier, 'free', 'existing orgs keep their tier');

-- the reported period contains now() and is a whole UTC month
SELECT ok((SELECT period_start <= now() AND now() < period_end FROM tiermeter.check_org_limits('p-1')),
	'period contains now()');
SELECT is((SELECT period_end - period_start = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')
	- date_trunc('month', now() AT TIME ZONE 'UTC') FROM tiermeter.check_org_limits('p-1')), true, 'a calendar month');

SELECT * FROM finish();
ROLLBACK;
