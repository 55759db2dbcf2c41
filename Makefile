# tiermeter — PGXS build.
#
#   make demo   install what is missing, build, and walk through a scenario
#   make test   install what is missing, build, and run every test suite
#
# The version comes from tiermeter.control.

EXTENSION  = tiermeter
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" tiermeter.control)

MODULE_big = tiermeter
OBJS = \
	src/tiermeter.o \
	src/period.o \
	src/catalog.o \
	src/relnames.o \
	src/scan.o \
	src/memo.o \
	src/status.o \
	src/limits.o \
	src/usage.o \
	src/ledger.o \
	src/cache.o \
	src/cache_build.o \
	src/cache_local.o \
	src/cache_reserve.o \
	src/cache_inval.o \
	src/cache_stats.o \
	src/cache_config.o \
	src/cache_twophase.o \
	src/twophase.o \
	src/notify.o \
	src/citus.o \
	src/alerts.o \
	src/session.o \
	src/stripe.o \
	src/format.o

# Versions (docs/design.md, "Versions and upgrades").  The oldest release's
# install script is frozen; every later change is an upgrade script, listed
# here in order.  The current version's install script is built from them.
BASE_VERSION = 0.1.0
UPGRADES = sql/tiermeter--0.1.0--0.2.0.sql
DATA = sql/tiermeter--$(BASE_VERSION).sql $(UPGRADES)
DATA_built = sql/tiermeter--$(EXTVERSION).sql

# pg_regress: scripts in sql/, outputs in expected/
REGRESS = install catalog periods check record consume admin errors format cache builds ledger stripe_orgs stripe_periods stripe_checkout stripe usage_stats rollover foreign_writes saturation savepoints long_transactions config_refresh sessions thresholds views nulls cache_stats access twophase distribute
REGRESS_OPTS = --inputdir=. --load-extension=tiermeter

# isolation specs: test/specs, outputs in test/expected
ISOLATION = consume_edge idempotency_race config_visibility stripe_race stripe_checkout_race consume_bypass rollover_race consume_reserved session_slots session_touch_end session_touch_wait threshold_race twophase_consume long_transaction_commits ledger_rename build_rename
ISOLATION_OPTS = --inputdir=test --load-extension=tiermeter

PG_CPPFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
# export only what PostgreSQL looks up (PGDLLEXPORT, see src/tiermeter.h)
PG_CFLAGS = -fvisibility=hidden

# PostgreSQL from Debian's packages (setup installs this major version);
# every path comes from pg_config: override with `make PG_CONFIG=...`.
PG_MAJOR ?= 15
PG_CONFIG ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
export PG_MAJOR PG_CONFIG

# Before PostgreSQL is installed there is no PGXS: only the set-up targets work.
ifneq ($(wildcard $(PG_CONFIG)),)
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
endif

# every C file includes the shared header (PGXS tracks no header changes)
$(OBJS): src/tiermeter.h
# the cache's files also include its private header
src/cache.o src/cache_build.o src/cache_local.o src/cache_reserve.o src/cache_inval.o src/cache_stats.o: src/cache.h

.PHONY: setup demo example test

setup:
	@scripts/setup.sh

demo: setup
	@$(MAKE) --no-print-directory all install >/dev/null
	@scripts/demo.sh

example: setup
	@$(MAKE) --no-print-directory all install >/dev/null
	@scripts/example.sh

test: setup
	@$(MAKE) --no-print-directory all install
	@scripts/test.sh

.PHONY: print-regress
print-regress:
	@echo $(REGRESS)

.PHONY: bench
bench: setup
	@$(MAKE) --no-print-directory all install >/dev/null
	@$(MAKE) --no-print-directory -C bench install >/dev/null
	@bench/run.sh
	@bench/citus.sh

# the current version's install script (DATA_built), after PGXS so that
# `make` alone still means `make all`
sql/tiermeter--$(EXTVERSION).sql: sql/tiermeter--$(BASE_VERSION).sql $(UPGRADES) scripts/build_install.sh
	scripts/build_install.sh $@ sql/tiermeter--$(BASE_VERSION).sql $(UPGRADES)
