#!/usr/bin/env bash
# make bench, last part: tiermeter distributed on a Citus cluster of this
# machine (a coordinator and BENCH_CITUS_WORKERS workers, each with
# shared_preload_libraries = 'citus,tiermeter'), calls through the
# coordinator.  Prints TPS, p99 and the ratio to each scenario's reference:
# a primary-key lookup of the org's row through the coordinator, which Citus
# routes to the org's worker (one round trip there, the floor of any
# delegated call).  Not a test: nothing is asserted.  Skipped, saying why,
# when Citus is not installed (docs/scaling.md says how to build it).
#
#   BENCH_SECONDS=10 BENCH_CITUS_ORGS=10000 BENCH_CITUS_WORKERS=2 bench/citus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

if [ ! -f "$(pg_config --sharedir)/extension/citus.control" ] ||
	[ ! -f "$(pg_config --pkglibdir)/citus.so" ]; then
	echo "tiermeter bench on Citus: skipped, Citus is not installed (build it as docs/scaling.md says)"
	exit 0
fi

SECS=${BENCH_SECONDS:-10}
ORGS=${BENCH_CITUS_ORGS:-10000}
WORKERS=${BENCH_CITUS_WORKERS:-2}
BASE=${BENCH_CITUS_PORT:-5640}
JOBS=2
dir=$(mktemp -d /tmp/tiermeter-citus-bench.XXXXXX)
chmod 755 "$dir"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
	chown postgres "$dir"
	as_pg=(runuser -u postgres --)
fi
nodes=$(seq 0 "$WORKERS")
stop() {
	for n in $nodes; do
		"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$dir/n$n" stop -m immediate >/dev/null 2>&1 || true
	done
	rm -rf "$dir"
}
trap stop EXIT

for n in $nodes; do
	"${as_pg[@]}" "$PGBIN/initdb" -D "$dir/n$n" -A trust -U postgres >/dev/null
	"${as_pg[@]}" tee -a "$dir/n$n/postgresql.conf" >/dev/null <<CONF
shared_preload_libraries = 'citus,tiermeter'
port = $((BASE + n))
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 200
max_prepared_transactions = 100
shared_buffers = 256MB
fsync = on
synchronous_commit = on
CONF
	"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$dir/n$n" -l "$dir/n$n.log" -w start >/dev/null
	psql -X -q -h "$dir" -p $((BASE + n)) -U postgres -d postgres -c 'CREATE EXTENSION citus'
done
coord=(-h "$dir" -p "$BASE" -U postgres -d postgres)
psql -X -q -v ON_ERROR_STOP=1 "${coord[@]}" <<SQL >/dev/null
SELECT citus_set_coordinator_host('$dir', $BASE);
$(for n in $(seq 1 "$WORKERS"); do echo "SELECT citus_add_node('$dir', $((BASE + n)));"; done)
CREATE EXTENSION tiermeter;
SELECT * FROM tiermeter.distribute();
SQL
# the orgs, created through the coordinator (each call delegated)
for i in $(seq 1 "$ORGS"); do echo "SELECT tiermeter.record_usage('org-$i', 1);"; done |
	psql -X -q -o /dev/null -v ON_ERROR_STOP=1 "${coord[@]}"
echo "tiermeter bench on Citus: $ORGS orgs, 1 coordinator + $WORKERS workers on this machine, ${SECS}s per run, pgbench -M prepared -j $JOBS, through the coordinator" >&2

work="$dir/scripts"
mkdir -p "$work"
PGBENCH_TARGET=(-h "$dir" -p "$BASE" -U postgres postgres)
. bench/pgbench.sh
script lookup '\set o random(1, '"$ORGS"')' "SELECT org_id FROM tiermeter.orgs WHERE org_id = 'org-' || :o;"
script check  '\set o random(1, '"$ORGS"')' "SELECT tiermeter.check_org_limits('org-' || :o);"
script ledger '\set o random(1, '"$ORGS"')' "INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at) VALUES ('org-' || :o, 'reports', 0, now());"
script record '\set o random(1, '"$ORGS"')' "SELECT tiermeter.record_usage('org-' || :o, 1);"
script consume_hot "SELECT tiermeter.consume('org-1', 1, 'conversation_seconds');"
script ledger_hot  "INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at) VALUES ('org-1', 'reports', 0, now());"
psql -X -q "${coord[@]}" -c "UPDATE tiermeter.tier_quotas SET quota = NULL WHERE tier_id = 'free' AND feature = 'conversation_seconds'"

# the workers' cache statistics, summed
hits() {
	local sum=0 n h
	for n in $(seq 1 "$WORKERS"); do
		h=$(psql -X -A -t -h "$dir" -p $((BASE + n)) -U postgres -d postgres -c 'SELECT hits FROM tiermeter.cache_stats()')
		sum=$((sum + h))
	done
	echo $sum
}

run lookup 8
h0=$(hits)
run check 8
h1=$(hits)
run ledger 8
run record 8
run ledger_hot 32
run consume_hot 32

echo
header 'scenario (through the coordinator)'
line 'check_org_limits, 8 clients (vs routed lookup)' check lookup '(reported)'
line 'record_usage, 8 clients (vs routed INSERT)'      record ledger '(reported)'
line 'consume, ONE org, 32 clients (vs routed INSERT)' consume_hot ledger_hot '(reported)'
printf '%-46s %9s\n' "workers' cache hits during the check run" "$((h1 - h0))"
printf '%-46s %9s\n' "coordinator's cache entries" \
	"$(psql -X -A -t "${coord[@]}" -c 'SELECT entries FROM tiermeter.cache_stats()')"
