# tiermeter.distribute() on a Citus cluster (a coordinator and two workers,
# each with shared_preload_libraries = 'citus,tiermeter'): configuration
# tables become reference tables, the org-keyed tables are distributed by
# org_id, and check_org_limits, record_usage, consume and usage_stats are
# delegated by their org, so a call through the coordinator runs on the
# worker that holds the org, against that worker's cache.
# Runs only where Citus is installed (docs/scaling.md says how to build it).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TmCitus;

my @nodes = TmCitus::start_cluster(q{
shared_preload_libraries = 'citus,tiermeter,pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 20
max_prepared_transactions = 50
max_connections = 120
});
my ($coord, $w1, $w2) = @nodes;
$coord->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

# a level given before distributing
$coord->safe_psql('postgres', "CREATE ROLE early_reader LOGIN; SELECT tiermeter.grant_access('early_reader', 'reader')");

# a config edit made before distributing reaches every worker
$coord->safe_psql('postgres',
	"UPDATE tiermeter.tier_quotas SET quota = 4000 WHERE tier_id = 'free' AND feature = 'conversation_seconds'");

my $placed = q{SELECT placement, count(*) FROM tiermeter.distribute() GROUP BY 1 ORDER BY 1};
my $expected = join("\n",
	'delegated by org_id|10',
	'distributed by org_id, co-located with tiermeter.orgs|6',
	'local to each node|4',
	'reference table (a copy on every node)|5');
is($coord->safe_psql('postgres', $placed), $expected, 'distribute() places every table and delegates the functions');
is($coord->safe_psql('postgres', $placed), $expected, 'a second call changes nothing');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(logicalrelid::text || ':' || partmethod::text, ' ' ORDER BY logicalrelid::text)
	  FROM pg_dist_partition WHERE logicalrelid::text LIKE 'tiermeter.%'}),
	'tiermeter._session_slots:h tiermeter.alert_thresholds:n tiermeter.features:n tiermeter.org_quotas:h '
	  . 'tiermeter.orgs:h tiermeter.sessions:h tiermeter.stripe_prices:n tiermeter.tier_quotas:n '
	  . 'tiermeter.tiers:n tiermeter.usage_grants:h tiermeter.usage_log:h',
	"Citus's metadata agrees");
my ($rc, $out, $err) = $w1->psql('postgres', 'SELECT * FROM tiermeter.distribute()');
like($err, qr/distribute\(\) runs on the coordinator/, 'a worker refuses to distribute');

# orgs whose rows live on each worker
my (%worker_of, @on_w1, @on_w2);
for my $i (1 .. 200)
{
	my $org = "org-$i";
	my $port = $coord->safe_psql('postgres', qq{
		SELECT nodeport FROM pg_dist_shard_placement
		 WHERE shardid = get_shard_id_for_distribution_column('tiermeter.orgs', '$org')});
	my $w = $port == $w1->port ? $w1 : $w2;
	$worker_of{$org} = $w;
	push @{ $w == $w1 ? \@on_w1 : \@on_w2 }, $org;
}
ok(@on_w1 >= 3 && @on_w2 >= 3, 'orgs on both workers');
my ($a, $b, $c) = ($on_w1[0], $on_w2[0], $on_w1[1]);

sub q1 { return $coord->safe_psql('postgres', $_[0]); }
sub hits { return $_[0]->safe_psql('postgres', 'SELECT hits FROM tiermeter.cache_stats()'); }

# A limit_status from "SELECT tiermeter.f(...)" through the coordinator: the
# form Citus delegates (a field of it, or a FROM clause, would run the
# function on the coordinator).
my @cols = qw(org_id tier feature allowed reason used quota remaining percent_used
  warning unlimited period_start period_end);
sub st
{
	my ($call) = @_;
	my $row = q1("SELECT tiermeter.$call");
	$row =~ s/^\(|\)$//g;
	my @v = split /,/, $row;
	my %r;
	@r{@cols} = @v;
	return \%r;
}

