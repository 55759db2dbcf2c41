#!/usr/bin/env bash
# Runs every test suite against throwaway PostgreSQL 15 clusters and ends with
# a summary.  Exits non-zero if any suite fails.  Called by `make test`, after
# the extension is built and installed.
set -uo pipefail
cd "$(dirname "$0")/.."

PRELOAD='shared_preload_libraries=tiermeter,pg_cron'
pass=0
fail=0
summary=()

suite() {
	local name=$1
	shift
	echo
	echo "=== $name"
	local t0=$SECONDS
	if "$@"; then
		pass=$((pass + 1))
		summary+=("ok    $name ($((SECONDS - t0)) s)")
	else
		fail=$((fail + 1))
		summary+=("FAIL  $name ($((SECONDS - t0)) s)")
		for d in regression.diffs output_iso/regression.diffs; do
			[ -s "$d" ] && { echo "--- $d"; head -200 "$d"; }
		done
	fi
}

rm -rf results output_iso regression.diffs regression.out

# Stripe's fixture objects (sql/stripe.sql builds events from them) live in
# the workspace's shared/ folder, beside the project.
if [ -z "${TIERMETER_FIXTURES:-}" ]; then
	for f in ../shared/stripe/fixtures3.json ../../shared/stripe/fixtures3.json; do
		[ -f "$f" ] && { TIERMETER_FIXTURES=$(cd "$(dirname "$f")" && pwd)/fixtures3.json; break; }
	done
fi
if [ -z "${TIERMETER_FIXTURES:-}" ] || [ ! -f "$TIERMETER_FIXTURES" ]; then
	echo "test: Stripe's fixtures3.json not found beside the project (../shared/stripe/);" \
		"set TIERMETER_FIXTURES to its path" >&2
	exit 1
fi
export TIERMETER_FIXTURES

suite "pg_regress + isolation, library preloaded" \
	pg_virtualenv -v 15 -o "$PRELOAD" make -s installcheck
suite "pg_regress + isolation, library not preloaded" \
	pg_virtualenv -v 15 make -s installcheck
suite "pgTAP (pg_prove test/pgtap)" \
	pg_virtualenv -v 15 -o "$PRELOAD" scripts/pgtap.sh
suite "docs (examples of docs/reference.md)" \
	pg_virtualenv -v 15 -o "$PRELOAD" scripts/docs.sh
suite "TAP (prove test/t, PostgreSQL::Test::Cluster)" \
	scripts/tap.sh
suite "valgrind (pg_regress + isolation under memcheck)" \
	scripts/valgrind.sh

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
echo "suites: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
