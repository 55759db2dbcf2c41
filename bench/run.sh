#!/usr/bin/env bash
# make bench: pgbench scenarios of docs/benchmarks.md, side by side in one run, against a
# throwaway cluster with tiermeter preloaded.  Prints TPS, p99 latency and the
# ratio to each scenario's reference.  Not a test: nothing is asserted.
#
#   BENCH_SECONDS=10 BENCH_ORGS=100000 make bench
#
# The cluster runs with PostgreSQL's defaults for durability (fsync = on,
# synchronous_commit = on), as a backend would.  p99 comes from pgbench's
# per-transaction log (-l), which itself costs a little.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
if [ -z "${PGPORT:-}" ]; then
	common=(-o 'shared_preload_libraries=tiermeter' -o 'max_connections=100'
			-o 'shared_buffers=512MB' -o 'synchronous_commit=on' -o 'fsync=on')
	# the parts' figures that another part compares with (name=tps lines)
	BENCH_RESULTS=$(mktemp /tmp/tiermeter-bench-results.XXXXXX)
	export BENCH_RESULTS
	trap 'rm -f "$BENCH_RESULTS"' EXIT
	virtualenv "${common[@]}" -o 'tiermeter.cache_size=250000' "$0" "$@"
	# more orgs than the cache holds: a second cluster, its cache a third of them
	BENCH_PART=misses virtualenv "${common[@]}" \
		-o "tiermeter.cache_size=$(( ${BENCH_ORGS:-100000} / 3 ))" "$0" "$@"
	# the table path: a third cluster, the library not preloaded
	BENCH_PART=tablepath virtualenv "${common[@]:2}" "$0" "$@"
	# the analysts' views on 100k orgs and 10M ledger rows: a fourth cluster
	BENCH_PART=views virtualenv "${common[@]}" "$0" "$@"
	exit
fi

