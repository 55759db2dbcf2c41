#!/usr/bin/env bash
# The upgrade test.  For each released version: install it, fill it as a live
# database is filled (test/upgrade/fill.sql), then check that
#   - its install script is the one released (never edited since);
#   - the library this checkout built serves that version's SQL with the
#     answers the release itself gave (test/upgrade/expected/);
#   - an ALTER EXTENSION UPDATE that rolls back leaves it as it was;
#   - after ALTER EXTENSION UPDATE, every answer and every datum is the same,
#     and every object of the extension equals a fresh install's;
#   - the regression suite passes on a database updated from that version.
# Expects PG* variables for a running cluster, with or without tiermeter
# preloaded (pg_virtualenv sets them).  Exits non-zero on any difference.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

# every released version, oldest first; the upgrade path starts at each
released=(0.1.0)

out=$(mktemp -d /tmp/tiermeter-upgrade.XXXXXX)
chmod 755 "$out"
trap 'rm -rf "$out"' EXIT
failed=0
ok() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; failed=1; }
same() {						# what, expected file, actual file
	if diff -u "$2" "$3" > "$out/diff"; then
		ok "$1"
	else
		fail "$1"
		head -80 "$out/diff"
	fi
}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$@"; }
run() { psql -X -a -q -d "$1" -f "$2" > "$3" 2>&1; }						# echoes like pg_regress
describe() { psql -X -q -v ON_ERROR_STOP=1 -d "$1" -f "test/upgrade/$2.sql" > "$3" 2>&1; }

# the released install scripts are frozen
if (cd sql && sha256sum --quiet -c ../test/upgrade/released.sha256); then
	ok "released install scripts are unchanged (test/upgrade/released.sha256)"
else
	fail "a released install script was edited: ship the change as an upgrade script"
fi

# a fresh install of this version: what an updated database must equal
q postgres -c 'CREATE DATABASE tm_fresh'
q tm_fresh -c 'CREATE EXTENSION tiermeter'
describe tm_fresh catalog "$out/catalog.fresh"
n=$(grep -c '' "$out/catalog.fresh")
[ "$n" -gt 300 ] || fail "the catalog description of a fresh install has only $n lines"

for from in "${released[@]}"; do
	db=tm_from_${from//./_}
	echo "--- from $from to $EXTVERSION"
	q postgres -c "CREATE DATABASE $db"
	q "$db" -c "CREATE EXTENSION tiermeter VERSION '$from'"

	# the new library on the old SQL: the answers the release gave
	run "$db" test/upgrade/fill.sql "$out/fill.out"
	same "$from SQL, new library: filling gives the answers $from gave" \
		test/upgrade/expected/fill.out "$out/fill.out"
	run "$db" test/upgrade/answers.sql "$out/answers.out"
	same "$from SQL, new library: the data answers as $from did" \
		test/upgrade/expected/answers.out "$out/answers.out"
	describe "$db" catalog "$out/catalog.before"
	describe "$db" data "$out/data.before"

	# an update that rolls back changes nothing
	got=$(q "$db" -c 'BEGIN' -c "ALTER EXTENSION tiermeter UPDATE TO '$EXTVERSION'" \
		-c "SELECT extversion FROM pg_extension WHERE extname = 'tiermeter'" -c 'ROLLBACK' 2>&1)
	[ "$got" = "$EXTVERSION" ] || fail "inside the transaction the version is '$got', not $EXTVERSION"
	got=$(q "$db" -c "SELECT extversion FROM pg_extension WHERE extname = 'tiermeter'")
	[ "$got" = "$from" ] && ok "a rolled-back update leaves $from" || fail "after ROLLBACK the version is '$got'"
	describe "$db" catalog "$out/catalog.rolledback"
	same "rolled back: every object as before" "$out/catalog.before" "$out/catalog.rolledback"
	run "$db" test/upgrade/answers.sql "$out/answers.out"
	same "rolled back: the same answers" test/upgrade/expected/answers.out "$out/answers.out"

	# the update
	if q "$db" -c 'ALTER EXTENSION tiermeter UPDATE' > "$out/update.log" 2>&1; then
		ok "ALTER EXTENSION tiermeter UPDATE from $from"
	else
		fail "ALTER EXTENSION tiermeter UPDATE from $from"
		cat "$out/update.log"
	fi
	got=$(q "$db" -c "SELECT extversion FROM pg_extension WHERE extname = 'tiermeter'")
	[ "$got" = "$EXTVERSION" ] || fail "after the update the version is '$got', not $EXTVERSION"
	describe "$db" data "$out/data.after"
	same "updated: every datum as before" "$out/data.before" "$out/data.after"
	run "$db" test/upgrade/answers.sql "$out/answers.out"
	same "updated: the same answers" test/upgrade/expected/answers.out "$out/answers.out"
	run "$db" test/upgrade/migrated.sql "$out/migrated.out"
	same "updated: the data migrated on purpose" test/upgrade/expected/migrated.out "$out/migrated.out"
	describe "$db" catalog "$out/catalog.updated"
	same "updated: every object equals a fresh $EXTVERSION install's" "$out/catalog.fresh" "$out/catalog.updated"

	# the regression suite, each script on its own copy of a database
	# updated from this version
	q postgres -c "CREATE DATABASE ${db}_updated"
	q "${db}_updated" -c "CREATE EXTENSION tiermeter VERSION '$from'" -c 'ALTER EXTENSION tiermeter UPDATE'
	bad=""
	for t in $(make -s --no-print-directory print-regress); do
		q postgres -c "CREATE DATABASE tm_regress TEMPLATE ${db}_updated"
		rm -rf "$out/regress"
		mkdir -p "$out/regress"
		if ! "$PG_REGRESS" --inputdir=. --outputdir="$out/regress" --bindir="$PGBIN" \
			--use-existing --dbname=tm_regress "$t" > "$out/regress.log" 2>&1; then
			bad="$bad $t"
			cat "$out/regress/regression.diffs"
		fi
		q postgres -c 'DROP DATABASE tm_regress'
	done
	if [ -z "$bad" ]; then
		ok "the regression suite passes on a database updated from $from"
	else
		fail "the regression suite on a database updated from $from:$bad"
	fi
done

[ "$failed" -eq 0 ] && echo "upgrade: every check passed" || echo "upgrade: FAILED"
exit "$failed"
