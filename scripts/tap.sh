#!/usr/bin/env bash
# Runs the TAP tests (test/t) with PostgreSQL::Test::Cluster.  initdb refuses
# root, so the tests run as the postgres user from a copy it can read.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

tmp=$(mktemp -d /tmp/tiermeter-tap.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp -r test/t "$tmp/t"
cp -r examples "$tmp/examples"		# the examples some tests run
cp -r test/fixtures "$tmp/fixtures"	# Stripe's fixture objects (TAP 015)
chmod 755 "$tmp"
if [ "$(id -u)" -eq 0 ]; then
	chown -R postgres "$tmp"
	runas=(runuser -u postgres --)
else
	runas=()
fi
repo=$PWD
cd "$tmp"
# the screenshots the tests take are kept in test/output
keep() { mkdir -p "$repo/test/output"; cp tmp_check/*.png "$repo/test/output/" 2>/dev/null || true; }
"${runas[@]}" env PATH="$PGBIN:$PATH" PG_REGRESS="$PG_REGRESS" \
	prove ${PROVE_FLAGS:-} -I "$PG_PERL" t/*.pl || { keep; for f in tmp_check/log/*; do echo "--- $f"; tail -30 "$f"; cp "$f" /tmp/ 2>/dev/null; done; exit 1; }
keep
