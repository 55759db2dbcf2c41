# Sourced by bench/run.sh and bench/citus.sh: pgbench scripts and runs, TPS
# and p99 of each, printed side by side with a reference.  The caller sets
# work (a directory), SECS, JOBS and PGBENCH_TARGET (pgbench's connection
# options and database).
declare -A TPS P99

script() {	# name, then the lines of a pgbench script
	local name=$1
	shift
	printf '%s\n' "$@" > "$work/$name.sql"
}

run() {	# name clients
	local name=$1 clients=$2 out
	rm -f "$work"/log.*
	out=$(pgbench -n -M prepared -T "$SECS" -c "$clients" -j "$JOBS" -f "$work/$name.sql" \
		-l --log-prefix="$work/log" "${PGBENCH_TARGET[@]}" 2>&1) || { echo "$out" >&2; exit 1; }
	TPS[$name]=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
	P99[$name]=$(cat "$work"/log.* | awk '{print $3}' | sort -n |
		awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.3f", a[i]/1000}')
	printf '  ran %-14s %3d clients: %10.0f tps\n' "$name" "$clients" "${TPS[$name]}" >&2
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
line() {	# label name reference goal
	printf '%-46s %9.0f %7s %9.0f %7s %6s   %s\n' "$1" "${TPS[$2]}" "${P99[$2]}" "${TPS[$3]}" "${P99[$3]}" "$(ratio "${TPS[$2]}" "${TPS[$3]}")" "$4"
}
header() { printf '%-46s %9s %7s %9s %7s %6s   %s\n' "${1:-scenario}" tps 'p99 ms' 'ref tps' 'ref p99' ratio goal; }
