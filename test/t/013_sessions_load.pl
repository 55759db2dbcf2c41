# Sessions under load: 16 clients begin, touch and end conversations on 8
# orgs (basic tier: 3 active sessions each) for 20 s, with random gaps.  On
# orgs 1-4 the gaps are around tiermeter.idle_timeout (1 s), so sessions go
# idle, free their slot and are re-admitted (the PL/pgSQL touch); orgs 5-8
# begin their sessions with a 30 s timeout, so their touches take the C way
# (an active session far from its timeout), racing ends and begins.  A
# sampler counts every org's active sessions meanwhile: never more than the
# tier allows.  Afterwards every org's conversation usage equals the sum of
# its sessions' durations.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $seconds = 20;

my $node = PostgreSQL::Test::Cluster->new('sessions');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter'");
$node->append_conf('postgresql.conf', "tiermeter.idle_timeout = 1");
$node->append_conf('postgresql.conf', "max_connections = 40");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tiermeter;
	SELECT tiermeter.set_org_tier('org-' || i, 'basic') FROM generate_series(1, 8) i;
	CREATE TABLE refusals (reason text);
	CREATE TABLE c_touches (org_id text, duration bigint);
	CREATE TABLE samples (org_id text, active int, at timestamptz);
	-- one step of a client: begin, touch or end a conversation; touching
	-- or ending one that is not open is the 22023 the API promises
	CREATE FUNCTION step(org int, conv int, action int) RETURNS void
	LANGUAGE plpgsql AS $$
	DECLARE
		st tiermeter.session_status;
	BEGIN
		IF org > 4 THEN
			PERFORM set_config('tiermeter.idle_timeout', '30', true);
		END IF;
		IF action < 4 THEN
			st := tiermeter.begin_session('org-' || org, 'conv-' || conv);
		ELSIF action < 9 THEN
			st := tiermeter.touch_session('org-' || org, 'conv-' || conv);
			IF org > 4 THEN
				INSERT INTO c_touches VALUES (st.org_id, st.duration_seconds);
			END IF;
		ELSE
			st := tiermeter.end_session('org-' || org, 'conv-' || conv);
		END IF;
		IF NOT st.allowed THEN
			INSERT INTO refusals VALUES (st.reason);
		END IF;
	EXCEPTION WHEN invalid_parameter_value THEN
		NULL;
	END $$;
});

# the sampler: every 20 ms, each org's active sessions as of that moment
my ($sout, $serr) = ('', '');
my $sampler = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', qq{
		DO \$\$
		BEGIN
			FOR i IN 1 .. @{[ $seconds * 40 ]} LOOP
				INSERT INTO samples
				SELECT s.org_id, count(*), clock_timestamp() FROM tiermeter.sessions s
				 WHERE s.ended_at IS NULL AND s.idle_until >= clock_timestamp()
				 GROUP BY s.org_id;
				PERFORM pg_sleep(0.02);
			END LOOP;
		END \$\$;
	} ],
	'>', \$sout, '2>', \$serr);

$node->pgbench(
	"--no-vacuum --client=16 --jobs=2 --time=$seconds",
	0,
	[qr{processed: [1-9]}],
	[qr{^$}],
	'16 clients begin, touch and end sessions without an error',
	{
		'001_sessions' => q{
			\set org random(1, 8)
			\set conv random(1, 12)
			\set action random(0, 9)
			\set gap random(0, 1300)
			SELECT step(:org, :conv, :action);
			\sleep :gap ms
		}
	});
$sampler->finish;
is($serr, '', 'the sampler ran');

my ($samples, $max) = split /\|/, $node->safe_psql('postgres',
	'SELECT count(*), max(active) FROM samples');
cmp_ok($samples, '>', 100, "the sampler saw active sessions ($samples samples)");
cmp_ok($max, '<=', 3, "no org ever had more than 3 active sessions (at most $max)");
note('refusals: ' . $node->safe_psql('postgres',
	"SELECT string_agg(reason || ' ' || n, ', ') FROM (SELECT reason, count(*) n FROM refusals GROUP BY 1) r"));
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM refusals WHERE reason = 'too_many_active_sessions'"),
	'>', 0, 'the load reached the limit');

# every counted second is in the ledger, once
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT o.org_id,
			   (SELECT coalesce(sum(s.duration_seconds), 0) FROM tiermeter.sessions s WHERE s.org_id = o.org_id) AS durations,
			   (SELECT coalesce(sum(u.amount), 0) FROM tiermeter.usage_log u
				 WHERE u.org_id = o.org_id AND u.conversation_id IS NOT NULL) AS ledger,
			   (tiermeter.check_org_limits(o.org_id)).used AS used
		  FROM tiermeter.orgs o) x
	 WHERE durations <> ledger OR ledger <> used}),
	'0', "every org's conversation usage equals its sessions' durations");
cmp_ok($node->safe_psql('postgres', 'SELECT sum(duration_seconds) FROM tiermeter.sessions'),
	'>', 0, 'sessions counted time');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM c_touches WHERE duration > 0'),
	'>', 10, 'touches of sessions with a 30 s timeout counted time (the C way)');

$node->stop;
done_testing();
