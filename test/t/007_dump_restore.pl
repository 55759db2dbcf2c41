# pg_dump / pg_restore keeps config (edited seeds included, deleted seeds
# deleted), orgs, usage, overrides, grants, events and Stripe's idempotency
# keys.
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
	-- deleted seeds: a threshold, a feature (its quotas go with it), one
	-- quota, an untouched tier (its quotas too), an edited tier, an edited
	-- quota, a renamed feature (its quotas are renamed with it)
	DELETE FROM tiermeter.alert_thresholds WHERE percent = 80;
	DELETE FROM tiermeter.features WHERE feature = 'spreadsheets';
	DELETE FROM tiermeter.tier_quotas WHERE tier_id = 'free' AND feature = 'images';
	DELETE FROM tiermeter.tiers WHERE tier_id = 'enterprise';
	UPDATE tiermeter.tiers SET display_name = 'Pro', price_cents_monthly = 8900 WHERE tier_id = 'professional';
	DELETE FROM tiermeter.tiers WHERE tier_id = 'professional';
	UPDATE tiermeter.tier_quotas SET quota = 600 WHERE tier_id = 'basic' AND feature = 'pages';
	DELETE FROM tiermeter.tier_quotas WHERE tier_id = 'basic' AND feature = 'pages';
	UPDATE tiermeter.features SET feature = 'sheets' WHERE feature = 'documents';
	-- deleted, then made again: the user's rows are kept
	DELETE FROM tiermeter.alert_thresholds WHERE percent = 100;
	INSERT INTO tiermeter.alert_thresholds VALUES (100);
	DELETE FROM tiermeter.features WHERE feature = 'web_scrapes';
	INSERT INTO tiermeter.features VALUES ('web_scrapes', 'gauge', 'sites', 'watched sites');
	INSERT INTO tiermeter.tier_quotas VALUES ('basic', 'web_scrapes', 77), ('team', 'web_scrapes', NULL);
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

my $tempdir = PostgreSQL::Test::Utils::tempdir;

# pg_restore of $dump into a new database $dst, with pg_restore's options @opts
sub restore
{
	my ($dump, $dst, @opts) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $dst");
	my ($stdout, $stderr);
	my $ok = IPC::Run::run([ 'pg_restore', @opts, '-d', $node->connstr($dst), $dump ],
		'>', \$stdout, '2>', \$stderr);
	ok($ok, "pg_restore into $dst succeeded");
	is($stderr, '', "pg_restore into $dst reported nothing");
}

# every config table, whole and ordered, and the tombstones
my @config = map { "SELECT string_agg(t::text, ' ' ORDER BY t::text) FROM tiermeter.$_ t" }
	qw(tiers features tier_quotas alert_thresholds stripe_prices _deleted_seeds);
sub same_config
{
	my ($src, $dst) = @_;
	for my $q (@config)
	{
		is($node->safe_psql($dst, $q), $node->safe_psql($src, $q), "$dst as $src: $q");
	}
}

my $dump = "$tempdir/src.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], 'pg_dump');
restore($dump, 'dst');

# pg_restore loads the tombstones before the config tables (the name sorts first)
my $list = `pg_restore -l $dump`;
my @data = $list =~ /^\d+; \d+ \d+ TABLE DATA tiermeter (\w+) /mg;
my %at = map { $data[$_] => $_ } 0 .. $#data;
ok($at{_deleted_seeds} < $at{$_}, "_deleted_seeds is loaded before $_")
	for qw(tiers features tier_quotas alert_thresholds);

same_config('src', 'dst');
is($node->safe_psql('dst', q{
	SELECT (SELECT count(*) FROM tiermeter.alert_thresholds WHERE percent = 80)
	     + (SELECT count(*) FROM tiermeter.features WHERE feature IN ('spreadsheets', 'documents'))
	     + (SELECT count(*) FROM tiermeter.tier_quotas WHERE (tier_id, feature) IN (('free', 'images'), ('basic', 'pages')))
	     + (SELECT count(*) FROM tiermeter.tiers WHERE tier_id IN ('enterprise', 'professional'))}),
	'0', 'deleted seeds stay deleted');
is($node->safe_psql('dst', q{
	SELECT string_agg(concat_ws(':', tier_id, feature, quota), ' ' ORDER BY tier_id)
	  FROM tiermeter.tier_quotas WHERE feature = 'web_scrapes'}),
	'basic:web_scrapes:77 team:web_scrapes', 'a deleted seed made again is the user\'s row');

# the other order: the config tables first, then the tombstones
my @items = split /\n/, $list;
open my $fh, '>', "$tempdir/late.list" or die $!;
print $fh join("\n", (grep { !/TABLE DATA tiermeter _deleted_seeds / } @items),
	(grep { /TABLE DATA tiermeter _deleted_seeds / } @items)), "\n";
close $fh;
restore($dump, 'dst_late', '-L', "$tempdir/late.list");
same_config('src', 'dst_late');

# the seeded default tier, edited, then deleted (the default moved first);
# a truncated table
$node->safe_psql('postgres', 'CREATE DATABASE src2');
$node->safe_psql('src2', q{
	CREATE EXTENSION tiermeter;
	BEGIN;
	UPDATE tiermeter.tiers SET is_default = false WHERE tier_id = 'free';
	UPDATE tiermeter.tiers SET is_default = true WHERE tier_id = 'basic';
	COMMIT;
	UPDATE tiermeter.tiers SET display_name = 'Gratis' WHERE tier_id = 'free';
	DELETE FROM tiermeter.tiers WHERE tier_id = 'free';
	TRUNCATE tiermeter.alert_thresholds;
	INSERT INTO tiermeter.alert_thresholds VALUES (75);
});
my ($ret, $out, $err) = $node->psql('src2', 'DELETE FROM tiermeter.tiers WHERE is_default');
like($err, qr/exactly one default tier/, 'the default tier still cannot be deleted');
$node->safe_psql('src2', "SELECT tiermeter.record_usage('acme', 10)");
my $dump2 = "$tempdir/src2.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump2, '-d', $node->connstr('src2') ], 'pg_dump src2');
restore($dump2, 'dst2');
same_config('src2', 'dst2');
is($node->safe_psql('dst2', "SELECT tier FROM tiermeter.check_org_limits('newcomer')"), 'basic',
	'the restored default tier is the default');

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
($ret, $out, $err) = $node->psql('dst', "INSERT INTO tiermeter.tier_quotas VALUES ('free', 'conversation_seconds', 1)");
like($err, qr/duplicate key/, 'inserting over an edited config row is still an error');

$node->stop;
done_testing();
