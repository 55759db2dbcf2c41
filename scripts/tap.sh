#!/usr/bin/env bash
# Runs the TAP tests (test/t) with PostgreSQL::Test::Cluster.  initdb refuses
# root, so the tests run as the postgres user from a copy it can read.
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=/usr/lib/postgresql/15/bin
PERL5=/usr/lib/postgresql/15/lib/pgxs/src/test/perl

tmp=$(mktemp -d /tmp/tiermeter-tap.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp -r test/t "$tmp/t"
chmod 755 "$tmp"
if [ "$(id -u)" -eq 0 ]; then
	chown -R postgres "$tmp"
	runas=(runuser -u postgres --)
else
	runas=()
fi
cd "$tmp"
"${runas[@]}" env PATH="$PGBIN:$PATH" PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
	prove ${PROVE_FLAGS:-} -I "$PERL5" t/*.pl || { for f in tmp_check/log/*; do echo "--- $f"; tail -30 "$f"; cp "$f" /tmp/ 2>/dev/null; done; exit 1; }
