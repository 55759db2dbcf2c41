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
	src/status.o \
	src/limits.o \
	src/usage.o \
	src/cache.o \
	src/stripe.o \
	src/format.o

DATA = $(wildcard sql/tiermeter--*.sql)

# pg_regress: scripts in sql/, outputs in expected/
REGRESS = install catalog periods check record consume admin errors format cache stripe usage_stats rollover
REGRESS_OPTS = --inputdir=. --load-extension=tiermeter

# isolation specs: test/specs, outputs in test/expected
ISOLATION = consume_edge idempotency_race config_visibility stripe_race consume_bypass rollover_race
ISOLATION_OPTS = --inputdir=test --load-extension=tiermeter

PG_CPPFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

# PostgreSQL 15 from Debian; override with `make PG_CONFIG=...`.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

# Before PostgreSQL is installed there is no PGXS: only the set-up targets work.
ifneq ($(wildcard $(PG_CONFIG)),)
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
endif

.PHONY: setup demo test

setup:
	@scripts/setup.sh

demo: setup
	@$(MAKE) --no-print-directory all install >/dev/null
	@scripts/demo.sh

test: setup
	@$(MAKE) --no-print-directory all install
	@scripts/test.sh

.PHONY: print-regress
print-regress:
	@echo $(REGRESS)

.PHONY: bench
bench: setup
	@$(MAKE) --no-print-directory all install >/dev/null
	@bench/run.sh
