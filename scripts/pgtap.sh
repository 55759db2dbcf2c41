#!/usr/bin/env bash
# Runs the pgTAP suite; expects PG* variables for a running cluster
# (pg_virtualenv sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
createdb tiermeter_tap
psql -X -q -v ON_ERROR_STOP=1 -d tiermeter_tap \
	-c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION tiermeter'
pg_prove -d tiermeter_tap test/pgtap/*.sql
