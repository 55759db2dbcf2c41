# tiermeter survives a clean restart and a crash (immediate stop) with every
# committed use counted, and gives the same answers with the library
# preloaded or not.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub status
{
	return sql("SELECT concat_ws(',', tier, used, quota, allowed)
	            FROM tiermeter.check_org_limits('$_[0]', '$_[1]')");
}

sql('CREATE EXTENSION tiermeter');
sql("SELECT tiermeter.record_usage('acme', 3000)");
sql("SELECT tiermeter.consume('acme', 500)");
sql("SELECT tiermeter.record_usage('acme', 2, 'users')");
sql("SELECT tiermeter.set_org_tier('beta', 'basic')");
sql("SELECT tiermeter.record_usage('beta', 100, idempotency_key => 'k1')");
sql("BEGIN; SELECT tiermeter.record_usage('acme', 99999); ROLLBACK;");

is(sql("SHOW tiermeter.idle_timeout"), '5min', 'idle_timeout defaults to 300 s when preloaded');

my %want = (
	'acme conversation_seconds' => 'free,3500,3600,t',
	'acme users'                => 'free,2,1,f',
	'beta conversation_seconds' => 'basic,100,18000,t',
	'ghost conversation_seconds' => 'free,0,3600,t',
);

sub check_all
{
	my ($when) = @_;
	for my $k (sort keys %want)
	{
		my ($org, $feature) = split / /, $k;
		is(status($org, $feature), $want{$k}, "$k $when");
	}
}

check_all('before restart');

$node->restart;
check_all('after a clean restart');

$node->stop('immediate');
$node->start;
check_all('after a crash and recovery');

# the idempotency key is still known after the crash
sql("SELECT tiermeter.record_usage('beta', 100, idempotency_key => 'k1')");
is(status('beta', 'conversation_seconds'), 'basic,100,18000,t', 'a key from before the crash is not counted again');

# without shared_preload_libraries: the same answers, and it still works
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
is(sql("SHOW shared_preload_libraries"), '', 'library not preloaded');
check_all('without preload');
is(sql("SELECT (tiermeter.consume('acme', 100)).allowed"), 't', 'consume works without preload');
is(sql("SELECT (tiermeter.consume('acme', 1)).allowed"), 'f', 'and stops at the quota');
$want{'acme conversation_seconds'} = 'free,3600,3600,f';
check_all('without preload, after more usage');

# and back: preloaded again, the usage recorded meanwhile is there
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->restart;
check_all('preloaded again');

# a cache far smaller than the working set: entries are evicted, and the
# answers stay those of the tables
$node->append_conf('postgresql.conf', "tiermeter.cache_size = 16");
$node->restart;
is(sql("SHOW tiermeter.cache_size"), '16', 'a small cache');
for my $round (1 .. 3)
{
	sql("SELECT tiermeter.record_usage('small-' || i, i) FROM generate_series(1, 60) i");
	sql("SELECT tiermeter.check_org_limits('small-' || i) FROM generate_series(60, 1, -1) i");
}
is(sql("SELECT count(*) FROM generate_series(1, 60) i
         WHERE (tiermeter.check_org_limits('small-' || i)).used <> 3 * i"),
   '0', 'every org right after evictions');
sql("SELECT tiermeter.consume('small-' || i, 3600 - 3 * i) FROM generate_series(1, 60) i");
is(sql("SELECT count(*) FROM generate_series(1, 60) i
         WHERE (tiermeter.consume('small-' || i, 1)).allowed"),
   '0', 'consume stops at the quota for every org after evictions');
is(sql("SELECT sum(used) FROM generate_series(1, 60) s(i), tiermeter.check_org_limits('small-' || i)"),
   60 * 3600, 'and used is exactly the quota everywhere');

$node->stop;
done_testing();
