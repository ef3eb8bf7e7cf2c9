"""What the operator sees is what happened (issue 21): every job limpeza
ends is told in the seed's lines, whatever path ended it (a cycle, a
deadline wake-up, a forced cleanup), and the forced cleanup counts
distinct jobs."""

import json
import os
import re
import signal
import time

import pytest

from conftest import Env, PgStore, pg_cluster

SEED_CACHE = re.compile(r"✅ Cache limpo: (\d+) jobs órfãos (?:removidos|marcados como erro)")
SEED_DB = re.compile(r"🧹 Limpeza banco executada: running > \S+: (\d+), queued > \S+: (\d+)")
SEED_FORCED = re.compile(r"🚨 Limpeza forçada: (\d+) jobs terminados \((\d+) no banco, (\d+) no cache\)")
CLOSING = re.compile(r"(✅ Limpeza executada: (\d+) jobs processados|✅ Sistema limpo)")


def seed_sum(log):
    """Rows and cache jobs ended, as the seed's lines tell them."""
    n = sum(int(m) for m in SEED_CACHE.findall(log))
    n += sum(int(r) + int(q) for r, q in SEED_DB.findall(log))
    n += sum(int(db) + int(c) for _, db, c in SEED_FORCED.findall(log))
    return n


def closing_lines(log):
    """Each cycle's closing line, in order: a count, or 0 for Sistema limpo."""
    return [int(m[1]) if m[1] else 0 for m in CLOSING.findall(log)]


def cycle_part(log, n):
    """The log from cycle n's first line on."""
    return log[log.index("🔄 Ciclo %d " % n):]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request, tmp_path):
    if request.param == "sqlite":
        return Env(tmp_path)
    return Env(tmp_path, PgStore(pg_cluster()))


def test_deadline_reaping_is_told_and_closes_the_next_cycle(store_env, daemons):
    """Rows ended at a deadline wake-up get the seed's database line and an
    info line each (id and age); the next cycle does not say Sistema limpo
    but counts them, and so does the report."""
    env = store_env
    t0 = time.time()
    env.store.add("db-due", "running", 0, created_age_s=40)
    env.write_cache({"c-due": {"status": "running", "start_time": t0}})
    d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_RUNNING_TTL="5s",
                LIMPEZA_REPORT_EVERY="2")
    d.wait_for("✅ Sistema limpo")  # cycle 1: nothing stale yet
    d.wait_for(r"running > 5s: 1, queued")
    log = d.wait_for("Job órfão no cache limpo: c-due")
    assert env.store.statuses() == {"db-due": "error"}
    assert "Ciclo 2 " not in d.stderr()  # both went at deadline wake-ups
    assert re.search(r"- INFO - 🧹 Limpeza banco executada: running > 5s: 1, queued > 2min: 0$",
                     log, re.M), log
    m = re.search(r"- INFO - 🧹 Job running encerrado no banco: db-due \(criado há (\d+)s\)$",
                  log, re.M)
    assert m and 40 <= int(m.group(1)) <= 200, log
    d.signal(signal.SIGUSR1)
    log = d.wait_for(r"📊 Relatório \(Ciclo 2\)")
    second = cycle_part(log, 2)
    assert "Sistema limpo" not in second, second
    assert "✅ Limpeza executada: 2 jobs processados" in second, second
    assert "📊 Relatório (Ciclo 2): 2 jobs limpos desde o início" in second, second
    assert seed_sum(log) == 2


def test_banner_names_the_running_ttl(env, daemons):
    d = daemons(env, LIMPEZA_RUNNING_TTL="20s", LIMPEZA_INTERVAL="60s")
    d.wait_for("Ciclo 1 ")
    assert re.search(r"- INFO - 🚀 Sistema de Limpeza 20 Segundos iniciado\.\.\.$",
                     d.stderr(), re.M), d.stderr()
    assert d.stop() == 0
    d = daemons(env, LIMPEZA_RUNNING_TTL="1m", LIMPEZA_INTERVAL="60s", LIMPEZA_LANG="en")
    d.wait_for("Cycle 1 ")
    assert "🚀 1-Minute Cleanup System started..." in d.stderr()


