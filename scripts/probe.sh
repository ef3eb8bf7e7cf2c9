#!/bin/sh
# probe.sh: checks the libraries limpeza is built against and writes, to
# standard output, the header build/probe.h: the soname of the library the
# linker picks for -lpq, -lcurl and -lmicrohttpd, which limpeza dlopen()s.
# Usage: CC=cc FLAGS="$(CFLAGS) $(LDFLAGS)" sh scripts/probe.sh > build/probe.h
# OPTIONAL="pq microhttpd" lets a library be missing for the target (the
# 32-bit build has no libpq): limpeza then says it cannot load it, if asked.
set -eu

CC=${CC:-cc}
FLAGS=${FLAGS:-}
OPTIONAL=${OPTIONAL:-}

optional() {
	case " $OPTIONAL " in
	*" $1 "*) return 0 ;;
	esac
	return 1
}

fail() {
	echo "limpeza: $*" >&2
	exit 1
}

# need PKG MIN WHY: the build stops with one clear line if PKG is older.
need() {
	if ! have=$(pkg-config --modversion "$1" 2>/dev/null); then
		optional "${1#lib}" && return 0
		fail "$1 not found by pkg-config (sh scripts/deps.sh build installs it)"
	fi
	pkg-config --atleast-version="$2" "$1" ||
		fail "$1 $have is too old: $2 or later is needed ($3)"
}

need jansson 2.14 "json_object_getn"
need libcurl 7.85 "CURLOPT_PROTOCOLS_STR"
need libmicrohttpd 0.9.71 "enum MHD_Result"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo 'int main(void) { return 0; }' >"$tmp/t.c"

# soname PKG LIB: links a program with -lLIB as the build would (the same
# compiler, flags and pkg-config directories), asks the linker which file
# it took (--trace), and prints that file's SONAME.
soname() {
	if optional "$2" && ! pkg-config --exists "$1"; then
		echo "(no lib$2 for this build)"
		return 0
	fi
	# shellcheck disable=SC2046,SC2086 # FLAGS and pkg-config's output are words
	trace=$($CC $FLAGS -o "$tmp/t" "$tmp/t.c" $(pkg-config --libs-only-L "$1") \
		-Wl,--no-as-needed -Wl,--trace -l"$2" 2>&1) ||
		fail "cannot link a program with -l$2: $trace"
	file=$(printf '%s\n' "$trace" | grep -o "/[^ ()]*/lib$2\.so[^ ()]*" | tail -n 1)
	[ -n "$file" ] || fail "the linker did not say which file -l$2 is"
	name=$(objdump -p "$file" | awk '$1 == "SONAME" { print $2 }')
	[ -n "$name" ] || fail "$file has no SONAME"
	echo "$name"
}

# curl_url_get() takes a const CURLU * from libcurl 8 on: libs.c defines
# it with the prototype of the header it is compiled with.
# shellcheck disable=SC2046,SC2086 # FLAGS and pkg-config's output are words
if printf '%s\n' '#include <curl/curl.h>' \
	'CURLUcode curl_url_get(const CURLU *, CURLUPart, char **, unsigned int);' |
	$CC $FLAGS $(pkg-config --cflags libcurl) -x c -fsyntax-only - 2>/dev/null; then
	urlget=const
else
	urlget=
fi

pq=$(soname libpq pq)
curl=$(soname libcurl curl)
mhd=$(soname libmicrohttpd microhttpd)
cat <<HEADER
/* probe.h: written by scripts/probe.sh; the libraries limpeza loads. */
#define PQ_SONAME "$pq"
#define CURL_SONAME "$curl"
#define MHD_SONAME "$mhd"
#define CURL_URL_GET_CONST $urlget
HEADER
