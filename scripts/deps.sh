#!/bin/sh
# Installs the Debian packages limpeza needs to build, test or demo.
# Usage: scripts/deps.sh [build|deb|test|all]   (default: all)
set -eu

# Names that differ between the releases tested: Debian 12 (bookworm) and
# Debian 13 (trixie, see scripts/trixie.sh). Each has one PostgreSQL and
# one clang; trixie's 64-bit time_t transition renamed libcurl3-gnutls.
codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
case "$codename" in
trixie) pg=17 clang_rt=19 curl_gnutls=libcurl3t64-gnutls ;;
*) pg=15 clang_rt=14 curl_gnutls=libcurl3-gnutls ;;
esac

build_pkgs="build-essential pkg-config libsqlite3-dev libcurl4-openssl-dev libjansson-dev libpq-dev libsystemd-dev libmicrohttpd-dev"
test_pkgs="libcmocka-dev $curl_gnutls sqlite3 python3 python3-pytest python3-psycopg2 postgresql-$pg clang-format man-db systemd shellcheck python3-prometheus-client logrotate openssl clang libclang-rt-$clang_rt-dev valgrind cppcheck clang-tidy time pgbouncer curl ca-certificates prometheus strace debhelper lintian mmdebstrap debian-archive-keyring"

# The 32-bit build that make test runs (Debian's i386 architecture);
# qemu-user runs it where the kernel cannot exec i386 binaries.
# LIMPEZA_NO_M32=1 leaves it out (the Debian 13 root builds no m32).
m32_pkgs="gcc-multilib qemu-user libjansson-dev:i386 libsqlite3-dev:i386 libcurl4-openssl-dev:i386"
[ "${LIMPEZA_NO_M32:-0}" = 1 ] && m32_pkgs=""

case "${1:-all}" in
build) want="$build_pkgs" ;;
# make deb on a server: the build's packages and debhelper, no test tools.
deb) want="$build_pkgs debhelper" ;;
test | all) want="$build_pkgs $test_pkgs $m32_pkgs" ;;
*)
	echo "usage: $0 [build|deb|test|all]" >&2
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
