# pg_dump / pg_restore keeps config (edited seeds included), orgs, usage,
# overrides, grants, events and Stripe's idempotency keys.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
	CREATE EXTENSION tiermeter;
	-- edited and added config
	UPDATE tiermeter.tier_quotas SET quota = 4000 WHERE tier_id = 'free' AND feature = 'conversation_seconds';
	UPDATE tiermeter.tiers SET price_cents_monthly = 3100 WHERE tier_id = 'basic';
	INSERT INTO tiermeter.tiers VALUES ('team', 'Team', 5, 19900, 5400, 5, false);
	INSERT INTO tiermeter.tier_quotas VALUES ('team', 'conversation_seconds', 36000);
	INSERT INTO tiermeter.features VALUES ('voice_minutes', 'period', 'min', 'voice');
	INSERT INTO tiermeter.alert_thresholds VALUES (50);
	INSERT INTO tiermeter.stripe_prices VALUES ('price_team', 'team');
	BEGIN;
	UPDATE tiermeter.tiers SET is_default = false WHERE tier_id = 'free';
	UPDATE tiermeter.tiers SET is_default = true WHERE tier_id = 'basic';
	COMMIT;
	-- orgs, usage, overrides, grants, keys
	SELECT tiermeter.record_usage('acme', 1000, conversation_id => 'c1', idempotency_key => 'k1');
	SELECT tiermeter.consume('acme', 500);
	SELECT tiermeter.set_org_tier('globex', 'team');
	SELECT tiermeter.record_usage('globex', 7, 'users');
	SELECT tiermeter.set_org_quota('acme', 'reports', 9);
	SELECT tiermeter.grant_usage('acme', 600);
	SELECT tiermeter.apply_subscription_event('{"id": "evt_1", "type": "customer.subscription.updated",
		"created": 100, "data": {"object": {"id": "sub_1", "object": "subscription", "status": "active",
		"customer": "cus_1", "metadata": {"org_id": "initech"},
		"items": {"data": [{"price": {"id": "price_team"}}]}}}}');
});

my $dump = PostgreSQL::Test::Utils::tempdir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
my ($stdout, $stderr);
my $ok = IPC::Run::run([ 'pg_restore', '-d', $node->connstr('dst'), $dump ], '>', \$stdout, '2>', \$stderr);
ok($ok, 'pg_restore succeeded');
is($stderr, '', 'pg_restore reported nothing');

my @queries = (
	"SELECT string_agg(concat_ws(':', tier_id, display_name, rank, price_cents_monthly, max_session_seconds, max_active_sessions, is_default), ' ' ORDER BY rank) FROM tiermeter.tiers",
	"SELECT string_agg(concat_ws(':', tier_id, feature, coalesce(quota::text, 'unlimited')), ' ' ORDER BY tier_id, feature) FROM tiermeter.tier_quotas",
	"SELECT string_agg(feature || ':' || kind, ' ' ORDER BY feature) FROM tiermeter.features",
	"SELECT string_agg(percent::text, ' ' ORDER BY percent) FROM tiermeter.alert_thresholds",
	"SELECT string_agg(price_id || ':' || tier_id, ' ' ORDER BY price_id) FROM tiermeter.stripe_prices",
	"SELECT string_agg(concat_ws(':', org_id, tier_id, billing_anchor, period_start, period_end, stripe_customer_id), ' ' ORDER BY org_id) FROM tiermeter.orgs",
	"SELECT row(c.*)::text FROM tiermeter.check_org_limits('acme') c",
	"SELECT row(c.*)::text FROM tiermeter.check_org_limits('acme', 'reports') c",
	"SELECT row(c.*)::text FROM tiermeter.check_org_limits('globex', 'users') c",
	"SELECT row(c.*)::text FROM tiermeter.check_org_limits('initech') c",
	"SELECT row(c.*)::text FROM tiermeter.check_org_limits('newcomer') c",
	"SELECT count(*) FROM tiermeter.limit_events",
	"SELECT tiermeter.usage_stats('acme') - 'current_period'",
);
for my $q (@queries)
{
	is($node->safe_psql('dst', $q), $node->safe_psql('src', $q), "restored: $q");
}

# idempotency survives: the same key and the same Stripe event count once
is($node->safe_psql('dst', "SELECT (tiermeter.record_usage('acme', 1000, idempotency_key => 'k1')).used"),
	'1500', 'a restored idempotency key is not counted again');
is($node->safe_psql('dst', q{SELECT tiermeter.apply_subscription_event('{"id": "evt_1", "type": "x", "created": 1, "data": {"object": {}}}')}),
	'duplicate', 'a restored Stripe event id is a duplicate');

# a seeded row the user edited is kept; an insert over an edited row is refused
my ($ret, $out, $err) = $node->psql('dst', "INSERT INTO tiermeter.tier_quotas VALUES ('free', 'conversation_seconds', 1)");
like($err, qr/duplicate key/, 'inserting over an edited config row is still an error');

$node->stop;
done_testing();
