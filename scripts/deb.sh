#!/bin/sh
# deb.sh: builds build/limpeza_<version>_amd64.deb from a copy of the tree
# (its tracked files and work not yet committed), so the tree stays clean.
# Usage: sh scripts/deb.sh [VERSION]
# VERSION (make deb DEB_VERSION=...) builds that version instead of
# debian/changelog's, with a changelog entry added in the copy only; the
# package test builds a higher one to upgrade to. DEB_TEST_MARK=1 adds a
# comment line to the copy's conffiles, so an upgrade has changes to
# bring (used by tests/deb/test_deb.sh only).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
want=${1:-}
sh scripts/deps.sh deb

changelog_version=$(dpkg-parsechangelog -S Version)
source_version=$(sed -n 's/^#define LIMPEZA_VERSION "\(.*\)"$/\1/p' src/limpeza.h)
# A native package: its version is the source's (limpeza --version).
if [ "$changelog_version" != "$source_version" ]; then
	echo "deb.sh: debian/changelog says $changelog_version," \
		"src/limpeza.h says $source_version" >&2
	exit 1
fi
version=${want:-$changelog_version}

work=build/deb/src
rm -rf "$work"
mkdir -p "$work/limpeza"
# The files of a fresh clone plus work not yet committed; a copy of the
# tree that is no git checkout (make mutants' copies): all but build/.
# shellcheck disable=SC2016 # $f is the inner shell's
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -co --exclude-standard -z
else
	find . \( -path ./build -o -path ./demo -o -name .git \) -prune -o -type f -print0
fi |
	xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh |
	xargs -0 cp --parents -t "$work/limpeza"
rm -rf "$work/limpeza/build"

if [ "$version" != "$changelog_version" ]; then
	{
		printf 'limpeza (%s) unstable; urgency=medium\n\n' "$version"
		printf '  * Built by make deb DEB_VERSION=%s.\n\n' "$version"
		printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -S Maintainer)" \
			"$(date -R)"
		cat debian/changelog
	} >"$work/limpeza/debian/changelog"
fi
if [ "${DEB_TEST_MARK:-0}" = 1 ]; then
	for f in etc/desfollow-limpeza.default etc/desfollow-limpeza.logrotate; do
		echo "# limpeza $version" >>"$work/limpeza/$f"
	done
fi

(cd "$work/limpeza" && dpkg-buildpackage -b -us -uc) >build/deb/build.log 2>&1 || {
	tail -n 40 build/deb/build.log
	echo "deb.sh: dpkg-buildpackage failed (build/deb/build.log)" >&2
	exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=limpeza_${version}_$arch.deb
mv "$work/$deb" "build/$deb"
rm -f "$work"/*.buildinfo "$work"/*.changes "$work"/*.deb
echo "build/$deb"
