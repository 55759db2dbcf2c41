#!/usr/bin/env bash
# Starts a throwaway cluster with tiermeter preloaded and walks through the
# demo scenario (examples/demo.sql).  Called by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
exec pg_virtualenv -v "$PG_MAJOR" -o 'shared_preload_libraries=tiermeter,pg_cron' \
	psql -X -q -d postgres -f examples/demo.sql 2> >(grep -v -E '^(Creating|Dropping) ' >&2)
