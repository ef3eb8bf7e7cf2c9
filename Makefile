# limpeza: a plain Makefile; libraries come from pkg-config (Debian packages).

CC ?= cc
PREFIX ?= /usr/local
DESTDIR ?=
CFLAGS ?= -O2 -g
PYTHON ?= /usr/bin/python3

PKGS = sqlite3 libcurl jansson libpq libsystemd libmicrohttpd
WARN = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wpointer-arith -Wcast-qual -Werror
# Expanded when a recipe runs, i.e. after `deps` has installed the packages.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
# libmicrohttpd is dlopen()ed by metrics.c when metrics are on, libpq and
# libcurl by libs.c when the settings need them.
PKG_LIBS = $(shell pkg-config --libs \
	   $(filter-out libmicrohttpd libpq libcurl,$(PKGS))) -ldl
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DHAVE_SYSTEMD -pthread $(WARN) $(CFLAGS) \
	     -Ibuild $(PKG_CFLAGS)
# The sanitizer build uses clang: its runtime writes every report (ASan,
# LSan, UBSan) to log_path, where the tests look for them; GCC's combined
# runtime prints UBSan's to standard error only.
ASAN_CC ?= clang
SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
      -fno-omit-frame-pointer
ASAN_CFLAGS = -std=c11 -D_GNU_SOURCE -DHAVE_SYSTEMD -pthread $(WARN) -O1 -g \
	      $(SAN) -Ibuild $(PKG_CFLAGS)
# The build without libsystemd (no sd_notify): it must compile as cleanly.
NOSD_CFLAGS = $(filter-out -DHAVE_SYSTEMD,$(ALL_CFLAGS))
NOSD_LIBS = $(shell pkg-config --libs \
	    $(filter-out libmicrohttpd libpq libcurl libsystemd,$(PKGS))) -ldl

MODULES = config mask dotenv log text clock jsonscan jobtime safefile cache store store_sqlite \
	  store_pg health metrics alert cycle libs commands notify
OBJS = $(MODULES:%=build/obj/%.o)
ASAN_OBJS = $(MODULES:%=build/asan/obj/%.o)
NOSD_OBJS = $(MODULES:%=build/nosd/obj/%.o) build/nosd/obj/main.o
# The unit tests and fuzz targets bring their own clock (tests/unit/clock.h,
# tests/fuzz/fuzz.h); test_jsonscan links the scanner alone, which shows
# that it needs nothing else of limpeza.
TEST_OBJS = $(filter-out build/obj/clock.o,$(OBJS))
ASAN_TEST_OBJS = $(filter-out build/asan/obj/clock.o,$(ASAN_OBJS))
# build/probe.h: minimum versions checked, sonames of what is dlopen()ed.
HDRS = src/limpeza.h src/store.h src/jsonscan.h src/mask.h src/dotenv.h build/probe.h
UNIT = test_config test_dotenv test_jsonscan test_cache test_log test_health \
       test_jobtime test_text
UNIT += test_metrics
UNIT_BINS = $(UNIT:%=build/tests/%)
ASAN_UNIT_BINS = $(UNIT:%=build/asan/tests/%)

FUZZ = cache health dotenv settings mask text
FUZZ_BINS = $(FUZZ:%=build/fuzz/fuzz_%)
FUZZ_SRCS = $(filter-out src/clock.c,$(MODULES:%=src/%.c))
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -DHAVE_SYSTEMD -pthread $(WARN) -g -O1 \
	      -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	      -Isrc -Ibuild $(PKG_CFLAGS)

# A sanitizer report exits 86, never limpeza's own 1 or 2: the runtimes
# share one exit code and one report path (clang), and the report's first
# line names the sanitizer. The integration tests add a log_path per test
# and fail any test whose limpeza processes left a report.
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:exitcode=86

.PHONY: all deps test-deps install uninstall clean test unit integration nosd m32 \
	asan asan-unit asan-integration demo format \
	format-check bench bench-month fuzz fuzz-smoke lint stress mutants mutants-fast \
	print-san-env deb deb-test

all: build/limpeza build/limpeza.8