# the hot path through the coordinator, delegated to the worker that holds the org
is(st("record_usage('$a', 100)")->{used}, '100', 'usage recorded');
st("record_usage('$a', 20)");
st("record_usage('$b', 300)");
my $s = st("check_org_limits('$a')");
is("$s->{org_id} $s->{tier} $s->{allowed} $s->{used} $s->{quota} $s->{remaining} $s->{percent_used}",
	"$a free t 120 4000 3880 3.00",
	'check_org_limits through the coordinator: the usage, and the quota edited before distributing');
my $other = $worker_of{$a} == $w1 ? $w2 : $w1;
my ($h, $h_other) = (hits($worker_of{$a}), hits($other));
st("check_org_limits('$a')") for 1 .. 5;
cmp_ok(hits($worker_of{$a}) - $h, '>=', 5, "each check is answered from the cache of the worker that holds the org");
is(hits($other) - $h_other, 0, "the other worker's cache is not asked");
is($coord->safe_psql('postgres', 'SELECT entries FROM tiermeter.cache_stats()'), '0',
	"the coordinator's cache holds nothing");
is(st("check_org_limits('$b')")->{used}, '300', "the other worker's org");

# not delegated (a transaction block): the coordinator answers from the
# tables, never from a cache that the workers' writes do not reach
q1("BEGIN; SELECT tiermeter.check_org_limits('$a'); COMMIT;");
q1("SELECT tiermeter.record_usage('$a', 7)");
is(q1("BEGIN; SELECT (tiermeter.check_org_limits('$a')).used; COMMIT;"), '127',
	'a check in a transaction block on the coordinator sees usage recorded on the worker since');
is(q1("BEGIN; SELECT (tiermeter.record_usage('$a', 3)).used; COMMIT;"), '130',
	'usage recorded in a transaction block through the coordinator');
is(st("check_org_limits('$a')")->{used}, '130', "and the worker's cache counts it");

# a transaction block that records twice on the coordinator (not delegated:
# the table path) while a delegated record commits on the worker between
# them: the second answer counts it.  The coordinator's snapshots do not
# show the worker's commits, so its table path remembers no sum
my $m = $on_w2[3];
st("record_usage('$m', 0)");	# the org exists before the block
my $blk = $coord->background_psql('postgres');
$blk->query_safe('BEGIN');
my $u1 = $blk->query_safe("SELECT (tiermeter.record_usage('$m', 1)).used");
st("record_usage('$m', 100)");
my $u2 = $blk->query_safe("SELECT (tiermeter.record_usage('$m', 1)).used");
$blk->query_safe('COMMIT');
$blk->quit;
is("$u1 $u2", '1 102', "a worker's commit between two calls of a transaction block is counted");
is(st("check_org_limits('$m')")->{used}, '102', 'and the worker says the same');

# idempotency keys
q1("SELECT tiermeter.record_usage('$b', 5, idempotency_key => 'k1')") for 1 .. 3;
is(st("check_org_limits('$b')")->{used}, '305', 'a repeated key counts once');

# consume: 32 clients on one org through the coordinator never pass the quota
q1("SELECT tiermeter.set_org_quota('$c', 'reports', 500)");
my $script = PostgreSQL::Test::Utils::tempdir() . '/consume.sql';
PostgreSQL::Test::Utils::append_to_file($script, "SELECT tiermeter.consume('$c', 1, 'reports');\n");
my ($pout, $perr);
my $ok = IPC::Run::run([ 'pgbench', '-n', '-c', '32', '-j', '2', '-t', '25', '-f', $script,
		'-h', $coord->host, '-p', $coord->port, 'postgres' ], '>', \$pout, '2>', \$perr);
ok($ok, '32 clients consumed through the coordinator') or diag($perr);
is(q1("SELECT coalesce(sum(amount), 0) FROM tiermeter.usage_log WHERE org_id = '$c' AND feature = 'reports'"), '500',
	'exactly the quota was recorded (800 attempts)');
