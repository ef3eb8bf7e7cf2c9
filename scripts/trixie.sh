#!/bin/sh
# shellcheck disable=SC2016 # $1 in the hooks and inner shells is theirs
# Builds limpeza in a Debian 13 (trixie) root and runs its unit and
# integration tests there (`make trixie`). Run as root from the top of the
# tree. The root is made once with mmdebstrap from the mirror this host's
# apt uses and kept in build/trixie/root; each run copies in the working
# tree's tracked files (uncommitted changes too) and runs
# `make all unit integration` inside, with PostgreSQL 17 and PgBouncer as
# Debian 13 ships them. Everything goes to build/trixie/trixie.log; on
# failure its tail is shown. Times of each piece go to standard output.
# TRIXIE_PYTEST=ARGS runs only those integration tests (pytest ARGS).
set -eu

dir=build/trixie
root=$dir/root
log=$dir/trixie.log
suite=trixie

if [ "$(id -u)" -ne 0 ]; then
	echo "trixie: needs root (mmdebstrap --mode=root, chroot)" >&2
	exit 1
fi
mkdir -p "$dir"
: >"$log"

fail() {
	echo "trixie: $1; the end of $log:" >&2
	tail -60 "$log" >&2
	exit 1
}

# The Debian archive this host's apt reads (not its security archive).
mirror() {
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk 'BEGIN { RS = ""; FS = "\n" }
		{
			uri = ""; sec = 0
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^URIs:/) { split($i, w, " "); uri = w[2] }
				if ($i ~ /^Suites:/ && $i ~ /-security/) sec = 1
			}
			if (uri != "" && !sec) print uri
		}' "$f"
	done
	if [ -f /etc/apt/sources.list ]; then
		awk '$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) while ($i !~ /\]$/) i++
			if ($i ~ /^\[/ || $i ~ /\]$/) i++
			if ($(i + 1) !~ /-security/) print $i
		}' /etc/apt/sources.list
	fi
}

now() { date +%s; }
took() { echo "trixie: $1: $(($(now) - $2)) s"; }

# The root, once: Debian's apt variant, then what scripts/deps.sh installs
# there (Debian 13's names; no i386). Services never start in it; its
# mounts are in a namespace of its own, gone when it ends.
if [ ! -f "$root/.limpeza-ready" ]; then
	url=$(mirror | head -1)
	[ -n "$url" ] || fail "no Debian mirror in /etc/apt/sources.list*"
	t=$(now)
	rm -rf "$root"
	mkdir -p "$root"
	echo "trixie: making the Debian 13 root from $url" | tee -a "$log"
	unshare --mount --propagation private \
		mmdebstrap --mode=root --variant=apt --components=main \
		--customize-hook='printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d"' \
		--customize-hook='chmod 755 "$1/usr/sbin/policy-rc.d"' \
		--customize-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d"' \
		--customize-hook='echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/limpeza.conf"' \
		--customize-hook='copy-in scripts/deps.sh /root' \
		--customize-hook='chroot "$1" env LIMPEZA_NO_M32=1 sh /root/deps.sh test' \
		"$suite" "$root" "$url" >>"$log" 2>&1 || fail "mmdebstrap failed"
	touch "$root/.limpeza-ready"
	took "bootstrap" "$t"
fi

# The working tree's files as they are now: tracked ones, and new ones
# not yet added (not those .gitignore names, such as build/). A copy
# without git (tests/mutants/run.py's) is taken whole but for build/.
files() {
	if [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ]; then
		git ls-files -z --cached --others --exclude-standard
	else
		find . -path ./build -prune -o -path ./demo -prune -o -type f -print0
	fi
}
t=$(now)
rm -rf "$root/limpeza"
find "$root/tmp" -mindepth 1 -delete
mkdir -p "$root/limpeza"
files | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
	tar --null -T - -cf - | tar -C "$root/limpeza" -xf -

# In its own mount and PID namespaces: the mounts and every process the
# tests leave behind go when the run ends, whatever way it ends.
run() {
	unshare --mount --pid --fork --propagation private sh -eu -c '
		r=$1; shift
		mount -t proc proc "$r/proc"
		mount -t sysfs sysfs "$r/sys"
		mount --rbind /dev "$r/dev"
		mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
		exec chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
			HOME=/root LANG=C.UTF-8 CI="$CI" LIMPEZA_NO_M32=1 \
			sh -c "cd /limpeza && $*"
	' sh "$root" "$@"
}
export CI="${CI:-}"

echo "== Debian $(cat "$root/etc/debian_version")" >>"$log"
run "LIMPEZA_NO_M32=1 sh scripts/deps.sh test" >>"$log" 2>&1 ||
	fail "installing the packages failed"
run "make all" >>"$log" 2>&1 || fail "make all failed"
took "build" "$t"
t=$(now)
run "make unit" >>"$log" 2>&1 || fail "make unit failed"
took "unit" "$t"
t=$(now)
if [ -n "${TRIXIE_PYTEST:-}" ]; then
	run "make -s build/limpeza build/tests/cache_driver &&
		LIMPEZA_BIN=/limpeza/build/limpeza python3 -m pytest -q $TRIXIE_PYTEST" \
		>>"$log" 2>&1 || fail "pytest $TRIXIE_PYTEST failed"
else
	# The 32-bit build is the Debian 12 run's (make m32): no i386 here.
	m32=tests/integration/test_build.py::test_32_bit_build_sends_alerts_and_stats
	run "PYTEST_ADDOPTS=--deselect=$m32 make integration" >>"$log" 2>&1 ||
		fail "make integration failed"
fi
took "integration" "$t"
tail -1 "$log"