deps:
	@pkg-config --exists $(PKGS) || sh scripts/deps.sh build

test-deps:
	@sh scripts/deps.sh test

build build/obj build/asan/obj build/nosd/obj build/tests build/asan/tests \
build/fuzz:
	mkdir -p $@

# The libraries' minimum versions (a clear line if one is older) and the
# sonames that libs.c and metrics.c load: those of the libraries the
# linker picks for -lpq, -lcurl and -lmicrohttpd with these flags.
build/probe.h: scripts/probe.sh | deps build
	CC="$(CC)" FLAGS="$(CFLAGS) $(LDFLAGS)" sh scripts/probe.sh > $@.tmp
	mv $@.tmp $@

build/obj/%.o: src/%.c $(HDRS) | deps build/obj
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

build/limpeza: $(OBJS) build/obj/main.o
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(PKG_LIBS) $(LDFLAGS)

build/nosd/obj/%.o: src/%.c $(HDRS) | deps build/nosd/obj
	$(CC) $(NOSD_CFLAGS) -c -o $@ $<

build/nosd/limpeza: $(NOSD_OBJS)
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(NOSD_LIBS) $(LDFLAGS)

nosd: build/nosd/limpeza

# A 32-bit build (gcc -m32 with Debian's i386 jansson, SQLite and libcurl;
# no libsystemd, libpq or libmicrohttpd there). A json_pack/json_unpack
# format that does not match its argument's type (i for a json_int_t)
# reads the wrong bytes there: tests/integration/test_build.py runs its
# alert and stats paths. 64-bit file offsets, as on every 64-bit target.
M32_PC = PKG_CONFIG_LIBDIR=/usr/lib/i386-linux-gnu/pkgconfig:/usr/share/pkgconfig
M32_CFLAGS = -m32 -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread $(WARN) -O1 -g -Ibuild/m32 \
	     $(shell $(M32_PC) pkg-config --cflags jansson sqlite3 libcurl) \
	     $(shell pkg-config --cflags libpq libmicrohttpd)
M32_LIBS = $(shell $(M32_PC) pkg-config --libs jansson sqlite3) -ldl
M32_OBJS = $(MODULES:%=build/m32/obj/%.o) build/m32/obj/main.o

build/m32/obj:
	mkdir -p $@

build/m32/probe.h: scripts/probe.sh | test-deps build/m32/obj
	CC="$(CC) -m32" OPTIONAL="pq microhttpd" $(M32_PC) sh scripts/probe.sh > $@.tmp
	mv $@.tmp $@

build/m32/obj/%.o: src/%.c src/limpeza.h src/store.h build/m32/probe.h | test-deps build/m32/obj
	$(CC) $(M32_CFLAGS) -c -o $@ $<

build/m32/limpeza: $(M32_OBJS)
	$(CC) -m32 -pthread -o $@ $^ $(M32_LIBS)

m32: build/m32/limpeza

# The man page's settings come from the same table as --help.
build/limpeza.8: man/limpeza.8.in build/limpeza
	build/limpeza --man-settings > $@.settings
	sed -e 's/@VERSION@/$(shell build/limpeza --version | cut -d" " -f2)/' \
	    -e '/@SETTINGS@/{r $@.settings' -e 'd}' man/limpeza.8.in > $@
	rm -f $@.settings

build/asan/obj/%.o: src/%.c $(HDRS) | test-deps build/asan/obj
	$(ASAN_CC) $(ASAN_CFLAGS) -c -o $@ $<

build/asan/limpeza: $(ASAN_OBJS) build/asan/obj/main.o
	$(ASAN_CC) $(SAN) -pthread -o $@ $^ $(PKG_LIBS)

build/tests/%: tests/unit/%.c tests/unit/clock.h $(TEST_OBJS) $(HDRS) | test-deps build/tests
	$(CC) $(ALL_CFLAGS) -Isrc $(shell pkg-config --cflags cmocka) -o $@ \
	    $< $(TEST_OBJS) $(PKG_LIBS) $(shell pkg-config --libs cmocka) -lm

