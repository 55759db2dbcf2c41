# A Citus cluster for the TAP tests: a coordinator and two workers, each
# with shared_preload_libraries = 'citus,tiermeter', the workers added to
# the coordinator.  Skips the calling test, saying why, when Citus is not
# installed (docs/scaling.md says how to build it).
package TmCitus;

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use Test::More;

sub skip_without_citus
{
	my $sharedir = `pg_config --sharedir`;
	chomp $sharedir;
	my $pkglibdir = `pg_config --pkglibdir`;
	chomp $pkglibdir;
	if (!-f "$sharedir/extension/citus.control" || !-f "$pkglibdir/citus.so")
	{
		plan skip_all =>
		  "Citus is not installed ($sharedir/extension/citus.control or $pkglibdir/citus.so is missing); "
		  . 'build it as docs/scaling.md says to run this test';
	}
}

# Returns the coordinator and the two workers, started, with citus created
# in database postgres; $conf is appended to each one's postgresql.conf.
sub start_cluster
{
	my ($conf) = @_;
	my @nodes;

	skip_without_citus();
	for my $name ('coordinator', 'worker1', 'worker2')
	{
		my $node = PostgreSQL::Test::Cluster->new($name);
		$node->init;
		# citus.local_hostname: Citus connects to its own node too (a shard
		# move does), through the socket directory like everyone else here
		$node->append_conf('postgresql.conf',
			"shared_preload_libraries = 'citus,tiermeter'\n"
			  . "citus.local_hostname = '" . $node->host . "'\n" . $conf);
		$node->start;
		$node->safe_psql('postgres', 'CREATE EXTENSION citus');
		push @nodes, $node;
	}
	my ($coord, $w1, $w2) = @nodes;
	$coord->safe_psql('postgres',
		sprintf("SELECT citus_set_coordinator_host('%s', %d)", $coord->host, $coord->port));
	$coord->safe_psql('postgres', sprintf("SELECT citus_add_node('%s', %d)", $_->host, $_->port))
	  for ($w1, $w2);
	return @nodes;
}

1;
