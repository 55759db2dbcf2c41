# Where PostgreSQL is: every path comes from pg_config (make passes
# PG_CONFIG; override it with `make PG_CONFIG=...`).  Sourced by the other
# scripts.
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
if [ ! -x "$PG_CONFIG" ]; then
	echo "tiermeter: pg_config not found at $PG_CONFIG (set PG_CONFIG)" >&2
	exit 2
fi
PGBIN=$("$PG_CONFIG" --bindir)
PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
PGXS_DIR=$(dirname "$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")")
PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress
PG_PERL=$PGXS_DIR/src/test/perl
# the version this checkout builds
EXTVERSION=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" tiermeter.control)
# a throwaway cluster of this major version (Debian's postgresql-common);
# to run beside another one: PG_VIRTUALENV_OPTS='-t -o port=5499'
# (sql/twophase.sql prepares transactions: max_prepared_transactions > 0)
virtualenv() { pg_virtualenv ${PG_VIRTUALENV_OPTS:-} -o max_prepared_transactions=10 -v "$PG_MAJOR" "$@"; }
