#!/usr/bin/env bash
# Builds the install script of the current version (make's DATA_built):
# the oldest release's install script, then every upgrade script in order,
# each without its "\echo ... \quit" guard line.  So a fresh install runs
# exactly the statements an upgraded database ran.
#   scripts/build_install.sh OUTPUT BASE_SCRIPT UPGRADE_SCRIPT...
set -euo pipefail
out=$1
base=$2
shift 2
{
	printf -- '-- Built by scripts/build_install.sh from %s' "$(basename "$base")"
	for u in "$@"; do printf ' + %s' "$(basename "$u")"; done
	printf '.\n-- Do not edit: change the newest upgrade script instead.\n\n'
	cat "$base"
	for u in "$@"; do
		printf '\n-- ===== %s =====\n\n' "$(basename "$u")"
		grep -v '^\\echo Use "ALTER EXTENSION' "$u"
	done
} > "$out.tmp"
mv "$out.tmp" "$out"
