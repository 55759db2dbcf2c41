# Prepared transactions under load, and a crash in the middle.  Eight
# clients each run transactions that record usage, consume quota and
# PREPARE, then (up to 20 ms later) COMMIT or ROLLBACK PREPARED them at
# random, while two more check the same orgs.  The postmaster is killed
# (immediate shutdown) while they run; after the restart the transactions
# left prepared are committed or rolled back.  Then every org's answer
# equals its ledger, no org's consumed usage passes its quota, and the
# cache answers again.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('twophase_load');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'tiermeter'
max_prepared_transactions = 40
max_connections = 60
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
# 20 orgs: 1000 s used of 3600, so consume runs into the quota
$node->safe_psql('postgres',
	"SELECT tiermeter.record_usage('tl-' || i, 1000) FROM generate_series(1, 20) i");

my $dir = PostgreSQL::Test::Utils::tempdir;
open my $fh, '>', "$dir/prepare.sql" or die;
print $fh q{\set org random(1, 20)
\set amount random(1, 50)
\set gid random(1, 1000000000)
\set commit random(0, 2)
\set pause random(0, 20)
BEGIN;
SELECT tiermeter.record_usage('tl-:org', :amount, 'reports');
SELECT tiermeter.consume('tl-:org', 100);
PREPARE TRANSACTION 'tl-:client_id-:gid';
\sleep :pause ms
\if :commit
COMMIT PREPARED 'tl-:client_id-:gid';
\else
ROLLBACK PREPARED 'tl-:client_id-:gid';
\endif
};
close $fh;
open $fh, '>', "$dir/check.sql" or die;
print $fh q{\set org random(1, 20)
SELECT tiermeter.check_org_limits('tl-:org');
SELECT tiermeter.check_org_limits('tl-:org', 'reports');
};
close $fh;

sub pgbench
{
	my ($script, $clients, $seconds) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', '-M', 'simple', '-c', $clients, '-j', 2, '-T', $seconds,
		  '-f', $script, '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
	return ($h, \$out, \$err);
}

# a first run to the end: nothing lost, nothing counted twice
my ($h1, $out1, $err1) = pgbench("$dir/prepare.sql", 8, 6);
my ($h2, $out2, $err2) = pgbench("$dir/check.sql", 2, 6);
$h1->finish;
$h2->finish;
like($$out1, qr/number of transactions actually processed: [1-9]/, 'prepared transactions ran');
note($$out1 =~ /(number of transactions actually processed: \d+)/);
unlike($$err1, qr/ERROR/, 'without an error') or diag($$err1);

my $compare = q{
	SELECT count(*) FILTER (WHERE c.used IS DISTINCT FROM coalesce(l.total, 0))
	  FROM (SELECT 'tl-' || i AS org_id, f FROM generate_series(1, 20) i,
	               unnest(ARRAY['conversation_seconds', 'reports']) f) k
	  CROSS JOIN LATERAL tiermeter.check_org_limits(k.org_id, k.f) c
	  LEFT JOIN (SELECT org_id, feature, sum(amount) AS total FROM tiermeter.usage_log
	              GROUP BY 1, 2) l ON l.org_id = k.org_id AND l.feature = k.f};
my $over = q{
	SELECT count(*) FROM (SELECT org_id, sum(amount) AS total FROM tiermeter.usage_log
	                        WHERE feature = 'conversation_seconds' GROUP BY 1) s
	 WHERE total > 3600};
is($node->safe_psql('postgres', $compare), '0', 'every answer equals its ledger');
is($node->safe_psql('postgres', $over), '0', 'no org consumed past its quota');
cmp_ok($node->safe_psql('postgres',
	"SELECT count(*) FROM tiermeter.usage_log WHERE feature = 'conversation_seconds' AND amount = 100"),
	'>', 0, 'some consumed quota was committed');

# again, killed in the middle
($h1, $out1, $err1) = pgbench("$dir/prepare.sql", 8, 30);
($h2, $out2, $err2) = pgbench("$dir/check.sql", 2, 30);
sleep 4;
$node->stop('immediate');
$h1->finish;
$h2->finish;
$node->start;
my $left = $node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts');
note("prepared transactions left by the crash: $left");
# before they are resolved: answers from the tables, still equal to the ledger
is($node->safe_psql('postgres', $compare), '0', 'after the restart, every answer equals its ledger');
my $i = 0;
for my $gid (split /\n/, $node->safe_psql('postgres', 'SELECT gid FROM pg_prepared_xacts ORDER BY gid'))
{
	my $how = $i++ % 2 ? 'COMMIT' : 'ROLLBACK';
	$node->safe_psql('postgres', "$how PREPARED '$gid'");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0', 'all resolved');
is($node->safe_psql('postgres', $compare), '0', 'every answer equals its ledger once they are resolved');
is($node->safe_psql('postgres', $over), '0', 'no org consumed past its quota');

my $hits = $node->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()');
$node->safe_psql('postgres', $compare);
cmp_ok($node->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()'), '>=', $hits + 40,
	'the cache answers every org again');

$node->stop;
done_testing();
