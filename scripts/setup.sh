#!/usr/bin/env bash
# Installs what tiermeter needs from Debian's packages, when it is missing.
# Idempotent: a machine that has everything is left alone.
set -euo pipefail

v=${PG_MAJOR:-15}			# make passes it (the Makefile's PG_MAJOR)
packages=(postgresql-$v postgresql-server-dev-$v postgresql-$v-pgtap pgtap
          postgresql-$v-cron libipc-run-perl postgresql-common make gcc openssl valgrind python3-psycopg
          python3-psycopg-pool python3-flask chromium)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: need root to install packages (run as root, or install them yourself)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Debian's postgresql-common would create a default cluster; we only use
	# throwaway clusters, so skip it.
	mkdir -p /etc/postgresql-common/createcluster.d
	echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/tiermeter.conf
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi
