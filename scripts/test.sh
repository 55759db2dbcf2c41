#!/usr/bin/env bash
# Runs every test suite against throwaway PostgreSQL clusters and ends with
# a summary.  Exits non-zero if any suite fails.  Called by `make test`, after
# the extension is built and installed.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

# pg_cron is preloaded only by the TAP test that schedules the rollover
PRELOAD='shared_preload_libraries=tiermeter'
pass=0
fail=0
summary=()

suite() {
	local name=$1
	shift
	echo
	echo "=== $name"
	local t0=$SECONDS
	local rc
	"$@" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if [ "$rc" -eq 0 ]; then
		pass=$((pass + 1))
		summary+=("ok    $name ($((SECONDS - t0)) s)")
	else
		fail=$((fail + 1))
		summary+=("FAIL  $name ($((SECONDS - t0)) s)")
		for d in regression.diffs output_iso/regression.diffs; do
			[ -s "$d" ] && { echo "--- $d"; head -200 "$d"; }
		done
	fi
	# a test file that skipped itself says so in the summary too, with why
	while IFS= read -r line; do
		summary+=("      skipped ${line/ skipped: /: }")
	done < <(grep -oE '^t/[^ ]+ [.]* skipped: .*' "$log" | sed -E 's/ [.]+ skipped: / skipped: /')
}

log=$(mktemp /tmp/tiermeter-suite.XXXXXX)
trap 'rm -f "$log"' EXIT

rm -rf results output_iso regression.diffs regression.out

suite "pg_regress + isolation, library preloaded" \
	virtualenv -o "$PRELOAD" make -s installcheck
suite "pg_regress + isolation, library not preloaded" \
	virtualenv make -s installcheck
suite "upgrade (every released version to $EXTVERSION), library preloaded" \
	virtualenv -o "$PRELOAD" scripts/upgrade.sh
suite "upgrade (every released version to $EXTVERSION), library not preloaded" \
	virtualenv scripts/upgrade.sh
suite "pgTAP (pg_prove test/pgtap)" \
	virtualenv -o "$PRELOAD" scripts/pgtap.sh
suite "docs (examples of docs/reference.md)" \
	virtualenv -o "$PRELOAD" scripts/docs.sh
suite "exported symbols (nm -D)" \
	scripts/symbols.sh
suite "TAP (prove test/t, PostgreSQL::Test::Cluster)" \
	scripts/tap.sh
suite "valgrind (pg_regress + isolation under memcheck)" \
	scripts/valgrind.sh

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
echo "suites: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
