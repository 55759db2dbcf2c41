#!/usr/bin/env bash
# tiermeter.so exports only what PostgreSQL looks up: Pg_magic_func, _PG_init,
# and each C function an install or upgrade script names, with its pg_finfo_
# record.  Everything else is built with -fvisibility=hidden.
set -euo pipefail
cd "$(dirname "$0")/.."

want=$( { printf '%s\n' Pg_magic_func _PG_init
	  sed -n "s/.*'MODULE_PATHNAME', *'\([A-Za-z0-9_]*\)'.*/\1/p" sql/tiermeter--*.sql |
		sort -u | while read -r f; do printf '%s\npg_finfo_%s\n' "$f" "$f"; done; } | sort -u)
have=$(nm -D --defined-only tiermeter.so | awk '{print $3}' | sort -u)

if [ "$want" = "$have" ]; then
	echo "exported symbols: $(echo "$have" | wc -l), exactly the ones PostgreSQL looks up"
else
	echo "exported symbols differ from the ones PostgreSQL looks up (- missing, + extra):"
	diff <(echo "$want") <(echo "$have") | sed -n 's/^</-/p; s/^>/+/p'
	exit 1
fi
