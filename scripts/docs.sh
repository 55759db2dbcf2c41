#!/usr/bin/env bash
# Runs the examples of docs/reference.md and checks their documented output.
# Expects PG* variables for a running cluster (pg_virtualenv sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
createdb tiermeter_docs
psql -X -q -v ON_ERROR_STOP=1 -d tiermeter_docs -c 'CREATE EXTENSION tiermeter'
perl scripts/check_docs.pl docs/reference.md tiermeter_docs
