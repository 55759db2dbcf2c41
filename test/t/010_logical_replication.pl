# Usage that arrives by logical replication is seen by the subscriber's
# shared-memory cache: the invalidation triggers fire in the apply worker
# (ENABLE ALWAYS), so a cached org answers with the replicated rows.  So is
# a replicated config edit, by a session that already holds its copy of the
# config tables (the apply worker fires their row triggers, not their
# statement triggers).  And a transaction prepared on the publisher
# (two_phase): the apply worker prepares it and commits it without any
# statement the library sees; the subscriber counts it from the commit on.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pub = PostgreSQL::Test::Cluster->new('publisher');
$pub->init(allows_streaming => 'logical');
$pub->append_conf('postgresql.conf', 'max_prepared_transactions = 10');
$pub->start;
my $sub = PostgreSQL::Test::Cluster->new('subscriber');
$sub->init;
$sub->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'\nmax_prepared_transactions = 10");
$sub->start;

$pub->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$sub->safe_psql('postgres', 'CREATE EXTENSION tiermeter');
$pub->safe_psql('postgres',
	'CREATE PUBLICATION usage FOR TABLE tiermeter.orgs, tiermeter.usage_log');
my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres',
	"CREATE SUBSCRIPTION usage CONNECTION '$connstr' PUBLICATION usage WITH (copy_data = false, two_phase = true)");
$pub->wait_for_catchup('usage');

# the subscriber caches r-1 as a new free org, with nothing used
is($sub->safe_psql('postgres', "SELECT used || ' ' || tier FROM tiermeter.check_org_limits('r-1')"),
	'0 free', 'the subscriber caches r-1, unknown yet');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	'0', 'a second check answers from the cache');

# the publisher records usage and moves r-1 to another tier
$pub->safe_psql('postgres', "SELECT tiermeter.record_usage('r-1', 700)");
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	'700', 'replicated usage is seen by the next check');

$pub->safe_psql('postgres', "SELECT tiermeter.set_org_tier('r-1', 'basic')");
$pub->safe_psql('postgres', "SELECT tiermeter.record_usage('r-1', 50)");
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', "SELECT used || ' ' || tier || ' ' || quota FROM tiermeter.check_org_limits('r-1')"),
	'750 basic 18000', 'a replicated tier change and more usage are seen too');

# and consume on the subscriber counts them
is($sub->safe_psql('postgres', "SELECT allowed || ' ' || used FROM tiermeter.consume('r-1', 17250)"),
	'true 18000', 'consume on the subscriber uses exactly what is left');
is($sub->safe_psql('postgres', "SELECT allowed FROM tiermeter.consume('r-1', 1)"),
	'f', 'and not one second more');

# a config table replicated: a subscriber session that read the config
# (its copy, for builds) sees the edit on its next call, for a new org
$pub->safe_psql('postgres', 'ALTER PUBLICATION usage ADD TABLE tiermeter.tier_quotas');
$sub->safe_psql('postgres', 'ALTER SUBSCRIPTION usage REFRESH PUBLICATION WITH (copy_data = false)');
my $session = $sub->background_psql('postgres');
is($session->query_safe("SELECT quota FROM tiermeter.check_org_limits('r-new-1')"),
	'3600', 'a subscriber session answers a new org from the config it read');
$pub->safe_psql('postgres',
	"UPDATE tiermeter.tier_quotas SET quota = 777 WHERE tier_id = 'free' AND feature = 'conversation_seconds'");
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', "SELECT quota FROM tiermeter.tier_quotas WHERE tier_id = 'free' AND feature = 'conversation_seconds'"),
	'777', 'the edit is replicated');
is($session->query_safe("SELECT quota FROM tiermeter.check_org_limits('r-new-2')"),
	'777', 'the same session answers the next new org with the replicated quota');
is($session->query_safe("SELECT quota FROM tiermeter.check_org_limits('r-new-1')"),
	'777', 'and the org it had read');
$session->quit;

# a prepared transaction, replicated as one
$sub->poll_query_until('postgres',
	"SELECT subtwophasestate = 'e' FROM pg_subscription WHERE subname = 'usage'")
  or die 'two_phase was not enabled';
my $used = $sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')");
$pub->safe_psql('postgres', q{
	BEGIN;
	SELECT tiermeter.record_usage('r-1', 5);
	PREPARE TRANSACTION 'lr-1';
});
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '1',
	'the subscriber prepared it too');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	$used, 'prepared: its usage does not count on the subscriber');
$pub->safe_psql('postgres', "COMMIT PREPARED 'lr-1'");
$pub->wait_for_catchup('usage');
is($sub->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
	'the apply worker committed it');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	$used + 5, 'its usage counts on the subscriber from the commit on');
my $hits = $sub->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()');
is($sub->safe_psql('postgres', "SELECT used FROM tiermeter.check_org_limits('r-1')"),
	$used + 5, 'and the cache answers with it');
cmp_ok($sub->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()'), '>', $hits,
	'from an entry again');

done_testing();