is(st("check_org_limits('$c', 'reports')")->{used}, '500', 'and check_org_limits says so');
$s = st("consume('$c', 1, 'reports')");
is("$s->{allowed} $s->{reason} $s->{used}", 'f limit_exceeded 500', 'one more is refused');
($rc, $out, $err) = $coord->psql('postgres', "BEGIN; SELECT tiermeter.consume('$c', 1, 'reports'); COMMIT;");
like($err, qr/consume for org "\Q$c\E" must run on the node that holds the org/,
	'consume in a transaction block on the coordinator is refused, with a hint');

# a negative gauge delta is refused where the org is not held (its floor
# check, like consume, rests on the org's node's locks); delegated, it runs
st("record_usage('$c', 1, 'users')");
($rc, $out, $err) = $coord->psql('postgres', "BEGIN; SELECT tiermeter.record_usage('$c', -1, 'users'); COMMIT;");
like($err, qr/a negative gauge delta for org "\Q$c\E" must run on the node that holds the org/,
	'a negative gauge delta in a transaction block on the coordinator is refused');
is(st("record_usage('$c', -1, 'users')")->{used}, '0', 'delegated, it is recorded');

# config edits on the coordinator are seen on every worker on the next call
q1("UPDATE tiermeter.tier_quotas SET quota = 5000 WHERE tier_id = 'free' AND feature = 'conversation_seconds'");
is(st("check_org_limits('$a')")->{quota} . ' ' . st("check_org_limits('$b')")->{quota},
	'5000 5000', 'a quota edited on the coordinator counts on both workers');