def test_every_path_sums_to_what_was_ended(store_env, health, daemons):
    """Reaping in a cycle and at deadlines, in the cache and the database,
    then a forced cleanup of jobs in both: the seed's lines add up to the
    rows and cache jobs ended, the forced cleanup counts a job in both
    places once, and the closing lines count every job ended."""
    env = store_env
    s = env.store
    t0 = time.time()
    s.add("db-stale", "running", 900)
    s.add("db-q", "queued", 900)
    s.add("db-due", "running", 0)
    s.add("db-done", "done", 900)
    env.write_cache({"c-stale": {"status": "running", "start_time": t0 - 900},
                     "c-q": {"status": "queued", "created_at": t0 - 900},
                     "c-due": {"status": "running", "start_time": t0},
                     "c-done": {"status": "done"}})
    health.set_json({"status": "healthy", "jobs_active": 0})
    d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_RUNNING_TTL="5s",
                LIMPEZA_HEALTH_URL=health.url, LIMPEZA_FORCE_CACHE="active",
                LIMPEZA_CACHE_RETENTION="0")
    d.wait_for("📊 API Health")
    d.wait_for(r"running > 5s: 1, queued > 2min: 0")  # db-due, at its deadline
    d.wait_for("Job órfão no cache limpo: c-due")
    assert "Ciclo 2 " not in d.stderr()
    # fresh jobs, one of them in both places; the API now reports too many
    s.add("shared", "running", 0)
    s.add("only-db", "queued", 0)
    cache = env.read_cache()
    assert "c-due" not in cache
    env.write_cache(cache[:-1] + ', "shared": {"status": "running", "start_time": %f},'
                    ' "only-cache": {"status": "queued"}}' % time.time())
    health.set_json({"status": "healthy", "jobs_active": 9})
    d.signal(signal.SIGUSR1)
    log = d.wait_for(r"Ciclo 2 [\s\S]*(Limpeza executada|Sistema limpo)")
    assert d.stop() == 0
    log = d.stderr()

    rows = {k for k, v in s.statuses().items() if v == "error"}
    assert rows == {"db-stale", "db-q", "db-due", "shared", "only-db"}
    cache = env.read_cache()
    gone = {j for j in ("c-stale", "c-q", "c-due", "shared", "only-cache") if '"%s"' % j not in cache}
    assert len(gone) == 5 and '"c-done"' in cache
    assert seed_sum(log) == len(rows) + len(gone), log
    assert SEED_FORCED.findall(log) == [("3", "2", "2")], log
    # cycle 1: 2 + 2 stale; cycle 2: the 2 ended at deadlines + 3 forced
    assert closing_lines(log) == [4, 5], log
    for job in ("db-stale", "db-q", "db-due", "shared", "only-db"):
        assert re.search(r"- INFO - 🧹 Job \w+ encerrado no banco: %s \(criado há \d+s\)$" % job,
                         log, re.M), job


