# Eviction with far more orgs than the cache holds (tiermeter.cache_size =
# 100): a new key evicts one entry (a clock over a window of the entries,
# not a tenth of the table under every lock), a transaction that pins the
# whole cache falls back to the tables, and under a mixed load (records,
# consumes, checks and grants over 2000 orgs) the cache still equals the
# ledger and consume never passes a quota.  cache_stats() shows the counts.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('evict');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "tiermeter.cache_size = 100");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

sub stats
{
	return $node->safe_psql('postgres',
		"SELECT entries || ' ' || evictions FROM tiermeter.cache_stats()");
}

# fill the cache: 100 orgs, each read twice (past 90 entries a key is
# admitted on its second miss; each key read twice in a row)
$node->safe_psql('postgres', "
	SELECT count(tiermeter.check_org_limits('c-' || i))
	  FROM generate_series(1, 100) i CROSS JOIN LATERAL generate_series(1, 2 + i % 1) j");
is(stats(), '100 0', 'the cache is full: 100 entries, nothing evicted');

# one more key evicts exactly one entry
$node->safe_psql('postgres', "
	SELECT count(tiermeter.check_org_limits('n-1')) FROM generate_series(1, 2)");
is(stats(), '100 1', 'a new key evicted one entry, the cache stays full');
$node->safe_psql('postgres', "
	SELECT count(tiermeter.check_org_limits('n-' || i))
	  FROM generate_series(2, 11) i CROSS JOIN LATERAL generate_series(1, 2 + i % 1) j");
is(stats(), '100 11', 'ten more keys: ten more evictions, one each');

# a transaction recording for 500 orgs (more than the cache, fewer than a
# big transaction) pins every entry it can at commit; the rest of its keys
# find no entry to evict and are answered from the tables afterwards
$node->safe_psql('postgres', "
	BEGIN;
	SELECT count(tiermeter.record_usage('p-' || i, 7)) FROM generate_series(1, 500) i;
	COMMIT;");
is($node->safe_psql('postgres', "
	SELECT count(*) FROM generate_series(1, 500) i
	 WHERE (tiermeter.check_org_limits('p-' || i)).used IS DISTINCT FROM 7::bigint"),
	'0', 'a transaction larger than the cache: every org answers its 7 s');
cmp_ok((split / /, stats())[0], '<=', 100, 'entries never exceed the capacity');

# a mixed load over 2000 orgs with a cache of 100: records and checks on
# m-*, consumes on q-* (free tier: 3600 s), grants on m-*
$node->pgbench(
	'--no-vacuum --client=4 --jobs=2 --time=4',
	0,
	[qr{processed: [1-9]}],
	[qr{^$}],
	'mixed load with a cache far below the orgs',
	{
		'001_record' => q{
			\set o random(1, 2000)
			SELECT tiermeter.record_usage('m-' || :o, 3);
		},
		'002_check' => q{
			\set o random(1, 2000)
			SELECT tiermeter.check_org_limits('m-' || :o);
		},
		'003_consume' => q{
			\set o random(1, 50)
			SELECT tiermeter.consume('q-' || :o, 100);
		},
		'004_grant' => q{
			\set o random(1, 2000)
			SELECT tiermeter.grant_usage('m-' || :o, 1);
		}
	});

is($node->safe_psql('postgres', "
	SELECT count(*) FROM tiermeter.orgs o
	 WHERE o.org_id LIKE 'm-%' OR o.org_id LIKE 'q-%' OR o.org_id LIKE 'p-%'"),
	$node->safe_psql('postgres', "
	SELECT count(DISTINCT org_id) FROM (
		SELECT org_id FROM tiermeter.usage_log UNION ALL SELECT org_id FROM tiermeter.usage_grants) u"),
	'every org that recorded or was granted exists');
is($node->safe_psql('postgres', "
	SELECT count(*) FROM tiermeter.orgs o
	 WHERE (tiermeter.check_org_limits(o.org_id)).used IS DISTINCT FROM
	       (SELECT coalesce(sum(amount), 0) FROM tiermeter.usage_log u WHERE u.org_id = o.org_id)"),
	'0', 'after the mixed load every org answers what its ledger holds');
is($node->safe_psql('postgres', "
	SELECT count(*) FROM tiermeter.orgs o
	 WHERE o.org_id LIKE 'q-%'
	   AND (SELECT sum(amount) FROM tiermeter.usage_log u WHERE u.org_id = o.org_id) > 3600"),
	'0', 'consume never passed a quota');
my ($entries, $evictions) = split / /, stats();
cmp_ok($entries, '<=', 100, "entries within the capacity ($entries)");
cmp_ok($evictions, '>', 100, "the load evicted ($evictions evictions)");

$node->stop;
done_testing();
