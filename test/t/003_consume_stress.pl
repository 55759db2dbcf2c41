# consume from 16 clients at once while the cache is invalidated and rebuilt
# under them (config edits, grants): committed usage ends exactly at the
# quota, never past it, and the cache agrees with the ledger.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 16;
my $calls = 300;

my $node = PostgreSQL::Test::Cluster->new('stress');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "max_connections = 40");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

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

# 16 consumers on two orgs (free tier: 3600 s); 2400 attempts of 1 s each
# per org for 3600 s would not reach it, so they take 2 s each: 4800 s asked
for my $c (0 .. $clients - 1)
{
	my $org = 'hot-' . ($c % 2);
	my $sql = '';
	for my $n (1 .. $calls)
	{
		# some calls in explicit transactions of two, some rolled back
		if ($n % 10 == 0)
		{
			$sql .= "BEGIN; SELECT (tiermeter.consume('$org', 2)).allowed; SELECT (tiermeter.consume('$org', 2)).allowed; ROLLBACK;\n";
		}
		else
		{
			$sql .= "SELECT (tiermeter.consume('$org', 2)).allowed;\n";
		}
	}
	client("consumer$c", $sql);
}

# meanwhile: config edits and grants that invalidate the entries
my $admin = '';
for my $n (1 .. 60)
{
	$admin .= "UPDATE tiermeter.alert_thresholds SET percent = percent WHERE percent = 80;\n";
	$admin .= "SELECT tiermeter.set_org_quota('hot-0', 'web_scrapes', $n);\n";
	$admin .= "SELECT tiermeter.check_org_limits('hot-1');\n";
	$admin .= "SELECT pg_sleep(0.01);\n";
}
client('admin', $admin);

$_->finish for @procs;
for my $c (0 .. $clients - 1)
{
	my $err = slurp_file("$dir/consumer$c.err");
	is($err, '', "consumer $c ran without errors");
}

for my $o (0, 1)
{
	my $org = "hot-$o";
	my ($used, $quota) = split /\|/, $node->safe_psql('postgres',
		"SELECT used, quota FROM tiermeter.check_org_limits('$org')");
	my $ledger = $node->safe_psql('postgres',
		"SELECT sum(amount) FROM tiermeter.usage_log WHERE org_id = '$org'");
	cmp_ok($used, '<=', $quota, "$org: never past the quota ($used <= $quota)");
	is($used, $quota, "$org: the quota is used up exactly");
	is($ledger, $used, "$org: the cache agrees with the ledger");
}

$node->restart;
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('hot-0')"),
	'3600', 'the same after a restart');

$node->stop;
done_testing();