def metric(port, name):
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_stale_rows_behind_a_lock_are_told(tmp_path, pg, daemons):
    """A stale row that a dead worker's session holds (idle in
    transaction) is skipped: the closing line counts it and is no Sistema
    limpo, one warning per interval names the holder, a metric counts it;
    once the lock goes, the row is reaped."""
    import socket
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    s.add("held", "running", 900)
    s.add("free", "running", 900)
    holder = s.connect()
    holder.autocommit = False
    holder.cursor().execute("SELECT 1 FROM scans WHERE job_id = 'held' FOR UPDATE")
    pid = holder.get_backend_pid()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    try:
        d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_CACHE_FILE="",
                    LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port)
        d.wait_for("Stats banco")
        d.signal(signal.SIGUSR1)
        d.wait_for("Stats banco", count=2)
        d.signal(signal.SIGUSR1)
        log = d.wait_for(r"Ciclo 3 [\s\S]*bloqueados no banco")
        assert metric(port, "limpeza_stale_rows_left") == 1
        assert s.statuses() == {"held": "running", "free": "error"}
    finally:
        holder.rollback()
        holder.close()
    assert "Sistema limpo" not in log, log
    assert re.search(r"- WARNING - ⚠️ Limpeza executada: 1 jobs processados, 1 jobs vencidos "
                     r"bloqueados no banco$", log, re.M), log
    assert len(re.findall(r"- WARNING - ⚠️ Limpeza executada: 0 jobs processados, 1 jobs vencidos "
                          r"bloqueados no banco$", log, re.M)) == 2, log
    warn = re.findall(r"- WARNING - ⚠️ 1 jobs vencidos bloqueados por outra transação "
                      r"\(pid (\d+), idle in transaction há \d+s\)$", log, re.M)
    assert warn == [str(pid)], log  # three cycles within one interval: said once
    # the lock gone, the row is reaped and the metric falls to 0
    d.signal(signal.SIGUSR1)
    d.wait_for(r"Ciclo 4 [\s\S]*Limpeza executada: 1 jobs processados")
    assert s.statuses() == {"held": "error", "free": "error"}
    assert metric(port, "limpeza_stale_rows_left") == 0


def test_a_follower_does_not_say_the_system_is_clean(tmp_path, pg, daemons):
    """Another instance holds the leader's lock: this daemon cleans only
    its cache and says that another instance cleans the database."""
    env = Env(tmp_path, PgStore(pg))
    env.store.add("stale", "running", 900)
    env.write_cache({})
    leader = env.store.connect()
    leader.autocommit = True
    leader.cursor().execute("SELECT pg_advisory_lock(7105573)")
    try:
        d = daemons(env, LIMPEZA_INTERVAL="60s")
        log = d.wait_for(r"Ciclo 1 [\s\S]*(Sistema limpo|outra instância$)")
    finally:
        leader.close()
    assert "Sistema limpo" not in log, log
    assert re.search(r"- INFO - ✅ Nenhum job órfão no cache - o banco é limpo por outra instância$",
                     log, re.M), log
    assert env.store.statuses() == {"stale": "running"}


def test_mark_mode_marked_jobs_without_a_row_leave(env, daemons):
    """Mark mode: an expired queued job without a row is marked, kept for
    LIMPEZA_CACHE_RETENTION from the mark, then removed; an error job the
    API wrote itself, without a row, is kept (nothing vouches for it)."""
    now = time.time()
    env.write_cache({"q": {"status": "queued", "created_at": now - 900},
                     "api-err": {"status": "error", "error": "Job órfão - sem start_time"},
                     "live": {"status": "running", "start_time": now}})
    d = daemons(env, LIMPEZA_INTERVAL="300ms", LIMPEZA_CACHE_ACTION="mark",
                LIMPEZA_CACHE_RETENTION="3s")
    d.wait_for("✅ Cache limpo: 1 jobs órfãos marcados como erro")
    cache = env.read_cache()
    assert '"q": {"status": "error"' in cache, cache
    log = d.wait_for(r"🗑️ Cache: 1 jobs marcados como erro removidos \(marcados há mais de 3s\)",
                     timeout=20)
    cache = env.read_cache()
    assert '"q"' not in cache and '"api-err"' in cache and '"live"' in cache, cache
    # kept for the whole retention: several cycles between the mark and the removal
    between = log[log.index("marcados como erro\n"):log.index("🗑️ Cache: 1 jobs marcados")]
    assert between.count("🔄 Ciclo") >= 2, log
    assert re.search(r"- INFO - 🗑️ Cache: 1 jobs marcados como erro removidos", log)


