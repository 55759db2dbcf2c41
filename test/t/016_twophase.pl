# Two-phase commit across a restart: a transaction prepared before an
# immediate shutdown is still prepared after it.  Until it is resolved,
# every org is answered from the tables (nobody knows which orgs it
# touched), its consume keeps the quota it took, and nothing it recorded
# counts; COMMIT PREPARED, in another session, makes it count, announces
# its limit events, and the cache serves again.  Without the library
# preloaded, a COMMIT PREPARED in a session that never loaded it cannot
# announce: rollover() does.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('twophase');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'\nmax_prepared_transactions = 10");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$node->safe_psql('postgres', q{
	SELECT tiermeter.record_usage('tp-a', 100);
	SELECT tiermeter.record_usage('tp-b', 3000);
	SELECT tiermeter.record_usage('tp-other', 10);
});

sub stat_of
{
	my ($what) = @_;
	return $node->safe_psql('postgres', "SELECT $what FROM tiermeter.cache_stats()");
}

# prepared: 2900 s for tp-a (its 80 % crossing: a limit event), and a
# consume of 500 s for tp-b (3500 of 3600)
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tiermeter.record_usage('tp-a', 2900);
	SELECT allowed FROM tiermeter.consume('tp-b', 500);
	PREPARE TRANSACTION 'restart-1';
});
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('tp-a')"),
	'100', 'prepared: its usage does not count yet');

$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', 'SELECT gid FROM pg_prepared_xacts'),
	'restart-1', 'the transaction is still prepared after the restart');

# which orgs it touched is not known after a restart: all from the tables
my $fallbacks = stat_of('fallbacks');
is($node->safe_psql('postgres', q{
	SELECT string_agg(org_id || ' ' || used, ', ' ORDER BY org_id)
	  FROM (SELECT (tiermeter.check_org_limits(o)).* FROM unnest(ARRAY['tp-a', 'tp-b', 'tp-other']) o) s}),
	'tp-a 100, tp-b 3000, tp-other 10', 'the orgs are answered without the prepared usage');
is(stat_of('entries'), '0', 'no entry is built while an unknown prepared transaction is unresolved');
cmp_ok(stat_of('fallbacks'), '>=', $fallbacks + 3, 'each answer came from the tables');

# its consume still holds the quota: another consume of tp-b waits
my ($rc, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '300ms'; SELECT allowed FROM tiermeter.consume('tp-b', 200)");
like($err, qr/lock timeout/, 'a consume of the same org waits for the prepared transaction');
is($node->safe_psql('postgres', "SELECT allowed || ' ' || used FROM tiermeter.consume('tp-other', 200)"),
	'true 210', 'another org consumes at once');

# COMMIT PREPARED from another session: counted, announced
($rc, $out, $err) = $node->psql('postgres', q{
	LISTEN tiermeter;
	COMMIT PREPARED 'restart-1';
});
is($rc, 0, 'COMMIT PREPARED after the restart');
my @payloads = $out =~ /Asynchronous notification "tiermeter" with payload "(.*)" received/g;
is(join('|', @payloads), $node->safe_psql('postgres',
	"SELECT format('{\"id\": %s, \"kind\": \"%s\"}', id, kind) FROM tiermeter.limit_events WHERE org_id = 'tp-a'"),
	'its threshold event is announced by the session that committed it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM tiermeter._unannounced'), '0',
	'and nothing is left to announce');
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('tp-a')"),
	'3000', 'its usage counts from COMMIT PREPARED on');
is($node->safe_psql('postgres', "SELECT allowed || ' ' || reason || ' ' || used FROM tiermeter.consume('tp-b', 200)"),
	'false limit_exceeded 3500', 'its consume counts: 200 s more would pass the quota');
is($node->safe_psql('postgres', "SELECT allowed || ' ' || used FROM tiermeter.consume('tp-b', 100)"),
	'true 3600', 'the last 100 s fit');

# the cache serves again
my $hits = stat_of('hits');
$node->safe_psql('postgres', "SELECT tiermeter.check_org_limits('tp-a')") for 1 .. 3;
cmp_ok(stat_of('entries'), '>', 0, 'entries are built again');
cmp_ok(stat_of('hits'), '>=', $hits + 2, 'and answer the checks');
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('tp-a')"),
	'3000', 'with the committed usage');