SECS=${BENCH_SECONDS:-10}
ORGS=${BENCH_ORGS:-100000}
JOBS=2
DB=bench
work=$(mktemp -d /tmp/tiermeter-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

createdb $DB
psql -X -q -v ON_ERROR_STOP=1 -d $DB <<SQL
CREATE EXTENSION tiermeter;
\i bench/naive.sql
-- the floor of the check: check_org_limits' signature, no work (bench/Makefile)
CREATE FUNCTION naive.noop_check(org_id text, feature text DEFAULT 'conversation_seconds')
RETURNS tiermeter.limit_status AS '\$libdir/tiermeter_bench_noop', 'tiermeter_bench_noop' LANGUAGE C;
-- a fixed limit_status value, no lookup: forming and sending the result
CREATE FUNCTION naive.constant_check(org_id text, feature text DEFAULT 'conversation_seconds')
RETURNS tiermeter.limit_status AS '\$libdir/tiermeter_bench_noop', 'tiermeter_bench_constant' LANGUAGE C;
-- $ORGS orgs with some usage, in tiermeter and in the naive schema
SELECT count(tiermeter.record_usage('org-' || i, 10)) FROM generate_series(1, $ORGS) i;
SELECT count(naive.record_usage('org-' || i, 10)) FROM generate_series(1, $ORGS) i;
SELECT tiermeter.set_org_quota('hot', 'conversation_seconds', 1000000000000);
SELECT naive.record_usage('hot', 1);
UPDATE naive.orgs SET tier = 'enterprise' WHERE org_id = 'hot';
VACUUM ANALYZE;
-- warm: one statement recorded for every org, so its commit invalidated them
-- (a transaction for more keys than an eighth of the cache): read each once
SELECT count(tiermeter.check_org_limits('org-' || i)) FROM generate_series(1, $ORGS) i;
SQL

PGBENCH_TARGET=($DB)
. bench/pgbench.sh
script select1        'SELECT 1;'
script check          '\set o random(1, '"$ORGS"')' "SELECT tiermeter.check_org_limits('org-' || :o);"
script check_star     '\set o random(1, '"$ORGS"')' "SELECT * FROM tiermeter.check_org_limits('org-' || :o);"
script naive_check    '\set o random(1, '"$ORGS"')' "SELECT naive.check_org_limits('org-' || :o);"
script noop_check     '\set o random(1, '"$ORGS"')' "SELECT naive.noop_check('org-' || :o);"
script const_check    '\set o random(1, '"$ORGS"')' "SELECT naive.constant_check('org-' || :o);"
script insert         '\set o random(1, '"$ORGS"')' "INSERT INTO naive.plain_insert (org_id, amount) VALUES ('org-' || :o, 1);"
script ledger         '\set o random(1, '"$ORGS"')' "INSERT INTO naive.ledger (org_id, feature, amount, occurred_at) VALUES ('org-' || :o, 'conversation_seconds', 1, now());"
script ledger_hot     "INSERT INTO naive.ledger (org_id, feature, amount, occurred_at) VALUES ('hot', 'conversation_seconds', 1, now());"
script record         '\set o random(1, '"$ORGS"')' "SELECT tiermeter.record_usage('org-' || :o, 1);"
script naive_record   '\set o random(1, '"$ORGS"')' "SELECT naive.record_usage('org-' || :o, 1);"
script insert_hot     "INSERT INTO naive.plain_insert (org_id, amount) VALUES ('hot', 1);"
script record_hot     "SELECT tiermeter.record_usage('hot', 1);"
script naive_rec_hot  "SELECT naive.record_usage('hot', 1);"
script consume_hot    "SELECT tiermeter.consume('hot', 1);"
script naive_con_hot  "SELECT naive.consume('hot', 1);"

# many calls in one transaction, each in its own exception block or not:
# calls per second at 10k and at 100k calls should be about the same
long_transactions() {
psql -X -q -d $DB <<'SQL' > "$work/long.out"
CREATE FUNCTION pg_temp.calls(n int, sub boolean) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	FOR i IN 1..n LOOP
		IF sub THEN
			BEGIN
				PERFORM tiermeter.record_usage('long-' || n || sub, 1);
			EXCEPTION WHEN others THEN RAISE;
			END;
		ELSE
			PERFORM tiermeter.record_usage('long-' || n || sub, 1);
		END IF;
	END LOOP;
	RETURN round(n / extract(epoch FROM clock_timestamp() - t0));
END $$;
\pset tuples_only on
SELECT 'one transaction of 10k calls, no savepoints:    ' || pg_temp.calls(10000, false) || ' calls/s';
SELECT 'one transaction of 100k calls, no savepoints:   ' || pg_temp.calls(100000, false) || ' calls/s';
SELECT 'one transaction of 10k calls, a savepoint each:  ' || pg_temp.calls(10000, true) || ' calls/s';
SELECT 'one transaction of 100k calls, a savepoint each: ' || pg_temp.calls(100000, true) || ' calls/s';
SQL
grep 'one transaction' "$work/long.out"
}

if [ "${BENCH_PART:-}" = views ]; then
	ROWS=${BENCH_VIEW_ROWS:-10000000}
	echo "tiermeter bench: the views, $ORGS orgs, $ROWS ledger rows over 12 months" >&2
	# the setup above made the orgs; their ledger gets 12 months of rows
	psql -X -q -v ON_ERROR_STOP=1 -d $DB <<SQL >/dev/null
UPDATE tiermeter.orgs SET tier_id = (ARRAY['free', 'basic', 'professional', 'enterprise'])[1 + abs(hashtext(org_id)) % 4];
INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
SELECT 'org-' || (1 + i % $ORGS), 'conversation_seconds', 1 + i % 30,
       now() - (i % 360) * interval '1 day' - (i % 86400) * interval '1 second'
  FROM generate_series(1, $ROWS) i;
VACUUM ANALYZE;
SQL
	t0=$(date +%s%N)
	# every column computed (a bare count(*) lets the planner skip them)
	n=$(psql -X -q -A -t -d $DB -c "SELECT count(*) FROM (SELECT * FROM tiermeter.org_usage OFFSET 0) v
		WHERE v.used IS NOT NULL AND v.percent_used IS NOT NULL AND (v.quota IS NULL OR v.remaining IS NOT NULL)")
	t1=$(date +%s%N)
	printf '\nSELECT * FROM org_usage (%s rows): %d ms\n' "$n" $(( (t1 - t0) / 1000000 ))
	plan=$(psql -X -q -A -t -d $DB -c "EXPLAIN SELECT * FROM tiermeter.usage_history WHERE org_id = 'org-42'")
	if grep -q 'Seq Scan on usage_log' <<<"$plan"; then seq=yes; else seq=no; fi
	echo "usage_history WHERE org_id = \$1: sequential scan of the ledger in its plan: $seq"
	script history '\set o random(1, '"$ORGS"')' "SELECT count(*) FROM tiermeter.usage_history WHERE org_id = 'org-' || :o;"
	run history 8
	printf 'usage_history WHERE org_id = $1, 8 clients: %.0f tps, p99 %s ms\n' "${TPS[history]}" "${P99[history]}"
	exit 0
fi

if [ "${BENCH_PART:-}" = misses ]; then
	echo "tiermeter bench: $ORGS orgs, 3 x tiermeter.cache_size, uniform random, ${SECS}s per run" >&2
	run check 8
	run naive_check 8
	run record 8
	run naive_record 8
	echo
	header
	line 'check, keys = 3 x cache_size (vs naive check)' check       naive_check  '>= 1.0'
	line 'record, keys = 3 x cache_size (vs naive)'      record      naive_record '>= 1.0'
	printf 'check_misses=%s\nrecord_misses=%s\n' "${TPS[check]}" "${TPS[record]}" >> "${BENCH_RESULTS:-/dev/null}"
	exit 0
fi

if [ "${BENCH_PART:-}" = tablepath ]; then
	echo "tiermeter bench: the table path (library not preloaded), $ORGS orgs, ${SECS}s per run" >&2
	run check 8
	run record 8
	echo
	if [ -s "${BENCH_RESULTS:-}" ]; then
		TPS[check_misses]=$(sed -n 's/^check_misses=//p' "$BENCH_RESULTS")
		TPS[record_misses]=$(sed -n 's/^record_misses=//p' "$BENCH_RESULTS")
		P99[check_misses]=-
		P99[record_misses]=-
		header
		line 'check, keys = 3 x cache_size (vs table path)'  check_misses  check  '>= 1.0'
		line 'record, keys = 3 x cache_size (vs table path)' record_misses record '>= 1.0'
	fi
	printf 'table path, 8 clients: check_org_limits %.0f tps, record_usage %.0f tps\n' "${TPS[check]}" "${TPS[record]}"
	echo "the library not preloaded:"
	long_transactions
	exit 0
fi

echo "tiermeter bench: $ORGS orgs, ${SECS}s per run, pgbench -M prepared -j $JOBS" >&2
run select1 8
run noop_check 8
run const_check 8
run check 8
run check_star 8
run naive_check 8
run insert 8
run ledger 8
run record 8
run naive_record 8
run insert_hot 32
run ledger_hot 32
run record_hot 32
run naive_rec_hot 32
run consume_hot 32
run naive_con_hot 32

echo
header
line 'check_org_limits, 8 clients (vs no-op C fn)'  check        noop_check '>= 0.95, p99 < 0.5 ms'
line '  no-op C function (vs SELECT 1)'               noop_check   select1    '(the floor)'
line '  check_org_limits (vs a constant result)'     check        const_check '(reported only)'
line '  constant result, no lookup (vs no-op)'       const_check  noop_check '(reported only)'
line '  check_org_limits (vs SELECT 1)'               check        select1    '(reported only)'
line '  SELECT * FROM check_org_limits (vs SELECT 1)' check_star select1    '(reported only)'
line '  naive PL/pgSQL check (vs SELECT 1)'          naive_check  select1    '(reference)'
line 'record_usage, 8 clients (vs indexed INSERT)'  record       ledger     '>= 0.95'
line '  indexed-ledger INSERT (vs plain INSERT)'     ledger       insert     '(the floor)'
line '  naive record (vs indexed INSERT)'            naive_record ledger     '(reference)'
line 'record_usage, ONE org, 32 clients (vs indexed)' record_hot ledger_hot '>= 0.95'
line '  naive record, ONE org (vs indexed INSERT)'   naive_rec_hot ledger_hot '(naive ~0.08)'
line 'consume, ONE org, 32 clients (vs indexed)'    consume_hot  ledger_hot '>= 0.90'
line '  naive consume, ONE org (vs indexed INSERT)'  naive_con_hot ledger_hot '(reference)'
# sessions: touch_session on 10k active sessions across 1k orgs (8 clients),
# and begin_session + end_session pairs on ONE org (32 clients, the
# professional tier's 10 slots), against the plain one-row INSERT
psql -X -q -v ON_ERROR_STOP=1 -d $DB <<'SQL' >/dev/null
SET tiermeter.idle_timeout = 86400;
SELECT count(tiermeter.set_org_tier('sess-' || i, 'enterprise')) FROM generate_series(1, 1000) i;
SELECT count(tiermeter.begin_session('sess-' || i, 'c-' || j))
  FROM generate_series(1, 1000) i, generate_series(1, 10) j;
SELECT tiermeter.set_org_tier('sess-hot', 'professional');
VACUUM ANALYZE;
SQL
script touch          '\set o random(1, 1000)' '\set c random(1, 10)' "SELECT tiermeter.touch_session('sess-' || :o, 'c-' || :c);"
script begin_end      "SELECT allowed::int AS admitted FROM tiermeter.begin_session('sess-hot', 'c-' || :client_id) \\gset" \
	'\if :admitted' "SELECT tiermeter.end_session('sess-hot', 'c-' || :client_id);" '\endif'
run touch 8
run begin_end 32
echo
line 'touch_session, 10k sessions, 8 clients (vs plain INSERT)' touch insert '>= 0.5'
line 'begin+end pairs, ONE org, 32 clients (vs plain INSERT)' begin_end insert_hot '(reported)'
psql -X -q -A -t -d $DB -c "SELECT 'after the pairs: ' || count(*) FILTER (WHERE ended_at IS NULL AND idle_until >= clock_timestamp())
	|| ' active sessions of sess-hot (cap 10), ' || count(*) || ' conversations'
	FROM tiermeter.sessions WHERE org_id = 'sess-hot'"

# the biggest orgs: an org with 2M ledger rows this period, checked by 8
# clients, alone and with a quota change every second beside them
BIG_ROWS=${BENCH_BIG_ROWS:-2000000}
psql -X -q -d $DB -c "SELECT tiermeter.record_usage('big', 1)" -c "INSERT INTO tiermeter.usage_log (org_id, feature, amount, occurred_at)
	SELECT 'big', 'conversation_seconds', 1, now() FROM generate_series(1, $BIG_ROWS)" \
	-c "SELECT tiermeter.set_org_quota('big', 'conversation_seconds', NULL)" -c "VACUUM ANALYZE tiermeter.usage_log" >/dev/null
script check_big "SELECT tiermeter.check_org_limits('big');"
run check_big 8
( for i in $(seq 1 "$SECS"); do
	psql -X -q -d $DB -c "SELECT tiermeter.set_org_quota('big', 'reports', $i)" >/dev/null
	sleep 1
  done ) &
changer=$!
TPS[check_big_quiet]=${TPS[check_big]}
P99[check_big_quiet]=${P99[check_big]}
run check_big 8
wait $changer
echo
line 'check, org with 2M rows, a quota change/s (vs none)' check_big check_big_quiet '>= 0.9, p99 < 5 ms'

echo
long_transactions

# one transaction recording usage for 300k orgs (three times the cache at its
# default size) while 8 clients check: its time with its COMMIT, and the
# checks' TPS while it ran (from pgbench's per-transaction log) against the
# check run above.  Its references: the same checks beside the naive
# record_usage over 300k new orgs in one transaction, and beside a statement
# that does nothing but keep one core busy as long (a PL/pgSQL loop, no
# tiermeter): on this machine's two cores, what any busy statement leaves
# the checks.
BIG_TX=${BENCH_BIG_TX_ORGS:-300000}
# window_tps T0 T1: the checks logged by pgbench between T0 and T1 (ns), per second
window_tps() {
	cat "$work"/log.* | awk -v a="$1" -v b="$2" \
		'{t = $5 * 1000000000 + $6 * 1000; if (t >= a && t < b) n++} END {printf "%.0f", n / ((b - a) / 1e9)}'
}
# beside_checks SECONDS SQL: runs SQL 3 s into SECONDS of checks; sets t0, t1
beside_checks() {
	rm -f "$work"/log.*
	pgbench -n -M prepared -T "$1" -c 8 -j $JOBS -f "$work/check.sql" -l --log-prefix="$work/log" $DB \
		> "$work/beside.out" 2>&1 &
	local bench_pid=$!
	sleep 3
	t0=$(date +%s%N)
	psql -X -q -d $DB -c "$2" >/dev/null
	t1=$(date +%s%N)
	wait $bench_pid
}
beside_checks 40 "SELECT count(tiermeter.record_usage('tx-' || i, 1)) FROM generate_series(1, $BIG_TX) i"
TPS[during_tx]=$(window_tps "$t0" "$t1")
tx_ms=$(( (t1 - t0) / 1000000 ))
beside_checks 40 "SELECT count(naive.record_usage('tx-' || i, 1)) FROM generate_series(1, $BIG_TX) i"
TPS[during_naive_tx]=$(window_tps "$t0" "$t1")
naive_tx_ms=$(( (t1 - t0) / 1000000 ))
beside_checks $(( tx_ms / 1000 + 8 )) "DO \$\$ DECLARE stop timestamptz := clock_timestamp() + interval '$tx_ms ms'; n bigint := 0;
	BEGIN WHILE clock_timestamp() < stop LOOP n := n + 1; END LOOP; END \$\$"
TPS[during_cpu]=$(window_tps "$t0" "$t1")
echo
printf 'one transaction recording for %d orgs, COMMIT included: %d ms (goal: seconds)\n' "$BIG_TX" "$tx_ms"
printf 'check_org_limits, 8 clients, while it ran: %.0f tps, %s of the run above (goal >= 0.8)\n' \
	"${TPS[during_tx]}" "$(ratio "${TPS[during_tx]}" "${TPS[check]}")"
printf '  while the naive record did the same (%d ms): %.0f tps, %s of the run above\n' \
	"$naive_tx_ms" "${TPS[during_naive_tx]}" "$(ratio "${TPS[during_naive_tx]}" "${TPS[check]}")"
printf '  while a loop of no tiermeter kept one core busy as long: %.0f tps, %s of the run above\n' \
	"${TPS[during_cpu]}" "$(ratio "${TPS[during_cpu]}" "${TPS[check]}")"
printf '  beside the transaction, against beside the naive one: %s; against beside the loop: %s\n' \
	"$(ratio "${TPS[during_tx]}" "${TPS[during_naive_tx]}")" "$(ratio "${TPS[during_tx]}" "${TPS[during_cpu]}")"

# rollover of 1M orgs while 8 clients check: its time, and the checks' TPS
# meanwhile against the check run above
ROLL_ORGS=${BENCH_ROLLOVER_ORGS:-1000000}
psql -X -q -d $DB -c "INSERT INTO tiermeter.orgs (org_id, tier_id, billing_anchor, period_start, period_end)
	SELECT 'roll-' || i, 'free', date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
	       date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
	       (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
	  FROM generate_series(1, $ROLL_ORGS) i" -c "VACUUM ANALYZE tiermeter.orgs"
rm -f "$work"/log.*
pgbench -n -M prepared -T 12 -c 8 -j $JOBS -f "$work/check.sql" $DB > "$work/during.out" 2>&1 &
bench_pid=$!
sleep 3
roll_ms=$(psql -X -q -A -t -d $DB -c "SELECT extract(epoch FROM clock_timestamp() - now()) * 1000
	FROM (SELECT tiermeter.rollover(now() + interval '40 days')) r")
wait $bench_pid
TPS[during]=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/during.out" | tail -1)

echo
printf 'rollover of %d orgs (the stored period of every one ended): %.0f ms (goal < 10000)\n' "$ROLL_ORGS" "$roll_ms"
printf 'check_org_limits, 8 clients, during the rollover: %.0f tps, %s of the run above (goal >= 0.8)\n' \
	"${TPS[during]}" "$(ratio "${TPS[during]}" "${TPS[check]}")"
echo
psql -X -q -A -t -d $DB -c "SELECT 'consume on the hot org: used ' || used || ', quota ' || quota || ', within quota: ' || (used <= quota) FROM tiermeter.check_org_limits('hot')"

# the forms a backend can call check_org_limits in through its driver, side
# by side with SELECT 1 on the same pool: psycopg 3 (Debian's packages) and
# node-postgres (the npm registry; skipped, and said so, when unreachable)
echo
echo "check_org_limits through the drivers (8 requests in flight, ${SECS}s each; docs/getting-started.md):"
PGDATABASE=$DB /usr/bin/python3 bench/python_forms.py "$ORGS" "$SECS" | sed 's/^/  psycopg 3      /'
if (cd "$work" && npm init -y >/dev/null 2>&1 && timeout 120 npm install --silent pg@8 >/dev/null 2>&1); then
	PGDATABASE=$DB NODE_PATH="$work/node_modules" node bench/node_forms.js "$ORGS" "$SECS" | sed 's/^/  node-postgres  /'
else
	echo "  node-postgres  skipped: npm could not install pg"
fi
