#!/bin/sh
# configurar_limpeza_3_minutos.sh: installs limpeza as desfollow-limpeza-3min.service.
# Idempotent: a second run changes nothing. See --help.
set -eu

usage() {
	cat <<USAGE
usage: $0 [--root DIR] [--prefix DIR] [--user NAME] [--no-start]
       $0 --uninstall [--root DIR] [--prefix DIR]

Installs the Debian build dependencies, builds limpeza, installs the binary,
the man page, the systemd unit, the logrotate file and /etc/default settings,
creates /var/log/desfollow, runs 'limpeza check', then enables and starts
desfollow-limpeza-3min.service and shows its status. Run from the limpeza
package (/usr/share/limpeza), it only checks the settings and (re)starts
the service: the package has installed the rest.

  --root DIR     install under DIR (a staged tree); systemd is left alone
  --prefix DIR   where the binary and man page go (default /usr/local)
  --user NAME    run the service as NAME (default: the owner of the cache
                 file, else root; /tmp is sticky, so only the file's owner
                 may replace it)
  --no-start     install and enable nothing in systemd
  --uninstall    stop and disable the service and remove what was installed
USAGE
}

root=""
prefix=/usr/local
start=1
uninstall=0
user=""
while [ $# -gt 0 ]; do
	case "$1" in
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--root=*) root=${1#--root=}; shift ;;
	--prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
	--prefix=*) prefix=${1#--prefix=}; shift ;;
	--user) user=${2:?--user needs a name}; shift 2 ;;
	--user=*) user=${1#--user=}; shift ;;
	--no-start) start=0; shift ;;
	--uninstall) uninstall=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "$0: unknown option '$1'; see --help" >&2; exit 2 ;;
	esac
done

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
	echo "$0: must be run as root (sudo $0), or staged with --root DIR" >&2
	exit 1
fi

src=$(cd "$(dirname "$0")" && pwd)
unit_name=desfollow-limpeza-3min.service

# Installed by the limpeza package (/usr/share/limpeza, no source tree
# beside it): dpkg owns the files and has enabled the unit; this only
# checks the settings and starts the service.
if [ ! -f "$src/Makefile" ]; then
	if [ "$uninstall" -eq 1 ]; then
		echo "$0: limpeza is installed by its package: apt-get remove limpeza" >&2
		exit 1
	fi
	defaults=/etc/default/desfollow-limpeza
	say() { printf '%s\n' "$*"; }
	say "==> limpeza check (installed by the limpeza package)"
	if /usr/sbin/limpeza check --env-file "$defaults"; then
		say "  configuration usable"
	else
		say "  WARNING: limpeza check found problems (above); edit $defaults"
	fi
	if [ -d /run/systemd/system ] && [ "$start" -eq 1 ]; then
		say "==> systemd"
		systemctl enable "$unit_name"
		systemctl restart "$unit_name"
		systemctl --no-pager status "$unit_name" || true
		say "Logs: journalctl -u ${unit_name%.service} -f"
	else
		say "==> systemd left alone (--no-start, or no running systemd)"
	fi
	say "==> Done"
	exit 0
fi
bin=$root$prefix/sbin/limpeza
man=$root$prefix/share/man/man8/limpeza.8
unit=$root/etc/systemd/system/$unit_name
logrotate=$root/etc/logrotate.d/desfollow-limpeza
defaults=$root/etc/default/desfollow-limpeza
logdir=$root/var/log/desfollow
cache=/tmp/desfollow_jobs.json

use_systemd=0
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
	use_systemd=1
fi

say() { printf '%s\n' "$*"; }

changed=0

# Copies $1 to $2 with mode $3 unless $2 already has that content and mode.
put() {
	if [ -f "$2" ] && cmp -s "$1" "$2" &&
		[ "$(stat -c %a "$2")" = "$3" ]; then
		say "  unchanged  $2"
	else
		install -D -m "$3" "$1" "$2"
		say "  installed  $2"
		changed=1
	fi
}

remove() {
	if [ -e "$1" ]; then
		rm -f "$1"
		say "  removed    $1"
	fi
}

if [ "$uninstall" -eq 1 ]; then
	say "==> Removing limpeza"
	if [ "$use_systemd" -eq 1 ]; then
		systemctl disable --now "$unit_name" 2>/dev/null || true
	fi
	remove "$unit"
	remove "$bin"
	remove "$man"
	remove "$logrotate"
	if [ -f "$defaults" ] && cmp -s "$src/etc/desfollow-limpeza.default" "$defaults"; then
		remove "$defaults"
	elif [ -f "$defaults" ]; then
		say "  kept       $defaults (it has your settings)"
	fi
	if [ -d "$logdir" ]; then
		if rmdir "$logdir" 2>/dev/null; then
			say "  removed    $logdir"
		else
			say "  kept       $logdir (it has logs)"
		fi
	fi
	if [ "$use_systemd" -eq 1 ]; then
		systemctl daemon-reload
	fi
	say "==> Done"
	exit 0
fi

say "==> Build dependencies (Debian packages)"
sh "$src/scripts/deps.sh" build

say "==> Building"
make -s -C "$src" all

if [ -z "$user" ]; then
	if [ -e "$cache" ]; then
		user=$(stat -c %U "$cache")
	else
		user=root
	fi
fi
group=$(id -gn "$user")

say "==> Installing (service user: $user:$group)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -e "s|@SBINDIR@|$prefix/sbin|" -e "s|@USER@|$user|" -e "s|@GROUP@|$group|" \
	"$src/etc/$unit_name" >"$tmp/$unit_name"
put "$src/build/limpeza" "$bin" 755
put "$src/build/limpeza.8" "$man" 644
put "$tmp/$unit_name" "$unit" 644
put "$src/etc/desfollow-limpeza.logrotate" "$logrotate" 644
if [ -f "$defaults" ]; then
	say "  unchanged  $defaults (yours: never overwritten)"
else
	put "$src/etc/desfollow-limpeza.default" "$defaults" 600
	# The service reads it itself (--env-file), as the service user.
	if [ "$(id -u)" -eq 0 ]; then
		chown "$user:$group" "$defaults"
	fi
fi
if [ -d "$logdir" ]; then
	say "  unchanged  $logdir"
else
	install -d -m 0750 "$logdir"
	say "  created    $logdir"
fi
if [ -z "$root" ]; then
	chown "$user:$group" "$logdir"
fi

say "==> limpeza check"
# The settings file as the service reads it (--env-file, see the unit),
# and as the user the service runs as: what root can read, it may not.
as_user=""
if [ "$(id -u)" -eq 0 ] && [ "$user" != root ]; then
	as_user="runuser -u $user --"
fi
if $as_user "$bin" check --env-file "$defaults"; then
	say "  configuration usable"
else
	say "  WARNING: limpeza check found problems (above); the service"
	say "  retries failing steps by itself, but look at them."
fi

if [ "$use_systemd" -eq 1 ] && [ "$start" -eq 1 ]; then
	say "==> systemd"
	systemctl daemon-reload
	systemctl enable "$unit_name"
	if [ "$changed" -eq 1 ]; then
		systemctl restart "$unit_name"
	else
		systemctl start "$unit_name"
	fi
	systemctl --no-pager status "$unit_name" || true
	say "Logs: journalctl -u ${unit_name%.service} -f"
else
	say "==> systemd left alone (--root, --no-start, or no running systemd)"
fi
say "==> Done"
