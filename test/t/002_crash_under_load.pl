# Kill the postmaster (-m immediate) while 16 clients record usage, restart,
# and compare every org's usage with what the clients saw commit: every
# acknowledged commit is counted, and nothing beyond what was in flight.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $clients = 16;
my $orgs = 4;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "max_connections = 40");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
# quotas high enough that consume never refuses here
for my $o (0 .. $orgs - 1)
{
	$node->safe_psql('postgres',
		"SELECT tiermeter.set_org_quota('org-$o', 'conversation_seconds', 1000000000000)");
}

# Each client runs one psql that records usage in a loop, one call per
# transaction, and echoes a line after each call returns.  With
# ON_ERROR_STOP, psql runs the echo only if the call got its ReadyForQuery,
# after the commit; a call cut off by the crash stops the script before its
# echo (its row may have been printed already, so rows are not counted).
# Half use record_usage, half consume; on each org half the clients carry an
# idempotency key (their row goes through the executor's INSERT ... ON
# CONFLICT), half do not (the row is written into the table and its indexes
# directly).
my $dir = PostgreSQL::Test::Utils::tempdir;
my @procs;
sub keyed { my ($c) = @_; return int($c / $orgs) % 2 == 0; }
for my $c (0 .. $clients - 1)
{
	my $org = 'org-' . ($c % $orgs);
	my $fn = $c % 2 ? 'consume' : 'record_usage';
	my $sql = '';
	for my $n (1 .. 20000)
	{
		my $key = keyed($c) ? ", idempotency_key => 'c$c-$n'" : '';
		$sql .= "SELECT tiermeter.$fn('$org', 1$key);\n\\echo ack c$c-$n\n";
	}
	open my $fh, '>', "$dir/client$c.sql" or die;
	print $fh $sql;
	close $fh;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-f', "$dir/client$c.sql" ],
		'>', "$dir/client$c.out", '2>', "$dir/client$c.err");
	push @procs, $h;
}

# let them run, then crash the server under them
usleep(3_000_000);
$node->stop('immediate');
$_->finish for @procs;

my %acked;
my $total_acked = 0;
for my $c (0 .. $clients - 1)
{
	my $org = 'org-' . ($c % $orgs);
	open my $fh, '<', "$dir/client$c.out" or die;
	my $n = grep { /^ack / } <$fh>;
	close $fh;
	$acked{$org} += $n;
	$total_acked += $n;
}
cmp_ok($total_acked, '>', 100, "clients had $total_acked commits acknowledged before the crash");
my $refused = 0;
for my $c (0 .. $clients - 1)
{
	open my $fh, '<', "$dir/client$c.out" or die;
	my @lines = <$fh>;
	close $fh;
	for my $i (0 .. $#lines)
	{
		next unless $lines[$i] =~ /^f$/;
		$refused++;
		diag("client $c refused before: " . ($lines[$i + 1] // 'end'));
	}
}
is($refused, 0, 'no call was refused (the quotas are 10^12)');

$node->start;

for my $o (0 .. $orgs - 1)
{
	my $org = "org-$o";
	my $in_flight = $clients / $orgs;	# at most one call per client
	my $used = $node->safe_psql('postgres',
		"SELECT used FROM tiermeter.check_org_limits('$org')");
	my $rows = $node->safe_psql('postgres',
		"SELECT count(*) FROM tiermeter.usage_log WHERE org_id = '$org'");
	cmp_ok($used, '>=', $acked{$org}, "$org: every acknowledged commit counted ($used >= $acked{$org})");
	cmp_ok($used, '<=', $acked{$org} + $in_flight, "$org: nothing beyond what was in flight");
	is($used, $rows, "$org: the cache, rebuilt after the crash, agrees with the ledger");
}

# the ledger's indexes, replayed from the WAL, hold exactly its rows
$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');
for my $index ('usage_log_org_feature_time', 'usage_log_idempotency')
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT bt_index_check('tiermeter.$index', true)");
	is($ret, 0, "$index holds every row of the ledger after recovery (amcheck)") or diag($err);
}
is($node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE idempotency_key IS NULL) > 0 AND count(*) FILTER (WHERE idempotency_key IS NOT NULL) > 0 FROM tiermeter.usage_log"),
	't', 'rows with and without a key were recorded');

# every acknowledged key is in the ledger, exactly once
my %keys = map { $_ => 1 } split /\n/, $node->safe_psql('postgres',
	"SELECT idempotency_key FROM tiermeter.usage_log WHERE idempotency_key IS NOT NULL");
my $missing = 0;
for my $c (grep { keyed($_) } 0 .. $clients - 1)
{
	open my $fh, '<', "$dir/client$c.out" or die;
	my @acks = grep { /^ack / } <$fh>;
	for my $i (0 .. $#acks)
	{
		next unless $acks[$i] =~ /^ack (\S+)/ && !$keys{$1};
		$missing++;
		diag("missing $1, ack " . ($i + 1) . " of " . scalar(@acks) . " of client $c");
	}
	close $fh;
}
is($missing, 0, 'no acknowledged idempotency key is missing');

# recording goes on after recovery, through the rebuilt cache
my $before = $node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('org-0')");
$node->safe_psql('postgres', "SELECT tiermeter.record_usage('org-0', 5)");
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('org-0')"),
	$before + 5, 'usage recorded after recovery is counted');

$node->stop;
done_testing();
