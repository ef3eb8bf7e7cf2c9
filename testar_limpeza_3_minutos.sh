#!/bin/sh
# testar_limpeza_3_minutos.sh: checks a running limpeza install and says PASS or FAIL.
set -u

usage() {
	cat <<USAGE
usage: $0 [--health-url URL] [--duration SECONDS] [--every SECONDS]
          [--service NAME | --no-service] [--log FILE] [--max-log-age SECONDS]
          [--cache FILE]

Checks that the service is active, that its log shows recent activity,
watches the API's /api/health for --duration seconds (jobs_active <= 5 OK,
<= 10 attention, more FAIL), and that the cache file is valid JSON.
Exit status 0 on PASS, 1 on FAIL.
USAGE
}

health_url=${LIMPEZA_HEALTH_URL:-http://api.desfollow.com.br/api/health}
duration=60
every=10
service=desfollow-limpeza-3min
log=${LIMPEZA_LOG_FILE:-/var/log/desfollow/limpeza_3min.log}
max_log_age=120
cache=${LIMPEZA_CACHE_FILE:-/tmp/desfollow_jobs.json}
while [ $# -gt 0 ]; do
	case "$1" in
	--health-url) health_url=${2?}; shift 2 ;;
	--duration) duration=${2?}; shift 2 ;;
	--every) every=${2?}; shift 2 ;;
	--service) service=${2?}; shift 2 ;;
	--no-service) service=""; shift ;;
	--log) log=${2?}; shift 2 ;;
	--max-log-age) max_log_age=${2?}; shift 2 ;;
	--cache) cache=${2?}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "$0: unknown option '$1'; see --help" >&2; exit 2 ;;
	esac
done

failed=0
pass() { printf '  ✅ %s\n' "$*"; }
warn() { printf '  ⚠️  %s\n' "$*"; }
fail() { printf '  ❌ %s\n' "$*"; failed=1; }

echo "🧪 Teste do sistema de limpeza 3 minutos"

echo "1. Serviço"
if [ -z "$service" ]; then
	warn "not checked (--no-service)"
elif systemctl is-active --quiet "$service"; then
	pass "$service is active"
else
	fail "$service is not active (systemctl status $service)"
fi

echo "2. Log"
if [ ! -f "$log" ]; then
	fail "$log does not exist"
else
	age=$(($(date +%s) - $(stat -c %Y "$log")))
	if [ "$age" -le "$max_log_age" ]; then
		pass "$log written ${age}s ago"
	else
		fail "$log last written ${age}s ago (more than ${max_log_age}s)"
	fi
	tail -n 5 "$log" | sed 's/^/     /'
fi

echo "3. API health ($health_url, ${duration}s)"
if [ -z "$health_url" ]; then
	warn "not checked (no health URL)"
else
	end=$(($(date +%s) + duration))
	samples=0
	worst=-1
	while :; do
		body=$(curl -fsS --max-time 10 "$health_url" 2>&1)
		jobs=$(printf '%s' "$body" | python3 -c \
			'import json,sys; v=json.load(sys.stdin).get("jobs_active"); print(v if type(v) is int else "")' \
			2>/dev/null)
		samples=$((samples + 1))
		if [ -z "$jobs" ]; then
			fail "no jobs_active in the answer: $(printf '%s' "$body" | head -c 200)"
		else
			if [ "$jobs" -le 5 ]; then
				pass "jobs_active=$jobs"
			elif [ "$jobs" -le 10 ]; then
				warn "jobs_active=$jobs (attention: more than 5)"
			else
				fail "jobs_active=$jobs (more than 10)"
			fi
			[ "$jobs" -gt "$worst" ] && worst=$jobs
		fi
		[ "$(date +%s)" -ge "$end" ] && break
		sleep "$every"
	done
	echo "     $samples samples, highest jobs_active: $worst"
fi

echo "4. Cache file ($cache)"
if [ ! -e "$cache" ]; then
	pass "not present (the API creates it when it runs a scan)"
elif summary=$(python3 -c '
import json, sys
with open(sys.argv[1]) as f:
    jobs = json.load(f)
if not isinstance(jobs, dict):
    raise SystemExit("not a JSON object")
st = [j.get("status") for j in jobs.values() if isinstance(j, dict)]
print("%d jobs: %d running, %d queued" % (len(jobs), st.count("running"), st.count("queued")))
' "$cache" 2>&1); then
	pass "valid JSON, $summary"
else
	fail "invalid: $(printf '%s' "$summary" | tail -n 1)"
fi

if [ "$failed" -eq 0 ]; then
	echo "RESULTADO: PASS"
	exit 0
fi
echo "RESULTADO: FAIL"
exit 1