build/asan/tests/%: tests/unit/%.c tests/unit/clock.h $(ASAN_TEST_OBJS) $(HDRS) | test-deps build/asan/tests
	$(ASAN_CC) $(ASAN_CFLAGS) -Isrc $(shell pkg-config --cflags cmocka) -o $@ \
	    $< $(ASAN_TEST_OBJS) $(PKG_LIBS) $(shell pkg-config --libs cmocka) -lm

build/tests/test_jsonscan: tests/unit/test_jsonscan.c build/obj/jsonscan.o src/jsonscan.h | test-deps build/tests
	$(CC) $(ALL_CFLAGS) -Isrc $(shell pkg-config --cflags cmocka) -o $@ \
	    $< build/obj/jsonscan.o $(shell pkg-config --libs cmocka jansson)

build/asan/tests/test_jsonscan: tests/unit/test_jsonscan.c build/asan/obj/jsonscan.o src/jsonscan.h | test-deps build/asan/tests
	$(ASAN_CC) $(ASAN_CFLAGS) -Isrc $(shell pkg-config --cflags cmocka) -o $@ \
	    $< build/asan/obj/jsonscan.o $(shell pkg-config --libs cmocka jansson)

# The product's cache pass over many documents in one process, for
# tests/integration/test_python_dialect.py (real clock, real settings).
build/tests/cache_driver: tests/integration/cache_driver.c $(OBJS) $(HDRS) | test-deps build/tests
	$(CC) $(ALL_CFLAGS) -Isrc -o $@ $< $(OBJS) $(PKG_LIBS) -lm

build/asan/tests/cache_driver: tests/integration/cache_driver.c $(ASAN_OBJS) $(HDRS) | test-deps build/asan/tests
	$(ASAN_CC) $(ASAN_CFLAGS) -Isrc -o $@ $< $(ASAN_OBJS) $(PKG_LIBS) -lm

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_SRCS) $(HDRS) | test-deps build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_SRCS) $(PKG_LIBS) -lm

# Each target for FUZZ_SECONDS on its seed corpus (tests/fuzz/corpus/);
# what it learns goes to build/fuzz/work-*, not into the repository.
fuzz: $(FUZZ_BINS)
	@set -e; for t in $(FUZZ); do \
	    mkdir -p build/fuzz/work-$$t; \
	    if $(SAN_ENV) build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	        -timeout=10 -rss_limit_mb=1024 -artifact_prefix=build/fuzz/ \
	        build/fuzz/work-$$t \
	        tests/fuzz/corpus/$$t > build/fuzz/$$t.log 2>&1; then \
	        echo "fuzz_$$t: $$(grep '^Done' build/fuzz/$$t.log), 0 crashes"; \
	    else tail -40 build/fuzz/$$t.log; exit 1; fi; \
	done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=5

