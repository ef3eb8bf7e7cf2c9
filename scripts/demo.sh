#!/bin/sh
# make demo: one real cleanup cycle on a SQLite job store and a cache file
# that it creates under demo/, with some stale and some fresh jobs.
set -eu
cd "$(dirname "$0")/.."
rm -rf demo
mkdir -p demo
now=$(date +%s)

sqlite3 demo/jobs.db < tests/fixtures/scans_sqlite.sql
sqlite3 demo/jobs.db <<SQL
INSERT INTO scans (username, job_id, status, created_at, updated_at) VALUES
 ('ana',   'db-stale-running', 'running', datetime('now','-15 minutes'), strftime('%Y-%m-%d %H:%M:%f000','now','-10 minutes')),
 ('bruno', 'db-fresh-running', 'running', datetime('now','-1 minutes'),  strftime('%Y-%m-%d %H:%M:%f000','now','-20 seconds')),
 ('carla', 'db-stale-queued',  'queued',  datetime('now','-5 minutes'),  strftime('%Y-%m-%d %H:%M:%f000','now','-5 minutes')),
 ('davi',  'db-fresh-queued',  'queued',  datetime('now','-30 seconds'), strftime('%Y-%m-%d %H:%M:%f000','now','-30 seconds')),
 ('eva',   'db-done',          'done',    datetime('now','-2 hours'),    strftime('%Y-%m-%d %H:%M:%f000','now','-2 hours'));
SQL

cat > demo/desfollow_jobs.json <<JSON
{"cache-stale-running": {"status": "running", "start_time": $((now - 400)).5, "profile_info": {"username": "ana"}, "count": 0}, "cache-fresh-running": {"status": "running", "start_time": $((now - 20)), "count": 0}, "cache-stale-queued": {"status": "queued", "created_at": $((now - 300))}, "cache-new-queued": {"status": "queued"}, "cache-done": {"status": "done", "all": ["x", "y", "z"], "count": 3}}
JSON

echo "== before"
sqlite3 -column -header demo/jobs.db 'SELECT job_id, status, error_message FROM scans'
echo
echo "== limpeza once"
build/limpeza once --env-files= --database-url sqlite:///demo/jobs.db \
    --cache-file demo/desfollow_jobs.json --health-url= \
    --log-file demo/limpeza.log 2>&1
echo
echo "== after: job table"
sqlite3 -column -header demo/jobs.db 'SELECT job_id, status, error_message FROM scans'
echo
echo "== after: cache file (kept jobs are byte-for-byte the originals)"
cat demo/desfollow_jobs.json
echo
echo
echo "The log is also in demo/limpeza.log."
