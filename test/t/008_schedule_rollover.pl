# schedule_rollover registers the pg_cron job tiermeter-rollover, once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tiermeter,pg_cron'");
$node->append_conf('postgresql.conf', "cron.database_name = 'postgres'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');
$node->safe_psql('postgres', 'CREATE EXTENSION tiermeter');

my $job = $node->safe_psql('postgres', 'SELECT tiermeter.schedule_rollover()');
like($job, qr/^\d+$/, "a job id ($job)");
is($node->safe_psql('postgres',
	"SELECT concat_ws('|', jobname, schedule, command) FROM cron.job WHERE jobid = $job"),
	'tiermeter-rollover|*/5 * * * *|SELECT tiermeter.rollover()', 'the job runs rollover every 5 minutes');

# calling it again changes the schedule of the same job, not a second job
$node->safe_psql('postgres', "SELECT tiermeter.schedule_rollover('0 * * * *')");
is($node->safe_psql('postgres',
	"SELECT count(*) || '|' || max(schedule) FROM cron.job WHERE jobname = 'tiermeter-rollover'"),
	'1|0 * * * *', 'one job, with the new schedule');

# the job's command works where it runs
is($node->safe_psql('postgres', 'SELECT tiermeter.rollover()'), '0', 'rollover runs');

$node->stop;
done_testing();
