#!/usr/bin/env bash
# The fuzz suite: every test/fuzz/fuzz_*.c built with libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer (clang), each run for a
# bounded time on a copy of its seed corpus test/fuzz/corpus/<target>/.
# Fails on any crash, leak, undefined behaviour, timeout or broken property,
# and prints how to reproduce it.  Needs no server.
#
#   bash test/scripts/fuzz.sh                          every target, 15 s each
#   REGSTAGE_FUZZ_SECONDS=300 bash test/scripts/fuzz.sh fuzz_phone
#
# Builds under $REGSTAGE_TEST_DIR/fuzz (scripts/test.sh sets it), else in a
# new directory under /tmp that is removed when every target passed.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"

# One line per target: name | sources besides test/fuzz/<name>.c | libraries.
# Code under test is the product's own source file, never a copy.
TARGETS='
fuzz_phone        | pg_regstage/inputcheck.c                      |
fuzz_full_name    | pg_regstage/inputcheck.c                      |
fuzz_ids          | pg_regstage/inputcheck.c                      |
fuzz_tgfile       | pg_regstage/tgfile.c                          |
fuzz_s3_xml       | pg_regstage/s3_xml.c                          |
fuzz_relay_parse  | relay/telegram.c relay/log.c                   | -lcurl -ljansson -lpthread
fuzz_relay_scan   | relay/scan.c relay/log.c                       | -ljansson -lpthread
fuzz_relay_redact | relay/log.c                                   | -lpthread
fuzz_relay_http   | relay/http.c                                  |
'
SECONDS_EACH=${REGSTAGE_FUZZ_SECONDS:-15}

CLANG=${CLANG:-$(command -v clang-14 || command -v clang || true)}
if [ -z "$CLANG" ]; then
	echo "clang not found; install it: apt-get install -y clang libclang-rt-14-dev" >&2
	exit 1
fi
if [ -n "${REGSTAGE_TEST_DIR:-}" ]; then
	W=$REGSTAGE_TEST_DIR/fuzz
	rm -rf "$W"; mkdir -p "$W"
	KEEP=1
else
	W=$(mktemp -d /tmp/regstage-fuzz.XXXXXX)
	KEEP=
fi
mkdir -p "$W/bin" "$W/corpus" "$W/artifacts" "$W/log"
CFLAGS=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
	-Wall -Wno-unused-parameter -std=gnu11
	-I"$SRC/test/fuzz" -I"$SRC/pg_regstage" -I"$SRC/relay" -I"$($PG_CONFIG --includedir)")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

declare -A SOURCES LIBS
while IFS='|' read -r name srcs libs; do
	read -r name <<<"$name"
	[ -n "$name" ] || continue
	SOURCES[$name]=$srcs LIBS[$name]=$libs
done <<<"$TARGETS"

if [ $# -gt 0 ]; then
	names=("$@")
else
	names=()
	for f in "$SRC"/test/fuzz/fuzz_*.c; do names+=("$(basename "$f" .c)"); done
fi

failed=0
for name in "${names[@]}"; do
	if [ ! -f "$SRC/test/fuzz/$name.c" ]; then
		echo "FAIL $name: no test/fuzz/$name.c" >&2; failed=1; continue
	fi
	if [ -z "${SOURCES[$name]+set}" ]; then
		echo "FAIL $name: add a line for it to the table at the top of test/scripts/fuzz.sh" >&2
		failed=1; continue
	fi
	read -r -a srcs <<<"${SOURCES[$name]}"
	read -r -a libs <<<"${LIBS[$name]}"
	build=(nice "$CLANG" "${CFLAGS[@]}" "$SRC/test/fuzz/$name.c" "${srcs[@]/#/$SRC/}" "${libs[@]}" -o "$W/bin/$name")
	if ! "${build[@]}" >"$W/log/$name.build" 2>&1; then
		cat "$W/log/$name.build" >&2
		echo "FAIL $name: does not build" >&2; failed=1; continue
	fi
	mkdir -p "$W/corpus/$name"
	[ -d "$SRC/test/fuzz/corpus/$name" ] && cp "$SRC/test/fuzz/corpus/$name"/* "$W/corpus/$name/"
	if nice "$W/bin/$name" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=512 \
		-artifact_prefix="$W/artifacts/$name-" "$W/corpus/$name" >"$W/log/$name.log" 2>&1; then
		runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$W/log/$name.log")
		printf 'ok   %-18s %s runs in %s s, %s corpus inputs\n' "$name" "${runs:-?}" "$SECONDS_EACH" \
			"$(ls "$W/corpus/$name" | wc -l)"
	else
		failed=1
		grep -E '^(==[0-9]+==ERROR|SUMMARY|property broken|.*runtime error)' "$W/log/$name.log" >&2 || true
		tail -40 "$W/log/$name.log" >&2
		echo "FAIL $name; full log: $W/log/$name.log" >&2
		for a in "$W/artifacts/$name-"*; do
			[ -e "$a" ] || continue
			echo "  reproducer: $a" >&2
			echo "  reproduce:  $W/bin/$name $a" >&2
		done
		echo "  rebuild:    ${build[*]:1}" >&2
	fi
done

if [ $failed -ne 0 ]; then
	echo "fuzz: failures above; binaries, logs and reproducers kept in $W" >&2
	exit 1
fi
[ -z "$KEEP" ] && rm -rf "$W"
exit 0
