#!/bin/sh
# shellcheck disable=SC2016 # dpkg-query's formats, inner scripts: $ is theirs
# test_deb.sh (make deb-test): the package in a fresh Debian 12 root.
# A minimal bookworm root (mmdebstrap, Debian's packages from the mirror
# the host's apt uses) gets build/limpeza_<version>_<arch>.deb with
# `apt-get install ./…`, which must pull in every dependency; limpeza must
# then load libpq, libcurl and libmicrohttpd and work on a SQLite store
# there; a higher version is installed over it with the settings file
# edited (kept) and the logrotate file not (upgraded); then the package is
# removed (its conffiles stay) and purged (nothing of it stays).
# Needs root. The root's tarball is cached as build/deb/bookworm.tar; a
# fresh clone builds it anew. Usage: sh tests/deb/test_deb.sh
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
work=$top/build/deb
root=$work/root
log=$work/test.log
# DEB_ROOT_TAR: another cached root (make mutants' copies of the tree).
tarball=${DEB_ROOT_TAR:-$work/bookworm.tar}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
v1=$(dpkg-parsechangelog -S Version)
v2=$v1+upgrade1
unit=desfollow-limpeza-3min.service
settings=/etc/default/desfollow-limpeza
rotate=/etc/logrotate.d/desfollow-limpeza

if [ "$(id -u)" -ne 0 ]; then
	echo "test_deb.sh: must run as root (mmdebstrap --mode=root, chroot)" >&2
	exit 1
fi
mkdir -p "$work"
: >"$log"
checks=0

say() { printf '%s\n' "$*" | tee -a "$log"; }

# A section's heading, with the seconds since the start (for the record).
start=$(date +%s)
section() { say "== [$(($(date +%s) - start)) s] $*"; }

fail() {
	printf 'test_deb.sh: FAIL: %s\n' "$*" >&2
	printf 'FAIL: %s\n' "$*" >>"$log"
	echo "test_deb.sh: the last lines of $log:" >&2
	tail -n 30 "$log" >&2
	exit 1
}

ok() {
	checks=$((checks + 1))
	say "ok $checks - $*"
}

# in_root CMD...: runs CMD in the root, in a mount namespace of its own
# with /proc mounted: the mount ends with the namespace, whatever happens.
in_root() {
	env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
		DEBIAN_FRONTEND=noninteractive \
		unshare --mount --propagation private -- sh -c \
		'r=$1; shift; mount -t proc proc "$r/proc" && exec chroot "$r" "$@"' \
		sh "$root" "$@"
}

