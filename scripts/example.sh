#!/usr/bin/env bash
# make example: a throwaway cluster with tiermeter preloaded, the reference
# backend (examples/flask/app.py) on http://127.0.0.1:${PORT:-8000} in front
# of it, a demo org at 85 % of its monthly time, and a sign-in link to its
# usage page.  Ctrl-C stops the app, and the cluster is dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
if [ -z "${TIERMETER_EXAMPLE:-}" ]; then
	TIERMETER_EXAMPLE=1 exec pg_virtualenv -v "$PG_MAJOR" -o 'shared_preload_libraries=tiermeter' "$0" "$@" \
		2> >(grep -v -E '^(Creating|Dropping) ' >&2)
fi
port=${PORT:-8000}
password=$(openssl rand -hex 12)
psql -X -q -v ON_ERROR_STOP=1 -v pw="$password" -d postgres >/dev/null <<'SQL'
CREATE EXTENSION tiermeter;
CREATE ROLE chat_app LOGIN PASSWORD :'pw';
CREATE ROLE chat_billing LOGIN PASSWORD :'pw';
SELECT tiermeter.grant_access('chat_app', 'app');
SELECT tiermeter.grant_access('chat_app', 'reader');
SELECT tiermeter.grant_access('chat_billing', 'billing');
SELECT tiermeter.record_usage('acme', 3060);
SQL
dsn="host=${PGHOST:-localhost} port=$PGPORT dbname=postgres password=$password"
export TIERMETER_APP_DSN="$dsn user=chat_app" TIERMETER_BILLING_DSN="$dsn user=chat_billing"
export STRIPE_WEBHOOK_SECRET=whsec_example LOGIN_LINK_SECRET=$(openssl rand -hex 16)
export APP_SECRET_KEY=$(openssl rand -hex 16)
token=$(printf %s acme | openssl dgst -sha256 -hmac "$LOGIN_LINK_SECRET" | sed 's/^.* //')
echo "tiermeter example: org acme has used 3060 of its 3600 conversation seconds."
echo "Open its usage page: http://127.0.0.1:$port/login?org=acme&token=$token"
echo "API: curl -H 'X-Org-Id: acme' -X POST http://127.0.0.1:$port/api/conversations/c1/messages"
echo "Ctrl-C stops the app; the cluster is then dropped."
/usr/bin/python3 examples/flask/app.py --port "$port" || true
