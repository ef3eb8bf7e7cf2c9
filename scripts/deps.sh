#!/bin/sh
# Installs the Debian packages limpeza needs to build, test or demo.
# Usage: scripts/deps.sh [build|test|all]   (default: all)
set -eu

build_pkgs="build-essential pkg-config libsqlite3-dev libcurl4-openssl-dev libjansson-dev libpq-dev libsystemd-dev libmicrohttpd-dev"
test_pkgs="libcmocka-dev libcurl3-gnutls sqlite3 python3 python3-pytest python3-psycopg2 postgresql-15 clang-format man-db systemd shellcheck python3-prometheus-client logrotate openssl clang libclang-rt-14-dev valgrind cppcheck clang-tidy time pgbouncer strace"

# The 32-bit build that make test runs (Debian's i386 architecture).
# qemu-user runs it where the kernel cannot exec i386 binaries.
m32_pkgs="gcc-multilib qemu-user libjansson-dev:i386 libsqlite3-dev:i386 libcurl4-openssl-dev:i386"

case "${1:-all}" in
build) want="$build_pkgs" ;;
test | all) want="$build_pkgs $test_pkgs $m32_pkgs" ;;
*)
	echo "usage: $0 [build|test|all]" >&2
	exit 2
	;;
esac

missing=""
for p in $want; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "limpeza: missing Debian packages:$missing" >&2
	echo "limpeza: run as root: apt-get install$missing" >&2
	exit 1
fi
echo "limpeza: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
case "$missing" in
*:i386*)
	if ! dpkg --print-foreign-architectures | grep -qx i386; then
		dpkg --add-architecture i386
	fi
	;;
esac
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
