# pg_regstage — PGXS build of the extension; the relay has its own Makefile.
#
#   make && make install     build and install the extension and the relay
#   make installcheck        pg_regress + isolation suites against a running
#                            cluster (see README "Tests" for what it needs)
#   bash scripts/test.sh     every suite on throwaway servers (what CI runs)
#
# Warnings are errors only when asked for (CI: make WERROR=1); a user's
# newer compiler must not fail the build over a new warning.

# PGXS's "all" stays the default goal although rules follow before its include.
.DEFAULT_GOAL := all

EXTENSION = control/pg_regstage
EXTVERSION = 1.1

MODULE_big = pg_regstage
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard pg_regstage/*.c)))
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Wno-clobbered
ifeq ($(WERROR),1)
PG_CFLAGS += -Werror
endif
SHLIB_LINK = -lhiredis -lcurl -lcrypto

# The install script of each release is built from the parts in control/src/
# (one file per concern); an upgrade script is its own changes to the tables
# followed by the same parts, which only CREATE OR REPLACE.
DATA = control/pg_regstage--1.0.sql
DATA_built = control/pg_regstage--$(EXTVERSION).sql control/pg_regstage--1.0--1.1.sql

SQL_PARTS = c_api document_files review conversation queue admin messages texts grants
INSTALL_PARTS = control/src/header.sql control/src/schema.sql control/src/queue_tables.sql control/src/admin_tables.sql \
	$(patsubst %,control/src/%.sql,$(SQL_PARTS)) control/src/comments.sql
UPGRADE_1_0_PARTS = control/upgrade/header.sql control/upgrade/1.0--1.1.sql control/src/queue_tables.sql control/src/admin_tables.sql \
	$(patsubst %,control/src/%.sql,$(SQL_PARTS)) control/upgrade/1.0--1.1-post.sql control/src/comments.sql

control/pg_regstage--$(EXTVERSION).sql: $(INSTALL_PARTS)
	cat $^ > $@
control/pg_regstage--1.0--1.1.sql: $(UPGRADE_1_0_PARTS)
	cat $^ > $@

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
ISOLATION = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation
TAP_TESTS = 1

EXTRA_CLEAN = test/isolation/results test/isolation/output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# ---- the relay: relay/Makefile --------------------------------------------
all: relay
relay:
	$(MAKE) -C relay PG_CONFIG=$(PG_CONFIG) WERROR=$(WERROR)
install: install-relay
install-relay: relay
	$(MAKE) -C relay PG_CONFIG=$(PG_CONFIG) install
clean: clean-relay
clean-relay:
	$(MAKE) -C relay clean

.PHONY: relay install-relay clean-relay