def test_read_only_commands_do_not_request_the_health_url(env, health, daemons):
    """check, stats (text and JSON) and any dry run request the health URL
    only with --health, and say that the API was not asked."""
    health.set_json({"status": "healthy", "jobs_active": 9})
    env.write_cache({"c": {"status": "running", "start_time": time.time()}})
    over = {"LIMPEZA_HEALTH_URL": health.url}
    p = env.run("check", **over)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^ok: health URL http://127\.0\.0\.1:\d+/api/health not asked "
                     r"\(read-only: some APIs' health routes write; --health asks it\)$",
                     p.stdout, re.M), p.stdout
    p = env.run("stats", **over)
    assert p.returncode == 0 and "api: not asked (read-only" in p.stdout, p.stdout
    p = env.run("stats", "--json", **over)
    assert p.returncode == 0 and json.loads(p.stdout)["api"] == {"asked": False}, p.stdout
    p = env.run("once", "--dry-run", **over)
    assert p.returncode == 0, p.stderr
    assert "🧪 API Health não consultada: simulação" in p.stderr and "MUITOS JOBS" not in p.stderr
    d = daemons(env, LIMPEZA_DRY_RUN="1", LIMPEZA_INTERVAL="200ms", **over)
    d.wait_for("Ciclo 3 ")
    assert d.stop() == 0
    assert health.hits == 0
    # --health asks it, each once
    assert "ok: health URL" in env.run("check", "--health", **over).stdout
    assert health.hits == 1
    assert json.loads(env.run("stats", "--json", "--health", **over).stdout)["api"] == {"jobs_active": 9}
    assert health.hits == 2
    p = env.run("once", "--dry-run", "--health", **over)
    assert "🧪 MUITOS JOBS ATIVOS: 9" in p.stderr and health.hits == 3
    assert "--health" in env.run("--help").stdout


def test_active_count_from_the_database(store_env, health):
    """LIMPEZA_ACTIVE_FROM=database: the active count is the table's
    running + queued rows, no URL is requested, and the forced cleanup
    works from that count; with the default (health) a health route that
    always answers 0, as Desfollow's does, never forces."""
    env = store_env
    for i in range(4):
        env.store.add("r%d" % i, "running", 0)
        env.store.add("q%d" % i, "queued", 0)
    env.store.add("done", "done", 0)
    health.set_json({"status": "healthy", "jobs_active": 0})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url, LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0 and "MUITOS JOBS" not in p.stderr, p.stderr
    assert health.hits == 1
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url, LIMPEZA_CACHE_FILE="",
                LIMPEZA_ACTIVE_FROM="database")
    assert p.returncode == 0, p.stderr
    assert health.hits == 1  # not requested
    assert "- INFO - 📊 Banco: 8 jobs ativos (running + queued)" in p.stderr, p.stderr
    assert "WARNING - ⚠️ MUITOS JOBS ATIVOS: 8 - Executando limpeza forçada!" in p.stderr
    assert "🚨 Limpeza forçada: 8 jobs terminados (8 no banco, 0 no cache)" in p.stderr
    assert set(env.store.statuses().values()) == {"error", "done"}
    p = env.run("check", LIMPEZA_ACTIVE_FROM="sometimes")
    assert p.returncode == 2 and "LIMPEZA_ACTIVE_FROM" in p.stderr, p.stderr


@pytest.fixture
def api(env):
    """The Desfollow API double (apidouble.py) on the test's cache file,
    three worker processes, as the API runs under gunicorn."""
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.Popen([sys.executable, os.path.join(here, "apidouble.py"), env.cache, "3"],
                         stdout=subprocess.PIPE, text=True)
    base = "http://127.0.0.1:%d" % int(p.stdout.readline())
    yield base
    p.terminate()
    p.wait(10)


