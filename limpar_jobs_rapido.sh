#!/bin/sh
# limpar_jobs_rapido.sh: immediate manual cleanup (limpeza once --force), health before and after.
set -eu

usage() {
	cat <<USAGE
usage: $0 [--health-url URL] [--bin PATH] [--env-file FILE]

Shows the API's health, ends every running/queued job now with
'limpeza once --force' (in the database and the cache file), then shows
the health again. Settings come from --env-file (default
/etc/default/desfollow-limpeza) and the environment.
USAGE
}

bin=""
env_file=/etc/default/desfollow-limpeza
health_url=""
while [ $# -gt 0 ]; do
	case "$1" in
	--health-url) health_url=${2?}; shift 2 ;;
	--bin) bin=${2?}; shift 2 ;;
	--env-file) env_file=${2?}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "$0: unknown option '$1'; see --help" >&2; exit 2 ;;
	esac
done

if [ -r "$env_file" ]; then
	set -a
	# shellcheck source=/dev/null
	. "$env_file"
	set +a
fi
if [ -n "$health_url" ]; then
	LIMPEZA_HEALTH_URL=$health_url
	export LIMPEZA_HEALTH_URL
fi
health_url=${LIMPEZA_HEALTH_URL-http://api.desfollow.com.br/api/health}
if [ -z "$bin" ]; then
	bin=$(command -v limpeza || echo /usr/local/sbin/limpeza)
fi

show_health() {
	if [ -z "$health_url" ]; then
		echo "   (no health URL)"
	else
		echo "   $(curl -sS --max-time 10 "$health_url" 2>&1 | head -c 300)"
	fi
}

echo "🏥 Health antes:"
show_health
echo "🧹 Limpeza forçada (limpeza once --force):"
rc=0
"$bin" once --force || rc=$?
echo "🏥 Health depois:"
show_health
exit "$rc"