# Static analysis under the checked-in configurations (.clang-tidy,
# tests/cppcheck.supp); any finding fails.
lint: test-deps build/probe.h
	cppcheck --enable=warning,style,performance,portability --std=c11 \
	    --inline-suppr --quiet --error-exitcode=1 \
	    --suppressions-list=tests/cppcheck.supp -D_GNU_SOURCE \
	    -DHAVE_SYSTEMD -Isrc -Ibuild src/*.c
	clang-tidy --quiet src/*.c -- -std=c11 -D_GNU_SOURCE -DHAVE_SYSTEMD \
	    -Ibuild $(PKG_CFLAGS)

# The long reliability runs (about 15 minutes): 3 x 2,000 racing writes
# per writer; `limpeza once` in a tight loop beside the API's writer, 10
# rounds of 3 x 2,000 writes; 100 SIGKILLs mid-rewrite and 100 while the
# write lease is held.
stress: all test-deps
	STRESS_WRITES=2000 STRESS_ROUNDS=3 CRASH_KILLS=100 \
	    STRESS_ONCE_WRITES=2000 STRESS_ONCE_ROUNDS=10 \
	    LIMPEZA_BIN=$(CURDIR)/build/limpeza $(PYTHON) -m pytest -q -s \
	    tests/integration/test_reliability.py \
	    -k "racing or sigkill or tight or old_file"

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: build/limpeza build/tests/cache_driver test-deps
	LIMPEZA_BIN=$(CURDIR)/build/limpeza $(PYTHON) -m pytest -q tests/integration

asan-unit: $(ASAN_UNIT_BINS)
	@set -e; for t in $(ASAN_UNIT_BINS); do echo "== $$t"; $(SAN_ENV) $$t; done

asan-integration: build/asan/limpeza build/asan/tests/cache_driver test-deps
	$(SAN_ENV) LIMPEZA_BIN=$(CURDIR)/build/asan/limpeza LIMPEZA_SANITIZED=1 \
	    $(PYTHON) -m pytest -q tests/integration

asan: asan-unit asan-integration

# For tests/mutants/run.py: the environment the sanitizer tests run with.
print-san-env:
	@echo $(SAN_ENV)

# Each mutation of tests/mutants/mutants.toml, one at a time, in a copy of
# the tree: the tests named for it must fail. make test runs the entries
# marked fast; the whole list takes about MUTANTS_MINUTES minutes.
mutants: test-deps
	$(PYTHON) tests/mutants/run.py

mutants-fast: test-deps
	$(PYTHON) tests/mutants/run.py --fast

# The Prometheus alerting rules: valid, and each alert's unit tests
# (fires past its threshold, not just under it).
.PHONY: prom-test
prom-test: test-deps
	promtool check rules etc/prometheus/limpeza-rules.yml
	promtool test rules tests/prometheus/limpeza-rules.test.yml

# The build, unit and integration tests again in a Debian 13 (trixie) root
# made with mmdebstrap and kept in build/trixie (scripts/trixie.sh).
.PHONY: trixie
trixie: test-deps
	TRIXIE_PYTEST="$(TRIXIE_PYTEST)" sh scripts/trixie.sh

# Everything: the checks, then the Debian 12 run (unit, integration: real
# files, SQLite, PostgreSQL, HTTP, the daemon end to end; both again under
# ASan and UBSan; fuzzing, mutants, the package) and, beside it, the
# Debian 13 run in its root (make trixie, its output in
# build/trixie/trixie.log): the two share the machine, as a busy server
# would, and CI waits for the longer one only.
test: test-deps
	$(MAKE) format-check
	$(MAKE) lint
	$(MAKE) prom-test
	$(MAKE) -j2 test-debian12 trixie

.PHONY: test-debian12
test-debian12: test-deps
	$(MAKE) -j1 all
	$(MAKE) -j1 nosd
	$(MAKE) -j1 m32
	$(MAKE) -j1 unit
	$(MAKE) -j1 integration
	$(MAKE) -j1 asan
	$(MAKE) -j1 fuzz-smoke
	$(MAKE) -j1 mutants-fast
	$(MAKE) -j1 deb-test

# Benchmarks print figures; they are not tests and make test does not run them.
bench: all test-deps
	$(PYTHON) bench/run.py

# The month of scans alone: the API's own costs, limpeza against the old cleaner.
bench-month: all test-deps
	$(PYTHON) bench/run.py --month

# The Debian package, build/limpeza_<version>_<arch>.deb (debian/), built
# from a copy of the tree; DEB_VERSION=... builds that version instead.
deb:
	sh scripts/deb.sh $(DEB_VERSION)

# The package checked, then installed, upgraded, removed and purged in a
# fresh Debian 12 root (tests/deb/test_deb.sh; the root is cached under
# build/).
deb-test: test-deps deb
	sh tests/deb/test_deb.sh

demo: all
	@sh scripts/deps.sh test
	sh scripts/demo.sh

install: build/limpeza build/limpeza.8
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0755 build/limpeza $(DESTDIR)$(PREFIX)/sbin/limpeza
	install -m 0644 build/limpeza.8 $(DESTDIR)$(PREFIX)/share/man/man8/limpeza.8

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/limpeza
	rm -f $(DESTDIR)$(PREFIX)/share/man/man8/limpeza.8

FORMATTED = src/*.c src/*.h tests/unit/*.c tests/unit/*.h

format:
	clang-format -i $(FORMATTED)

format-check: test-deps
	clang-format --dry-run -Werror $(FORMATTED)

clean:
	rm -rf build demo
