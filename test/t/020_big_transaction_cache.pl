# A transaction that records usage for more keys than a big transaction's
# threshold (1024 here, tiermeter.cache_size = 4000) leaves the cache to the
# other sessions' keys: its misses past the threshold are answered from the
# tables without making entries (no eviction), and its commit invalidates
# the entries of the keys it recorded for, one by one, not every entry of
# its orgs (the other features of its orgs stay cached).  Its answers, and
# every answer after it, are the ledger's.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('bigcache');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "tiermeter.cache_size = 4000");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

sub stats
{
	return $node->safe_psql('postgres',
		"SELECT hits || ' ' || misses || ' ' || evictions FROM tiermeter.cache_stats()");
}

# other sessions' keys: 1000 orgs checked, and 100 orgs of the big
# transaction with 7 s of usage and a cached entry of another feature
$node->safe_psql('postgres', "
	SELECT count(tiermeter.check_org_limits('k-' || i)) FROM generate_series(1, 1000) i;
	SELECT count(tiermeter.record_usage('x-' || i, 7)) FROM generate_series(1, 100) i;
	SELECT count(tiermeter.check_org_limits('x-' || i, 'reports')) FROM generate_series(1, 100) i;");
$node->safe_psql('postgres', 'SELECT tiermeter.cache_stats_reset()');

# the big transaction: 3 s for each of 3000 orgs; each answer counts the
# org's committed usage and its own
is($node->safe_psql('postgres', "
	SELECT count(*) FILTER (WHERE s.used <> CASE WHEN i <= 100 THEN 10 ELSE 3 END)
	       || ' of ' || count(*)
	  FROM generate_series(1, 3000) i, tiermeter.record_usage('x-' || i, 3) s"),
	'0 of 3000', 'every answer of the big transaction is its org\'s usage with its own');
my ($hits, $misses, $evictions) = split / /, stats();
is($evictions, 0, 'the big transaction evicted no entry');

# the other sessions' keys are all still cached, and the other feature of
# the big transaction's orgs too
$node->safe_psql('postgres', 'SELECT tiermeter.cache_stats_reset()');
$node->safe_psql('postgres', "
	SELECT count(tiermeter.check_org_limits('k-' || i)) FROM generate_series(1, 1000) i;
	SELECT count(tiermeter.check_org_limits('x-' || i, 'reports')) FROM generate_series(1, 100) i;");
($hits, $misses, $evictions) = split / /, stats();
is("$hits $misses", '1100 0', 'the 1000 orgs checked before and the 100 orgs\' other feature: all hits');

# and the answers are the ledger's, the big transaction's orgs included
is($node->safe_psql('postgres', "
	SELECT count(*) FROM generate_series(1, 3000) i
	 WHERE (tiermeter.check_org_limits('x-' || i)).used IS DISTINCT FROM
	       (SELECT sum(amount) FROM tiermeter.usage_log u WHERE u.org_id = 'x-' || i)"),
	'0', 'all 3000 orgs: the cache agrees with the ledger');
is($node->safe_psql('postgres', "
	SELECT count(*) FROM generate_series(1, 3000) i
	 WHERE (tiermeter.check_org_limits('x-' || i)).used IS DISTINCT FROM
	       (SELECT sum(amount) FROM tiermeter.usage_log u WHERE u.org_id = 'x-' || i)"),
	'0', 'the same when asked again (from the entries the first round made)');

$node->stop;
done_testing();
