# A transaction that records usage for far more orgs than the cache holds
# (tiermeter.cache_size = 16): its orgs are invalidated at commit instead of
# pinning an entry each, while 4 clients consume on some of the same orgs.
# Afterwards every org's answer is its ledger's, and no consumer passed its
# quota.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $orgs = 3000;

my $node = PostgreSQL::Test::Cluster->new('big');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "tiermeter.cache_size = 16");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

# some of the orgs are cached before (b-1 .. b-8, 1000 s each)
$node->safe_psql('postgres',
	"SELECT count(tiermeter.record_usage('b-' || i, 1000)) FROM generate_series(1, 8) i");

my $dir = PostgreSQL::Test::Utils::tempdir;
my @procs;
sub client
{
	my ($name, $sql) = @_;
	open my $fh, '>', "$dir/$name.sql" or die;
	print $fh $sql;
	close $fh;
	push @procs, IPC::Run::start(
		[ 'psql', '-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-f', "$dir/$name.sql" ],
		'>', "$dir/$name.out", '2>', "$dir/$name.err");
}

# the big transaction: 3 s of usage for each of 3000 orgs, and a consume
client('big', "BEGIN;\n"
	. "SELECT count(tiermeter.record_usage('b-' || i, 3)) FROM generate_series(1, $orgs) i;\n"
	. "SELECT (tiermeter.consume('b-1', 5)).allowed;\n"
	. "SELECT pg_sleep(0.5);\n"
	. "COMMIT;\n");
# meanwhile 4 consumers on b-1 .. b-4 (free: 3600 s), 2 s at a time
for my $c (1 .. 4)
{
	client("consumer$c", join('', map { "SELECT (tiermeter.consume('b-$c', 2)).allowed;\n" } 1 .. 1500));
}
$_->finish for @procs;
for my $name ('big', map { "consumer$_" } 1 .. 4)
{
	is(slurp_file("$dir/$name.err"), '', "$name ran without errors");
}

# every org answers what its ledger holds
is($node->safe_psql('postgres', "
	SELECT count(*) FROM generate_series(1, $orgs) i
	 WHERE (tiermeter.check_org_limits('b-' || i)).used IS DISTINCT FROM
	       (SELECT sum(amount) FROM tiermeter.usage_log u WHERE u.org_id = 'b-' || i)"),
	'0', "all $orgs orgs: the cache agrees with the ledger");
is($node->safe_psql('postgres', "SELECT count(*) FROM tiermeter.orgs WHERE org_id LIKE 'b-%'"),
	$orgs, 'every org exists');
for my $c (1 .. 4)
{
	my ($used, $quota) = split /\|/, $node->safe_psql('postgres',
		"SELECT used, quota FROM tiermeter.check_org_limits('b-$c')");
	cmp_ok($used, '<=', $quota + 3 + ($c == 1 ? 5 : 0),
		"b-$c: consume never passed the quota but by the big transaction's own usage ($used)");
}

# and after a restart (the cache rebuilt from the tables) the same
$node->restart;
is($node->safe_psql('postgres', "
	SELECT count(*) FROM generate_series(1, $orgs) i
	 WHERE (tiermeter.check_org_limits('b-' || i)).used IS DISTINCT FROM
	       (SELECT sum(amount) FROM tiermeter.usage_log u WHERE u.org_id = 'b-' || i)"),
	'0', 'the same after a restart');

$node->stop;
done_testing();