# a transaction prepared and committed after the restart: known orgs only
$node->safe_psql('postgres', "SELECT tiermeter.check_org_limits('tp-other')");
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tiermeter.record_usage('tp-a', 5);
	PREPARE TRANSACTION 'after-1';
});
$fallbacks = stat_of('fallbacks');
$hits = stat_of('hits');
$node->safe_psql('postgres', "SELECT tiermeter.check_org_limits('tp-other')");
is(stat_of('hits'), $hits + 1, 'an org it did not touch is answered from the cache');
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('tp-a')"),
	'3000', 'the org it touched, without its usage');
is(stat_of('fallbacks'), $fallbacks + 1, 'from the tables');
$node->safe_psql('postgres', "COMMIT PREPARED 'after-1'");
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('tp-a')"),
	'3005', 'and with it after COMMIT PREPARED');

# a role with no access to tiermeter (an XA transaction manager's) resolves
# its own transaction first after a restart: nothing of tiermeter's in the way
$node->safe_psql('postgres', 'CREATE ROLE xa LOGIN');
$node->safe_psql('postgres', "BEGIN; SELECT 1; PREPARE TRANSACTION 'xa-1'", extra_params => [ '-U', 'xa' ]);
# and a database without the extension, where someone named a function
# like the one that announces events: it is not called
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', q{
	CREATE SCHEMA tiermeter;
	CREATE FUNCTION tiermeter._announce_events() RETURNS bigint LANGUAGE plpgsql
	AS $$ BEGIN RAISE NOTICE 'planted function called'; RETURN 0; END $$;
	BEGIN; SELECT 1; PREPARE TRANSACTION 'other-1';
});
$node->restart;
# neither touched an org of this database: the cache serves at once
$fallbacks = stat_of('fallbacks');
$hits = stat_of('hits');
$node->safe_psql('postgres', "SELECT tiermeter.check_org_limits('tp-a')") for 1 .. 2;
is(stat_of('fallbacks'), $fallbacks, 'after a restart, a prepared transaction that wrote no table of the extension sends nothing to the tables');
cmp_ok(stat_of('hits'), '>', $hits, 'the cache answers');
($rc, $out, $err) = $node->psql('postgres', "COMMIT PREPARED 'xa-1'", extra_params => [ '-U', 'xa' ]);
is($rc, 0, 'COMMIT PREPARED by a role without access to tiermeter');
is($err, '', 'without an error or a warning');
($rc, $out, $err) = $node->psql('other', "COMMIT PREPARED 'other-1'");
is($rc, 0, 'COMMIT PREPARED in a database without tiermeter');
unlike($err, qr/planted/, 'calls no function that is not the extension\'s');

# without the library preloaded: a session that never loaded it commits
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tiermeter.record_usage('tp-c', 3600);
	PREPARE TRANSACTION 'nopreload-1';
});
($rc, $out, $err) = $node->psql('postgres', q{
	LISTEN tiermeter;
	COMMIT PREPARED 'nopreload-1';
});
is($rc, 0, 'COMMIT PREPARED without the library');
unlike($out, qr/Asynchronous notification/, 'a session without the library announces nothing');
is($node->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('tp-c')"),
	'3600', 'the usage counts');
is($node->safe_psql('postgres', 'SELECT count(*) FROM tiermeter._unannounced'), '2',
	'its two threshold events wait to be announced');
($rc, $out, $err) = $node->psql('postgres', q{
	LISTEN tiermeter;
	SELECT tiermeter.rollover();
});
@payloads = $out =~ /Asynchronous notification "tiermeter" with payload "(.*)" received/g;
is(join('|', sort @payloads), $node->safe_psql('postgres',
	"SELECT string_agg(format('{\"id\": %s, \"kind\": \"%s\"}', id, kind), '|' ORDER BY format('{\"id\": %s, \"kind\": \"%s\"}', id, kind))
	   FROM tiermeter.limit_events WHERE org_id = 'tp-c'"),
	'rollover() announces them');
is($node->safe_psql('postgres', 'SELECT count(*) FROM tiermeter._unannounced'), '0',
	'once');

$node->stop;
done_testing();
