# A billing period ends while 8 clients record and consume: afterwards the
# cache answers the new period with exactly the ledger's usage in it, and
# the old period's usage stays in the old period.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 8;

my $node = PostgreSQL::Test::Cluster->new('boundary');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "max_connections = 30");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

# the org's stored period ends 3 seconds from now; the next one starts there
$node->safe_psql('postgres', q{
	SELECT tiermeter.set_org_quota('edge', 'conversation_seconds', 1000000000000);
	UPDATE tiermeter.orgs
	   SET period_end = date_trunc('second', now()) + interval '3 seconds',
	       period_start = date_trunc('second', now()) - interval '1 day',
	       billing_anchor = date_trunc('second', now()) + interval '3 seconds'
	 WHERE org_id = 'edge';
	SELECT tiermeter.check_org_limits('edge');
});
my $boundary = $node->safe_psql('postgres',
	"SELECT period_end FROM tiermeter.orgs WHERE org_id = 'edge'");

# each client calls in a loop, one transaction per call (every seventh
# rolled back), until 2 seconds after the boundary
$node->safe_psql('postgres', q{
	CREATE PROCEDURE hammer(fn text, until timestamptz) LANGUAGE plpgsql AS $$
	DECLARE
		n int := 0;
	BEGIN
		LOOP
			n := n + 1;
			IF fn = 'consume' THEN
				PERFORM tiermeter.consume('edge', 1);
			ELSE
				PERFORM tiermeter.record_usage('edge', 1);
			END IF;
			IF n % 7 = 0 THEN
				PERFORM tiermeter.check_org_limits('edge');
				ROLLBACK;
			ELSE
				COMMIT;
			END IF;
			EXIT WHEN clock_timestamp() > until;
		END LOOP;
	END $$;
});
my $dir = PostgreSQL::Test::Utils::tempdir;
my @procs;
for my $c (0 .. $clients - 1)
{
	my $fn = $c % 2 ? 'consume' : 'record_usage';
	push @procs, IPC::Run::start(
		[ 'psql', '-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-c', "CALL hammer('$fn', timestamptz '$boundary' + interval '2 seconds')" ],
		'>', "$dir/c$c.out", '2>', "$dir/c$c.err");
}
$_->finish for @procs;
for my $c (0 .. $clients - 1)
{
	is(slurp_file("$dir/c$c.err"), '', "client $c ran without errors");
}

my ($before, $after) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT (SELECT count(*) FROM tiermeter.usage_log WHERE org_id = 'edge' AND occurred_at < '$boundary'),
	       (SELECT count(*) FROM tiermeter.usage_log WHERE org_id = 'edge' AND occurred_at >= '$boundary')});
cmp_ok($before, '>', 0, "usage before the boundary ($before)");
cmp_ok($after, '>', 0, "usage after the boundary ($after)");

my ($used, $start) = split /\|/, $node->safe_psql('postgres',
	"SELECT used, period_start FROM tiermeter.check_org_limits('edge')");
is($start, $boundary, 'the org is in the new period');
is($used, $after, 'the cache counts exactly the new period\'s usage');

$node->restart;
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('edge')"),
	$after, 'the same after a restart');

$node->stop;
done_testing();
