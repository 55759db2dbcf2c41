# tiermeter on a Citus cluster (a coordinator and two workers, each with
# shared_preload_libraries = 'citus,tiermeter').  Citus runs every
# transaction that writes on more than one node as a two-phase commit:
# - CREATE EXTENSION tiermeter on the coordinator is propagated to the
#   workers that way (it seeds the config tables, which the cache notes);
# - usage recorded on the workers by one transaction (here by a trigger on
#   a table of the application's, distributed by org_id) is prepared on
#   each worker, counted there from COMMIT PREPARED on, by the worker's
#   cache, and not at all when the transaction rolls back.
# Runs only where Citus is installed (docs/scaling.md says how to build it).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TmCitus;

my @nodes = TmCitus::start_cluster("max_prepared_transactions = 20\nlog_statement = 'all'\n");
my ($coord, $w1, $w2) = @nodes;

# CREATE EXTENSION, propagated to the workers by a two-phase commit
my ($rc, $out, $err) = $coord->psql('postgres', 'CREATE EXTENSION tiermeter');
is($rc, 0, 'CREATE EXTENSION tiermeter on the coordinator') or diag($err);
for my $w ($w1, $w2)
{
	is($w->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'tiermeter'"),
		$coord->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'tiermeter'"),
		$w->name . ' has it too');
	ok($w->log_contains(qr/PREPARE TRANSACTION 'citus_/), $w->name . ' prepared it');
}

# the application's table, distributed by org_id; each row records usage
# on the worker that holds it
$coord->safe_psql('postgres', q{
	CREATE TABLE app_usage (org_id text NOT NULL, seconds bigint NOT NULL);
	SELECT create_distributed_table('app_usage', 'org_id');
	CREATE FUNCTION app_record() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM tiermeter.record_usage(NEW.org_id, NEW.seconds);
		RETURN NULL;
	END $$;
	SET citus.enable_unsafe_triggers = on;
	CREATE TRIGGER app_record AFTER INSERT ON app_usage FOR EACH ROW EXECUTE FUNCTION app_record();
});

# two orgs whose rows live on different workers
my @orgs;
my %worker_of;
for my $i (1 .. 50)
{
	my $org = "org-$i";
	my $port = $coord->safe_psql('postgres', qq{
		SELECT nodeport FROM pg_dist_shard_placement
		 WHERE shardid = get_shard_id_for_distribution_column('app_usage', '$org')});
	my ($w) = grep { $_->port == $port } ($w1, $w2);
	next if !$w || grep { $worker_of{$_} == $w } @orgs;
	push @orgs, $org;
	$worker_of{$org} = $w;
	last if @orgs == 2;
}
is(scalar @orgs, 2, 'two orgs, one on each worker');

sub used_on_worker
{
	my ($org) = @_;
	return $worker_of{$org}->safe_psql('postgres',
		"SELECT used FROM tiermeter.check_org_limits('$org')");
}

# one transaction writing on both workers: a two-phase commit
$coord->safe_psql('postgres', "INSERT INTO app_usage VALUES ('$orgs[0]', 100), ('$orgs[1]', 200)");
is(used_on_worker($orgs[0]), '100', 'the usage counts on the first worker');
is(used_on_worker($orgs[1]), '200', 'and on the second');
my $hits = $worker_of{ $orgs[0] }->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()');
is(used_on_worker($orgs[0]), '100', 'again');
cmp_ok($worker_of{ $orgs[0] }->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()'),
	'>', $hits, "from the worker's cache");

$coord->safe_psql('postgres', qq{
	BEGIN;
	INSERT INTO app_usage VALUES ('$orgs[0]', 10), ('$orgs[1]', 20);
	INSERT INTO app_usage VALUES ('$orgs[0]', 1000), ('$orgs[1]', 2000);
	COMMIT;
});
is(used_on_worker($orgs[0]) . ' ' . used_on_worker($orgs[1]), '1110 2220',
	'a transaction block writing on both workers counts everything once');
ok($w1->log_contains(qr/COMMIT PREPARED 'citus_/) && $w2->log_contains(qr/COMMIT PREPARED 'citus_/),
	'through PREPARE TRANSACTION and COMMIT PREPARED on each worker');

$coord->safe_psql('postgres', qq{
	BEGIN;
	INSERT INTO app_usage VALUES ('$orgs[0]', 7), ('$orgs[1]', 7);
	ROLLBACK;
});
is(used_on_worker($orgs[0]) . ' ' . used_on_worker($orgs[1]), '1110 2220',
	'a rolled-back transaction counts nothing');
is($w1->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts')
	  . $w2->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'),
	'00', 'no transaction is left prepared');

$_->stop for @nodes;
done_testing();
