# pg_regstage — PGXS build of the extension, plus the relay program.
#
#   make && make install          build and install the extension and the relay
#   make installcheck             pg_regress suites against a running cluster
#   bash scripts/test.sh          every suite on throwaway servers (what CI runs)

EXTVERSION = 1.0

MODULE_big = pg_regstage
OBJS = $(patsubst %.c,%.o,$(wildcard pg_regstage/*.c))

# The control file and the versioned scripts live in control/; without
# EXTENSION set, PGXS installs them as plain DATA, so point it at extension/.
MODULEDIR = extension
DATA = control/pg_regstage.control $(wildcard control/pg_regstage--*.sql)

PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Wno-clobbered
SHLIB_LINK = -lhiredis -lcurl

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
ISOLATION = $(patsubst test/isolation/specs/%.spec,%,$(wildcard test/isolation/specs/*.spec))
ISOLATION_OPTS = --inputdir=test/isolation

EXTRA_CLEAN = relay/*.o relay/regstage-relay test/isolation/results test/isolation/output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# ---- the relay (a plain C program; libcurl + libpq + jansson) -------------
RELAY_SRCS = $(wildcard relay/*.c)
RELAY_OBJS = $(RELAY_SRCS:.c=.o)
RELAY_CFLAGS = -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu11 -I$(shell $(PG_CONFIG) --includedir)
RELAY_LIBS = -L$(shell $(PG_CONFIG) --libdir) -lpq -lcurl -ljansson -lssl -lcrypto -lpthread
prefix_bin ?= /usr/local/bin

ifneq ($(RELAY_SRCS),)
all: relay/regstage-relay

relay/%.o: relay/%.c $(wildcard relay/*.h)
	$(CC) $(RELAY_CFLAGS) -c -o $@ $<

relay/regstage-relay: $(RELAY_OBJS)
	$(CC) -o $@ $^ $(RELAY_LIBS)

install: install-relay
install-relay: relay/regstage-relay
	install -d '$(DESTDIR)$(prefix_bin)'
	install -m 0755 relay/regstage-relay '$(DESTDIR)$(prefix_bin)/regstage-relay'

.PHONY: install-relay
endif
