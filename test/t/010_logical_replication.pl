# Usage that arrives by logical replication is seen by the subscriber's
# shared-memory cache: the invalidation triggers fire in the apply worker
# (ENABLE ALWAYS), so a cached org answers with the replicated rows.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pub = PostgreSQL::Test::Cluster->new('publisher');
$pub->init(allows_streaming => 'logical');
$pub->start;
my $sub = PostgreSQL::Test::Cluster->new('subscriber');
$sub->init;
$sub->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$sub->start;

$pub->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$sub->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$pub->safe_psql('postgres',
	'CREATE PUBLICATION usage FOR TABLE tiermeter.orgs, tiermeter.usage_log');
my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres',
	"CREATE SUBSCRIPTION usage CONNECTION '$connstr' PUBLICATION usage WITH (copy_data = false)");
$pub->wait_for_catchup('usage');

# the subscriber caches r-1 as a new free org, with nothing used
is($sub->safe_psql('postgres', "SELECT used || ' ' || tier FROM tiermeter.check_org_limits('r-1')"),
	'0 free', 'the subscriber caches r-1, unknown yet');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	'0', 'a second check answers from the cache');

# the publisher records usage and moves r-1 to another tier
$pub->safe_psql('postgres', "SELECT tiermeter.record_usage('r-1', 700)");
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	'700', 'replicated usage is seen by the next check');

$pub->safe_psql('postgres', "SELECT tiermeter.set_org_tier('r-1', 'basic')");
$pub->safe_psql('postgres', "SELECT tiermeter.record_usage('r-1', 50)");
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', "SELECT used || ' ' || tier || ' ' || quota FROM tiermeter.check_org_limits('r-1')"),
	'750 basic 18000', 'a replicated tier change and more usage are seen too');

# and consume on the subscriber counts them
is($sub->safe_psql('postgres', "SELECT allowed || ' ' || used FROM tiermeter.consume('r-1', 17250)"),
	'true 18000', 'consume on the subscriber uses exactly what is left');
is($sub->safe_psql('postgres', "SELECT allowed FROM tiermeter.consume('r-1', 1)"),
	'f', 'and not one second more');

done_testing();
