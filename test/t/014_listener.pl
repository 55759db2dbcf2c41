# The listener example (examples/listener/listen.py, Debian's python3 and
# python3-psycopg): running as a role with only the reader level, it relays
# each limit event once its transaction commits, never before, and never
# one that rolls back.
use strict;
use warnings;

use File::Basename;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $python = '/usr/bin/python3';
plan skip_all => "$python with psycopg is not installed"
  unless system($python, '-c', 'import psycopg') == 0;
my $listener = dirname(__FILE__) . '/../examples/listener/listen.py';

my $node = PostgreSQL::Test::Cluster->new('listener');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tiermeter;
	CREATE ROLE notifier LOGIN;
	SELECT tiermeter.grant_access('notifier', 'reader');
});

my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[ $python, $listener, '--dsn', $node->connstr('postgres') . ' user=notifier', '--count', '3' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
$h->pump until $err =~ /listening/;

# a crossing that rolls back: nothing relayed
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tiermeter.record_usage('acme', 3000);
	ROLLBACK;
});

# a crossing held open: nothing relayed until its commit
my $session = $node->background_psql('postgres');
$session->query_safe('BEGIN');
$session->query_safe("SELECT tiermeter.record_usage('acme', 2900)");
$h->pump_nb;
sleep 1;
$h->pump_nb;
is($out, '', 'nothing relayed before the crossing commits, nor for the one rolled back');
$session->query_safe('COMMIT');
$h->pump until $out =~ /reached 80%/;
like($out, qr/^org acme: conversation_seconds reached 80% of its quota \(2900 of 3600\) in the period from \d{4}-\d\d-\d\d 00:00 UTC$/m,
	'the crossing is relayed after its commit, with what limit_events holds');

# a tier change and the 100 % crossing
$node->safe_psql('postgres', "SELECT tiermeter.set_org_tier('acme', 'basic')");
$node->safe_psql('postgres', "SELECT tiermeter.record_usage('acme', 15100)");
$h->finish;
my @lines = split /\n/, $out;
is(scalar @lines, 3, 'three events, one line each');
is($lines[1], 'org acme: tier free -> basic', 'the tier change');
like($lines[2], qr/^org acme: conversation_seconds reached 100% of its quota \(18000 of 18000\)/, 'the 100 % crossing on the new tier');
unlike($out, qr/reached 80%.*\n.*reached 80%/s, 'the 80 % event once');
$session->quit;

$node->stop;
done_testing();
