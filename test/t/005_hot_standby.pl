# check_org_limits on a hot standby: read-only, answered from the tables
# (a standby never sees the primary's commit callbacks), and right.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$primary->safe_psql('postgres', "SELECT tiermeter.record_usage('acme', 1000)");
$primary->backup('b');

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$standby->start;

sub check
{
	my ($node, $org) = @_;
	return $node->safe_psql('postgres',
		"SELECT concat_ws(',', tier, used, quota, allowed) FROM tiermeter.check_org_limits('$org')");
}

$primary->wait_for_catchup($standby);
is(check($standby, 'acme'), 'free,1000,3600,t', 'the standby answers');
is(check($standby, 'nobody'), 'free,0,3600,t', 'an unknown org on the standby');

# usage and a tier change on the primary reach the standby's answers
$primary->safe_psql('postgres', "SELECT tiermeter.record_usage('acme', 2700)");
is(check($primary, 'acme'), 'free,3700,3600,f', 'the primary, from its cache');
$primary->wait_for_catchup($standby);
is(check($standby, 'acme'), 'free,3700,3600,f', 'the standby sees the new usage');
$primary->safe_psql('postgres', "SELECT tiermeter.set_org_tier('acme', 'basic')");
$primary->wait_for_catchup($standby);
is(check($standby, 'acme'), 'basic,3700,18000,t', 'and the tier change');

# writing is refused there, cleanly
my ($ret, $out, $err) = $standby->psql('postgres', "SELECT tiermeter.record_usage('acme', 1)");
like($err, qr/read-only transaction/, 'record_usage is refused on a standby');

$standby->stop;
$primary->stop;
done_testing();