def call(url, method="GET"):
    import urllib.request
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_a_health_route_that_ends_live_jobs_is_noticed(env, api, daemons):
    """Against the API double, whose health route marks every running job
    (the API writes no start_time) and rewrites the file: the daemon warns
    once, with the count and the remedy, and a metric counts the jobs."""
    import socket
    call(api + "/api/scan/j1", "POST")
    call(api + "/api/scan/j1/running", "POST")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    d = daemons(env, LIMPEZA_HEALTH_URL=api + "/api/health", LIMPEZA_INTERVAL="60s",
                DATABASE_URL=None, LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port)
    d.wait_for("📊 API Health: 0 jobs ativos")
    assert call(api + "/api/scan/j1")["error"] == "Job órfão - sem start_time"
    log = d.wait_for("✅ Sistema limpo")
    assert re.search(r"- WARNING - ⚠️ A consulta à API Health terminou 1 jobs ativos no cache "
                     r"\(reescreveu o arquivo com outra mensagem de erro\): use "
                     r"LIMPEZA_ACTIVE_FROM=database$", log, re.M), log
    assert metric(port, "limpeza_health_ended_jobs_total") == 1
    # again: counted, not said again within the hour
    call(api + "/api/scan/j2", "POST")
    call(api + "/api/scan/j2/running", "POST")
    d.signal(signal.SIGUSR1)
    log = d.wait_for("📊 API Health: 0 jobs ativos", count=2)
    assert call(api + "/api/scan/j2")["status"] == "error"
    d.wait_for(r"Ciclo 2 [\s\S]*Sistema limpo")
    assert metric(port, "limpeza_health_ended_jobs_total") == 2
    assert d.stderr().count("terminou 1 jobs ativos") == 1


def test_against_the_api_double_active_from_database_leaves_live_scans(env, api):
    """LIMPEZA_ACTIVE_FROM=database and read-only commands request no URL:
    the double's live scan stays running."""
    call(api + "/api/scan/live", "POST")
    call(api + "/api/scan/live/running", "POST")
    over = {"LIMPEZA_HEALTH_URL": api + "/api/health"}
    assert env.run("check", **over).returncode == 0
    assert env.run("stats", "--json", **over).returncode == 0
    p = env.run("once", LIMPEZA_ACTIVE_FROM="database", **over)
    assert p.returncode == 0, p.stderr
    assert "📊 Banco: 0 jobs ativos" in p.stderr and "API Health" not in p.stderr
    assert call(api + "/api/scan/live")["status"] == "running"
    # the default asks the route, which ends it
    env.run("once", **over)
    assert call(api + "/api/scan/live")["status"] == "error"


def test_against_the_api_double_every_job_ended_is_told(env, api, daemons):
    """The API double writes its scans (no time in them) and their rows;
    the daemon runs as in production (LIMPEZA_ACTIVE_FROM=database, as on
    Desfollow): scans that hang are ended at their deadlines, in the cache
    and in the table, and the seed's lines add up to what was ended."""
    for j in ("h1", "h2", "h3"):
        call(api + "/api/scan/" + j, "POST")
        env.store.add(j, "queued", 0)
    call(api + "/api/scan/h3/running", "POST")
    d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_QUEUED_TTL="2s", LIMPEZA_RUNNING_TTL="2s",
                LIMPEZA_HEALTH_URL=api + "/api/health", LIMPEZA_ACTIVE_FROM="database")
    d.wait_for("✅ Sistema limpo")  # first sight: nothing is due yet
    wait_s = time.monotonic() + 20
    while time.monotonic() < wait_s:
        if set(env.store.statuses().values()) == {"error"} and json.loads(env.read_cache()) == {}:
            break
        time.sleep(0.05)
    assert json.loads(env.read_cache()) == {}, d.stderr()[-2000:]
    assert set(env.store.statuses().values()) == {"error"}
    assert "Ciclo 2 " not in d.stderr()
    d.signal(signal.SIGUSR1)
    log = d.wait_for(r"Ciclo 2 [\s\S]*(Limpeza executada|Sistema limpo)")
    assert seed_sum(log) == 6, log
    assert closing_lines(log) == [0, 6], log
    assert "API Health" not in log