# admin functions and Stripe events through the coordinator
q1("SELECT tiermeter.set_org_tier('$a', 'basic')");
q1("SELECT tiermeter.grant_usage('$a', 1000)");
is(st("check_org_limits('$a')")->{quota}, '19000', 'set_org_tier and grant_usage');
my $created = time();
is(q1(qq{SELECT tiermeter.apply_subscription_event('{"id": "evt_1", "type": "customer.subscription.updated",
	"created": $created, "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_1",
	"status": "active", "metadata": {"organizationId": "$b", "tier": "professional"},
	"items": {"data": [{"price": {"id": "price_unknown"}}]}}}}')}), 'applied', 'a Stripe event applied through the coordinator');
$s = st("check_org_limits('$b')");
is("$s->{tier} $s->{used} $s->{quota}", 'professional 305 72000', 'the org moved up a tier, its usage kept');
is(q1(qq{SELECT tiermeter.apply_subscription_event('{"id": "evt_1", "type": "customer.subscription.updated",
	"created": $created, "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_1",
	"status": "canceled", "metadata": {"organizationId": "$b", "tier": "professional"},
	"items": {"data": [{"price": {"id": "price_unknown"}}]}}}}')}), 'duplicate', 'a replayed event changes nothing');
like(q1("SELECT tiermeter.usage_stats('$b')"), qr/"used_seconds": 305,/, 'usage_stats');

# a worker restarts: its cache is rebuilt from its shards
$worker_of{$a}->restart;
is(st("check_org_limits('$a')")->{used}, '130', 'the usage after a worker restart');
st("record_usage('$a', 10)");
is(st("check_org_limits('$a')")->{used}, '140', 'and after more');

# an application role with the app level, through the coordinator
q1("CREATE ROLE app_role LOGIN");
q1("SELECT tiermeter.grant_access('app_role', 'app')");
q1("CREATE ROLE reader_role LOGIN");
q1("SELECT tiermeter.grant_access('reader_role', 'reader')");
my $e = $on_w2[2];
like($coord->safe_psql('postgres', "SELECT tiermeter.record_usage('$e', 9)", extra_params => [ '-U', 'app_role' ]),
	qr/^\(\Q$e\E,free,conversation_seconds,t,,9,/, 'the app level records through the coordinator');
like($coord->safe_psql('postgres', "SELECT tiermeter.consume('$e', 1)", extra_params => [ '-U', 'app_role' ]),
	qr/^\(\Q$e\E,free,conversation_seconds,t,,10,/, 'and consumes');
($rc, $out, $err) = $coord->psql('postgres', "SELECT tiermeter.set_org_tier('$e', 'enterprise')",
	extra_params => [ '-U', 'app_role' ]);
like($err, qr/permission denied/, 'but cannot change its tier');
is($coord->safe_psql('postgres', "SELECT used FROM tiermeter.org_usage WHERE org_id = '$e' AND feature = 'conversation_seconds'",
		extra_params => [ '-U', 'reader_role' ]), '10', 'the reader level reads the views');
is($coord->safe_psql('postgres', "SELECT count(*) > 0 FROM tiermeter.usage_history WHERE org_id = '$e'",
		extra_params => [ '-U', 'early_reader' ]), 't', 'so does a reader given its level before distribute()');
q1("SELECT tiermeter.revoke_access('early_reader', 'reader')");
($rc, $out, $err) = $coord->psql('postgres', "SELECT count(*) FROM tiermeter.usage_history WHERE org_id = '$e'",
	extra_params => [ '-U', 'early_reader' ]);
like($err, qr/permission denied/, 'revoke_access takes it back');
($rc, $out, $err) = $coord->psql('postgres', "SELECT count(*) FROM tiermeter.usage_log",
	extra_params => [ '-U', 'early_reader' ]);
like($err, qr/permission denied/, 'the tables too');

# the placement map is read as the schema's owner inside record_usage: the
# caller's search_path must not choose its operators
my $g = $on_w1[5];
# (on the worker alone: Citus would propagate the schema from the coordinator)
$w1->safe_psql('postgres', q{
	SET citus.enable_ddl_propagation = off;
	CREATE SCHEMA evil AUTHORIZATION app_role;
	CREATE TABLE evil.seen (who text);
	GRANT INSERT ON evil.seen TO PUBLIC;
});
$w1->safe_psql('postgres', q{
	SET citus.enable_ddl_propagation = off;
	CREATE FUNCTION evil.eq(int4, int4) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO evil.seen VALUES (current_user);
		RETURN $1 OPERATOR(pg_catalog.=) $2;
	END $$;
	CREATE OPERATOR evil.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.eq);
}, extra_params => [ '-U', 'app_role' ]);
$w1->safe_psql('postgres', "SET search_path = evil, pg_catalog; SELECT tiermeter.record_usage('$g', 1)",
	extra_params => [ '-U', 'app_role' ]);
is($w1->safe_psql('postgres', 'SELECT count(*) FROM evil.seen'), '0',
	"a caller's operator is never run as the extension's owner");

# sessions, delegated by org
my $d = $on_w2[1];
like(q1("SELECT tiermeter.begin_session('$d', 'conv-1')"), qr/^\(\Q$d\E,conv-1,t,,t,/, 'a session begins');
like(q1("SELECT tiermeter.begin_session('$d', 'conv-2')"), qr/^\(\Q$d\E,conv-2,f,too_many_active_sessions,f,/,
	'a second one is refused on the free tier');
like(q1("SELECT tiermeter.touch_session('$d', 'conv-1')"), qr/^\(\Q$d\E,conv-1,t,,t,/, 'a touch');
like(q1("SELECT tiermeter.check_session_limits('$d', 'conv-1')"), qr/^\(\Q$d\E,conv-1,t,,t,/, 'check_session_limits');
like(q1("SELECT tiermeter.end_session('$d', 'conv-1')"), qr/^\(\Q$d\E,conv-1,t,,f,/, 'end_session frees the slot');
like(q1("SELECT tiermeter.begin_session('$d', 'conv-2')"), qr/^\(\Q$d\E,conv-2,t,,t,/, 'so the next one begins');
like(q1("SELECT tiermeter.begin_session('$d', 'conv-3')"), qr/too_many_active_sessions/, 'and the limit holds again');
q1("SELECT tiermeter.end_session('$d', 'conv-2')");

# the views, on the coordinator, across both workers
is(q1("SELECT count(DISTINCT org_id) FROM tiermeter.org_usage"), q1('SELECT count(*) FROM tiermeter.orgs'),
	'org_usage: every org');
is(q1("SELECT used || ' ' || quota FROM tiermeter.org_usage WHERE org_id = '$a' AND feature = 'conversation_seconds'"),
	st("check_org_limits('$a')")->{used} . ' ' . st("check_org_limits('$a')")->{quota},
	'org_usage answers as check_org_limits');
is(q1("SELECT used || ' ' || quota FROM tiermeter.org_usage WHERE org_id = '$c' AND feature = 'reports'"), '500 500',
	'and for the org on the other worker');
is(q1("SELECT orgs FROM tiermeter.tier_summary WHERE tier = 'professional' AND feature = 'conversation_seconds'"), '1',
	'tier_summary');
is(q1("SELECT string_agg(org_id || ' ' || feature || ' ' || percent_used, ',') FROM tiermeter.orgs_near_limit"),
	"$c reports 100.00", 'orgs_near_limit');
is(q1("SELECT tier || ' ' || used || ' ' || quota FROM tiermeter.usage_history WHERE org_id = '$b' AND feature = 'conversation_seconds'"),
	'professional 305 72000', 'usage_history');

# rollover on the coordinator: by hand, then from pg_cron
q1("UPDATE tiermeter.orgs SET period_start = timezone('UTC', timezone('UTC', period_start) - interval '1 month'), period_end = period_start WHERE org_id IN ('$a', '$b')");
is(q1("SELECT tiermeter.rollover(now())"), '2', 'rollover moves the orgs whose stored period ended, on both workers');
is(q1("SELECT tiermeter.rollover(now())"), '0', 'a repeat moves none');
is(st("check_org_limits('$a')")->{used}, '140', "the usage of the org's period is kept");
q1("UPDATE tiermeter.orgs SET period_start = timezone('UTC', timezone('UTC', period_start) - interval '1 month'), period_end = period_start WHERE org_id = '$c'");
q1('CREATE EXTENSION pg_cron');
my $job = q1("SELECT tiermeter.schedule_rollover('* * * * *')");
ok( $coord->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM cron.job_run_details WHERE jobid = $job AND status IN ('succeeded', 'failed')", 't'),
	'the pg_cron job ran');
is(q1("SELECT status || ' ' || return_message FROM cron.job_run_details WHERE jobid = $job ORDER BY runid LIMIT 1"),
	'succeeded SELECT 1', 'rollover from pg_cron on the coordinator succeeded');
is(q1("SELECT period_end > now() FROM tiermeter.orgs WHERE org_id = '$c'"), 't', 'and moved the org');

# a shard moves to the other worker and back: the worker it left, then
# came back to, never answers from what it cached before
my $f = $on_w1[3];
st("record_usage('$f', 100)");
is(st("check_org_limits('$f')")->{used}, '100', 'an org cached on the first worker');
my $sid = q1("SELECT get_shard_id_for_distribution_column('tiermeter.orgs', '$f')");
my $move = sub {
	my ($from, $to) = @_;
	q1(sprintf("SELECT citus_move_shard_placement(%d, '%s', %d, '%s', %d, shard_transfer_mode => 'block_writes')",
		$sid, $from->host, $from->port, $to->host, $to->port));
};
$move->($w1, $w2);
st("record_usage('$f', 10)");
is(st("check_org_limits('$f')")->{used}, '110', 'its shard moved to the second worker: the usage, and more');
$move->($w2, $w1);
is(st("check_org_limits('$f')")->{used}, '110', 'moved back: the first worker does not answer from its old entry');
st("record_usage('$f', 1)");
is(st("check_org_limits('$f')")->{used} . ' ' . q1("SELECT sum(amount) FROM tiermeter.usage_log WHERE org_id = '$f'"),
	'111 111', 'and counts what comes next, as the ledger does');

is($w1->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts')
	  . $w2->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'),
	'00', 'no transaction is left prepared');

$_->stop for @nodes;
done_testing();
