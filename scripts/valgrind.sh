#!/usr/bin/env bash
# Runs the pg_regress and isolation suites against a server running under
# valgrind (memcheck) with tiermeter preloaded, and fails if valgrind reports
# any error whose stack passes through tiermeter.  (Debian's postgres has no
# valgrind annotations of its own allocator, so this sees errors at malloc
# and shared memory level; PostgreSQL's own known reports, such as
# uninitialised WAL padding, never involve tiermeter and are not counted.)
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

dir=$(mktemp -d /tmp/tiermeter-valgrind.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres "$dir"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

port=$((20000 + RANDOM % 20000))
as_pg "$PGBIN/initdb" -D "$dir/data" -A trust >/dev/null || exit 1
cat >> "$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'tiermeter'
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 20
max_prepared_transactions = 10
CONF

as_pg valgrind --quiet --trace-children=yes --leak-check=no --error-limit=no \
	--read-var-info=no --log-file="$dir/vg.%p.log" \
	"$PGBIN/postgres" -D "$dir/data" > "$dir/server.log" 2>&1 &
for _ in $(seq 1 120); do
	as_pg "$PGBIN/pg_isready" -h "$dir" -p $port -q && break
	sleep 1
done

PGHOST=$dir PGPORT=$port PGUSER=postgres make -s installcheck
rc=$?
as_pg "$PGBIN/pg_ctl" -D "$dir/data" stop -m fast >/dev/null

# every valgrind error report whose stack mentions tiermeter
bad=$(awk '/^==[0-9]+== [A-Z]/ { if (block ~ /tiermeter/) print block; block = $0; next }
           /^==[0-9]+==/ { block = block "\n" $0 }
           END { if (block ~ /tiermeter/) print block }' "$dir"/vg.*.log)
total=$(cat "$dir"/vg.*.log | grep -cE '^==[0-9]+== [A-Z]')
if [ -n "$bad" ]; then
	echo "valgrind: errors in tiermeter:"
	echo "$bad" | head -100
	rc=1
else
	echo "valgrind: no error through tiermeter ($total reports by PostgreSQL itself, none in tiermeter)"
fi
rm -rf "$dir"
exit $rc