# The host's apt sources files (deb822 or one-line), as they are: the
# root gets the mirror the host uses, read now, never written down here.
sources=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
	/etc/apt/sources.list.d/*.sources; do
	[ -f "$f" ] && grep -Eq '^[[:space:]]*(deb[[:space:]]|URIs:)' "$f" &&
		sources="$sources $f"
done
[ -n "$sources" ] || fail "no apt sources on this host to take the mirror from"

if [ ! -s "$tarball" ]; then
	section "mmdebstrap: a minimal bookworm root (variant apt) from$sources"
	# The apt lists stay, so that apt-get install can resolve Depends.
	# shellcheck disable=SC2086 # the list of sources files
	mmdebstrap --mode=root --variant=apt --skip=cleanup/apt/lists \
		bookworm "$work/bookworm.tmp.tar" $sources >>"$log" 2>&1 ||
		fail "mmdebstrap could not make the root"
	mv "$work/bookworm.tmp.tar" "$tarball"
fi

shellcheck scripts/deb.sh tests/deb/test_deb.sh debian/dlopen-depends debian/limpeza.postrm \
	>>"$log" 2>&1 || fail "shellcheck: the packaging's scripts"

section "the packages: $v1 and $v2 (the conffiles changed)"
[ -f "build/limpeza_${v1}_$arch.deb" ] || sh scripts/deb.sh >>"$log" 2>&1 ||
	fail "make deb failed"
lintian --fail-on error,warning "build/limpeza_${v1}_$arch.deb" >>"$log" 2>&1 ||
	fail "lintian reports an error or a warning"
ok "lintian: no error, no warning"
DEB_TEST_MARK=1 sh scripts/deb.sh "$v2" >>"$log" 2>&1 || fail "make deb DEB_VERSION=$v2 failed"
sonames=$(sed -n 's/^#define [A-Z]*_SONAME "\(.*\)"$/\1/p' build/deb/src/limpeza/build/probe.h)
[ "$(echo "$sonames" | wc -l)" -eq 3 ] || fail "no three sonames in probe.h: $sonames"

rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
cp "build/limpeza_${v1}_$arch.deb" "build/limpeza_${v2}_$arch.deb" "$root/root/"

# Every file and directory of the root, with its type and mode: what the
# package leaves behind is what the list after purge has more.
snapshot() {
	(cd "$root" && find . -xdev \( -path ./proc -o -path ./tmp -o -path ./root \
		-o -path ./var/lib/dpkg -o -path ./var/cache/apt -o -path ./var/lib/apt \
		-o -path ./var/log/apt \) -prune -o -printf '%y %m %p\n') | sort
}
snapshot >"$work/before.txt"
for lib in $sonames; do
	if in_root ldconfig -p | grep -q "^[[:space:]]*$lib "; then
		fail "$lib is already in the fresh root: the test would prove nothing"
	fi
done

# A cached root's package lists may name versions the mirror no longer
# has (a point release, a security update): they are refreshed first.
if [ -n "$(find "$tarball" -mmin +720)" ]; then
	section "apt-get update (the cached root is older than 12 hours)"
	in_root apt-get update -q >>"$log" 2>&1 || fail "apt-get update failed in the root"
fi

# Without Recommends: only Depends may bring what limpeza needs.
section "apt-get install --no-install-recommends ./limpeza_${v1}_$arch.deb"
in_root sh -c "cd /root && apt-get install -y --no-install-recommends ./limpeza_${v1}_$arch.deb" >>"$log" 2>&1 ||
	fail "apt-get install ./limpeza_${v1}_$arch.deb failed"
[ "$(in_root dpkg-query -W -f='${Status} ${Version}' limpeza)" = "install ok installed $v1" ] ||
	fail "limpeza $v1 is not installed"
in_root apt-get check >>"$log" 2>&1 || fail "apt-get check: broken dependencies"
ok "apt-get install pulled in every dependency"

for lib in $sonames; do
	in_root ldconfig -p | grep -q "^[[:space:]]*$lib " ||
		fail "$lib, which limpeza dlopen()s, is not in the root: a dependency is missing"
done
ok "every soname limpeza dlopen()s is there: $(echo "$sonames" | tr '\n' ' ')"

for f in /usr/sbin/limpeza /usr/share/man/man8/limpeza.8.gz "/lib/systemd/system/$unit" \
	$settings $rotate /usr/share/limpeza/configurar_limpeza_3_minutos.sh \
	/usr/share/limpeza/limpar_jobs_rapido.sh /usr/share/limpeza/testar_limpeza_3_minutos.sh; do
	[ -f "$root$f" ] || fail "$f is not installed"
done
[ "$(stat -c %a "$root$settings")" = 600 ] || fail "$settings is not mode 600"
conffiles=$(in_root dpkg-query -W -f='${Conffiles}' limpeza)
for f in $settings $rotate; do
	echo "$conffiles" | grep -q "^ $f " || fail "$f is not a conffile: $conffiles"
done
grep -q "^ExecStart=/usr/sbin/limpeza run --env-file $settings\$" "$root/lib/systemd/system/$unit" ||
	fail "the unit does not run /usr/sbin/limpeza with --env-file $settings"
ok "binary, man page, unit, scripts, logrotate file; $settings is a conffile, mode 600, read by the unit"

# No systemd runs in a chroot: the postinst enables the unit (the
# symlink deb-systemd-helper makes) and leaves starting it to a boot.
[ "$(readlink "$root/etc/systemd/system/multi-user.target.wants/$unit")" = "/lib/systemd/system/$unit" ] ||
	fail "$unit is not enabled (no multi-user.target.wants symlink)"
in_root env DPKG_MAINTSCRIPT_PACKAGE=limpeza deb-systemd-helper --quiet is-enabled "$unit" ||
	fail "deb-systemd-helper: $unit is not enabled"
ok "$unit is enabled"

# A SQLite job store and a cache file in the root, each with a stale and
# a fresh running job, and settings in the packaged settings file.
mkdir -p "$root/srv/limpeza-test"
db=/srv/limpeza-test/jobs.db
cache=/srv/limpeza-test/desfollow_jobs.json
sqlite3 "$root$db" <tests/fixtures/scans_sqlite.sql
sqlite3 "$root$db" <<SQL
INSERT INTO scans (username, job_id, status, created_at, updated_at) VALUES
 ('ana', 'db-stale', 'running', datetime('now','-15 minutes'), datetime('now','-10 minutes')),
 ('bia', 'db-fresh', 'running', datetime('now','-1 minutes'), datetime('now'));
SQL
now=$(date +%s)
printf '{"cache-stale": {"status": "running", "start_time": %s}, "cache-fresh": {"status": "running", "start_time": %s}}\n' \
	$((now - 900)) "$now" >"$root$cache"
cat >>"$root$settings" <<EOF
# edited by test_deb.sh
DATABASE_URL=sqlite:///$db
LIMPEZA_CACHE_FILE=$cache
LIMPEZA_HEALTH_URL=
EOF

in_root limpeza check --env-file $settings >>"$log" 2>&1 || fail "limpeza check failed in the root"
ok "limpeza check passes on the SQLite store and the cache file"
# As the unit runs it: the settings file, the default log file.
in_root limpeza once --env-file $settings >>"$log" 2>&1 || fail "limpeza once failed in the root"
[ "$(sqlite3 "$root$db" "SELECT group_concat(job_id || '=' || status, ' ') FROM (SELECT * FROM scans ORDER BY job_id)")" = \
	"db-fresh=running db-stale=error" ] || fail "limpeza once did not reap exactly the stale row"
python3 - "$root$cache" <<'PY' || fail "limpeza once did not reap exactly the stale cache job"
import json, sys
assert list(json.load(open(sys.argv[1]))) == ["cache-fresh"]
PY
[ -s "$root/var/log/desfollow/limpeza_3min.log" ] || fail "limpeza once wrote no /var/log/desfollow/limpeza_3min.log"
ok "limpeza once reaped the stale row and cache job, kept the fresh ones, logged"

# The libraries it dlopen()s, really loaded: each one's own error for a
# closed port (a missing one would say "cannot load …").
out=$(in_root limpeza check --env-files= --cache-file= --health-url= \
	--database-url=postgresql://limpeza@127.0.0.1:1/none 2>&1) && fail "check passed on a closed port"
echo "$out" >>"$log"
echo "$out" | grep -q "cannot connect: connection to server at \"127.0.0.1\", port 1 failed" ||
	fail "libpq was not loaded: $(echo "$out" | grep -i -m1 'fail\|cannot')"
ok "libpq is loaded (its own 'connection refused')"
out=$(in_root limpeza once --env-files= --cache-file= --log-file= \
	--health-url=http://127.0.0.1:1/api/health 2>&1) && fail "once passed on a closed health port"
echo "$out" >>"$log"
echo "$out" | grep -q "Couldn't connect to server" ||
	fail "libcurl was not loaded: $(echo "$out" | grep -m1 'ERROR')"
ok "libcurl is loaded (its own 'Couldn't connect to server')"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The daemon writes its own pid (the pid namespace is the host's), so
# that it, not only the shell around it, is stopped, whatever happens.
pidfile=$root/tmp/limpeza-test.pid
stop_daemon() {
	if [ -s "$pidfile" ]; then
		kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
		rm -f "$pidfile"
	fi
}
trap stop_daemon EXIT
in_root sh -c 'echo $$ >/tmp/limpeza-test.pid && exec limpeza run --env-files= \
	--cache-file= --health-url= --log-file= --metrics-addr="127.0.0.1:$1"' sh "$port" \
	>>"$log" 2>&1 &
job=$!
while [ ! -s "$pidfile" ] && kill -0 "$job" 2>/dev/null; do
	sleep 0.1
done
got=$(python3 - "$port" <<'PY'
import sys, time, urllib.request
# A deadline to give up by, not a timing assertion.
end = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5) as r:
            print(r.status, "limpeza_" in r.read().decode())
        break
    except OSError:
        if time.monotonic() > end:
            print("unreachable")
            break
        time.sleep(0.2)
PY
)
stop_daemon
wait "$job" || fail "the daemon did not stop cleanly on SIGTERM"
[ "$got" = "200 True" ] || fail "libmicrohttpd was not loaded: /metrics answered '$got'"
ok "libmicrohttpd is loaded (/metrics answers 200)"

in_root /usr/share/limpeza/limpar_jobs_rapido.sh --health-url "" >>"$log" 2>&1 ||
	fail "/usr/share/limpeza/limpar_jobs_rapido.sh failed"
in_root /usr/share/limpeza/configurar_limpeza_3_minutos.sh >>"$log" 2>&1 ||
	fail "/usr/share/limpeza/configurar_limpeza_3_minutos.sh failed"
ok "the packaged operators' scripts run against the package"

section "upgrade: apt-get install ./limpeza_${v2}_$arch.deb ($settings edited)"
in_root sh -c "cd /root && apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confdef \
	-o Dpkg::Options::=--force-confold ./limpeza_${v2}_$arch.deb" </dev/null >>"$log" 2>&1 ||
	fail "the upgrade to $v2 failed"
[ "$(in_root dpkg-query -W -f='${Status} ${Version}' limpeza)" = "install ok installed $v2" ] ||
	fail "limpeza $v2 is not installed"
grep -q '^# edited by test_deb.sh$' "$root$settings" || fail "the upgrade lost the edits of $settings"
grep -q "^# limpeza $v2\$" "$root$settings" && fail "the upgrade overwrote the edited $settings"
grep -q "^# limpeza $v2\$" "$root$settings.dpkg-dist" || fail "no $settings.dpkg-dist from $v2"
[ "$(stat -c %a "$root$settings")" = 600 ] || fail "$settings is no longer mode 600"
grep -q "^# limpeza $v2\$" "$root$rotate" || fail "the unedited $rotate was not upgraded"
[ -L "$root/etc/systemd/system/multi-user.target.wants/$unit" ] || fail "$unit is no longer enabled"
in_root limpeza check --env-file $settings >>"$log" 2>&1 || fail "limpeza check failed after the upgrade"
ok "upgraded to $v2: the edited $settings kept, the unedited $rotate upgraded, still enabled"

section "apt-get remove limpeza"
in_root apt-get remove -y limpeza >>"$log" 2>&1 || fail "apt-get remove failed"
[ "$(in_root dpkg-query -W -f='${Status}' limpeza)" = "deinstall ok config-files" ] ||
	fail "limpeza is not removed with its conffiles kept"
[ -e "$root/usr/sbin/limpeza" ] && fail "/usr/sbin/limpeza is still there after remove"
grep -q '^# edited by test_deb.sh$' "$root$settings" || fail "remove lost $settings"
[ -f "$root$rotate" ] || fail "remove lost $rotate"
ok "removed: the binary gone, the conffiles kept"

section "apt-get purge limpeza"
rm -rf "$root/srv/limpeza-test"
in_root apt-get purge -y limpeza >>"$log" 2>&1 || fail "apt-get purge failed"
status=$(in_root dpkg-query -W -f='${Status}' limpeza 2>/dev/null || true)
case "$status" in
"" | "unknown ok not-installed") ;;
*) fail "limpeza is still known to dpkg after purge: $status" ;;
esac
snapshot >"$work/after.txt"
# What policy keeps after a purge, besides dpkg's and apt's own records
# (pruned from both lists): the packages limpeza pulled in, which stay
# installed (apt-get autoremove is the operator's call), with their files
# and what their maintainer scripts made (ldconfig's cache), and dpkg's
# log. Every new
# path must belong to one of them; limpeza's files, its conffiles, their
# .dpkg-dist, its log and its unit's enablement symlink must all be gone.
in_root sh -c 'dpkg-query -W -f="\${Package}\n" | xargs dpkg-query -L' >"$work/owned.txt" 2>>"$log" ||
	fail "dpkg-query -L failed"
python3 - "$work/before.txt" "$work/after.txt" "$work/owned.txt" >"$work/left.txt" <<'PY'
import sys
def paths(name):
    return {line.rstrip("\n").split(" ", 2)[2][1:] or "/" for line in open(name)}
new = paths(sys.argv[2]) - paths(sys.argv[1])
owned = set()
for line in open(sys.argv[3]):
    p = line.rstrip("\n")
    owned.add(p)
    # usrmerge: dpkg may know /usr/lib/x as /lib/x (and /bin, /sbin).
    for d in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if p.startswith(d):
            owned.add("/usr" + p)
kept = {"/etc/ld.so.cache", "/var/cache/ldconfig/aux-cache", "/var/log/dpkg.log",
        "/var/log/alternatives.log"}
for p in sorted(new - owned - kept):
    print(p)
print("%d new paths" % len(new), file=sys.stderr)
PY
if [ -s "$work/left.txt" ]; then
	cat "$work/left.txt" >>"$log"
	fail "purge left $(wc -l <"$work/left.txt") paths no package owns: $(head -n 5 "$work/left.txt" | tr '\n' ' ')"
fi
for gone in /usr/sbin/limpeza $settings $settings.dpkg-dist $rotate /var/log/desfollow \
	"/etc/systemd/system/multi-user.target.wants/$unit" /usr/share/limpeza; do
	if [ -e "$root$gone" ] || [ -L "$root$gone" ]; then
		fail "purge left $gone"
	fi
done
ok "purged: nothing of limpeza is left, only its dependencies"

rm -rf "$root"
say "test_deb.sh: all $checks checks passed in $(($(date +%s) - start)) s"
