"""PostgreSQL only: clock zones, leader election, outages, locks, check advice, secrets."""

import contextlib
import os
import re
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from conftest import BIN, SLOW, Env, PgStore
from pgcluster import APP_PASSWORD, PgCluster


def pgenv(tmp_path, cluster, column_type="timestamp"):
    return Env(tmp_path, PgStore(cluster, column_type))


@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
@pytest.mark.parametrize("zone", ["America/Sao_Paulo", "Asia/Tokyo"])
def test_server_zone_does_not_move_the_deadline(tmp_path, pg, zone, column_type):
    """SPEC §8.4: naive UTC columns against now() under any server zone."""
    env = pgenv(tmp_path, pg, column_type)
    s = env.store
    pg.sql("ALTER DATABASE %s SET timezone = '%s'" % (s.dbname, zone))
    s.add("run-stale", "running", 200)
    s.add("run-fresh", "running", 150)
    s.add("q-stale", "queued", 150)
    s.add("q-fresh", "queued", 90)
    p = env.run("once", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0, p.stderr
    assert s.statuses() == {"run-stale": "error", "run-fresh": "running",
                            "q-stale": "error", "q-fresh": "queued"}
    assert s.row("run-stale")["error_message"] == "Job órfão - mais de 3 minutos"
    assert s.row("q-stale")["error_message"] == "Job queued expirado - mais de 2 minutos"
    # the fresh updated_at is the database's now(), stored as UTC
    assert -1 < s.age("run-stale") < 10
    assert -1 < s.age("q-stale") < 10
    assert 140 < s.age("run-fresh") < 170
    assert "running > 3min: 1, queued > 2min: 1" in p.stderr


def test_check_advises_the_index_and_checks_types(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    p = env.run("check", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert re.search(r"ok: postgresql 15\.\d+, server zone America/Sao_Paulo, session zone UTC", out)
    assert "ok: column scans.updated_at (timestamp without time zone)" in out
    assert "ok: column scans.job_id (character varying(255))" in out
    advices = re.findall(r"^  (CREATE INDEX CONCURRENTLY .*;)$", out, re.M)
    assert advices[1] == 'CREATE INDEX CONCURRENTLY ix_scans_created_at ON "scans" ("created_at");'
    advice = re.search(r"^  (CREATE INDEX CONCURRENTLY .*;)$", out, re.M)
    assert advice, out
    assert advice.group(1) == ('CREATE INDEX CONCURRENTLY ix_scans_active_updated_at ON "scans" '
                               '("updated_at") WHERE "status" IN (\'running\', \'queued\');')
    for ddl in advices:
        env.store.sql(ddl)
    p = env.run("check", LIMPEZA_CACHE_FILE="")
    assert "ok: index ix_scans_active_updated_at serves the reaping query" in p.stdout
    assert "ok: index ix_scans_created_at serves the 24 h statistics" in p.stdout
    assert "advice:" not in p.stdout
    # a column of the wrong type is a failure
    env.store.sql("ALTER TABLE scans ALTER updated_at TYPE text")
    p = env.run("check", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 1
    assert "FAIL: column scans.updated_at is text, expected a timestamp" in p.stdout


def test_composite_index_is_recognised(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    env.store.sql("CREATE INDEX ix_scans_status_updated_at ON scans (status, updated_at)")
    p = env.run("check", LIMPEZA_CACHE_FILE="")
    assert "ok: index ix_scans_status_updated_at serves the reaping query" in p.stdout


def test_follower_leaves_the_database_alone(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    env.store.add("run-stale", "running", 900)
    env.write_cache({"c-old": {"status": "queued", "created_at": time.time() - 999}})
    holder = env.store.connect()
    holder.cursor().execute("SELECT pg_advisory_lock(7105573)")
    try:
        p = env.run("once")
        assert p.returncode == 0, p.stderr
        assert "👥 Outra instância é a líder: aqui só o cache é limpo" in p.stderr
        assert "Limpeza banco executada" not in p.stderr
        assert env.store.statuses() == {"run-stale": "running"}
        assert env.read_cache() == "{}"
        # with election off, it reaps regardless
        p = env.run("once", LIMPEZA_LEADER_KEY="0")
        assert env.store.statuses() == {"run-stale": "error"}
        assert "Outra instância" not in p.stderr
    finally:
        holder.close()


def seed_counted_orphans(store, n, sleep_s):
    """n stale running rows, and a trigger that records (slowly) each one ended."""
    store.sql("""
        CREATE TABLE reaped (job_id text, at timestamptz DEFAULT clock_timestamp());
        CREATE FUNCTION count_reap() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO reaped (job_id) VALUES (NEW.job_id);
            PERFORM pg_sleep(%s);
            RETURN NEW;
        END $$;
        CREATE TRIGGER count_reap AFTER UPDATE OF status ON scans FOR EACH ROW
            WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION count_reap();
        INSERT INTO scans (username, job_id, status, created_at, updated_at)
            SELECT 'u', 'orphan-' || i, 'running', now() - interval '1 hour',
                   now() - interval '1 hour' FROM generate_series(1, %d) i;
    """ % (sleep_s, n))


def table_scans(store):
    """Sequential scans of the scans table so far, once limpeza's session has
    ended (a backend's counters reach the statistics as it exits)."""
    deadline = time.monotonic() + 10 * SLOW
    while int(store.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                        " AND application_name = 'limpeza'", (store.dbname,))[0][0]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return int(store.sql("SELECT seq_scan FROM pg_stat_user_tables"
                         " WHERE relname = 'scans'")[0][0])


def test_a_backlog_costs_a_table_without_index_one_scan(tmp_path, pg):
    """Without the index, one look finds the stale rows however many batches
    end them: a batch locks and ends rows by address, and does not scan the
    table again while it holds its locks."""
    env = pgenv(tmp_path, pg)
    s = env.store
    # a table of some size, where the planner weighs a scan against addresses
    s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
          " SELECT 'u', 'done-' || i, 'done', now() - interval '2 days',"
          " now() - interval '2 days' FROM generate_series(1, 20000) i; ANALYZE scans")
    for i in range(5):
        s.add("fresh-%d" % i, "running", 10)
    before = table_scans(s)
    p = env.run("once", LIMPEZA_CACHE_FILE="", LIMPEZA_BATCH="10")
    assert p.returncode == 0, p.stderr
    idle = table_scans(s) - before
    s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
          " SELECT 'u', 'stale-' || i, CASE WHEN i <= 35 THEN 'running' ELSE 'queued' END,"
          " now() - interval '1 hour', now() - interval '1 hour'"
          " FROM generate_series(1, 45) i")
    before = table_scans(s)
    p = env.run("once", LIMPEZA_CACHE_FILE="", LIMPEZA_BATCH="10", LIMPEZA_LOG_LEVEL="debug")
    assert p.returncode == 0, p.stderr
    busy = table_scans(s) - before
    assert "running > 3min: 35, queued > 2min: 10" in p.stderr
    assert re.findall(r"Lote no banco: (\d+) jobs", p.stderr) == ["10"] * 4 + ["5"]
    assert busy == idle, "%d scans of the table with a backlog, %d without" % (busy, idle)
    left = s.sql("SELECT status, count(*) FROM scans GROUP BY 1 ORDER BY 1")
    assert left == [("done", 20000), ("error", 45), ("running", 5)]


def test_forced_cleanup_costs_a_table_without_index_one_look_per_status(tmp_path, pg):
    """The forced cleanup ends rows by address too: with many active rows it
    scans a table without the index no more than with none."""
    env = pgenv(tmp_path, pg)
    s = env.store
    s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
          " SELECT 'u', 'done-' || i, 'done', now() - interval '2 days',"
          " now() - interval '2 days' FROM generate_series(1, 20000) i; ANALYZE scans")
    before = table_scans(s)
    p = env.run("once", "--force", LIMPEZA_CACHE_FILE="", LIMPEZA_BATCH="10")
    assert p.returncode == 0, p.stderr
    idle = table_scans(s) - before
    s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
          " SELECT 'u', 'live-' || i, CASE WHEN i <= 35 THEN 'running' ELSE 'queued' END,"
          " now(), now() FROM generate_series(1, 45) i")
    before = table_scans(s)
    p = env.run("once", "--force", LIMPEZA_CACHE_FILE="", LIMPEZA_BATCH="10",
                LIMPEZA_LOG_LEVEL="debug")
    assert p.returncode == 0, p.stderr
    busy = table_scans(s) - before
    assert re.findall(r"Lote no banco: (\d+) jobs", p.stderr) == ["10"] * 3 + ["5"] + ["10"]
    assert busy == idle, "%d scans of the table with active rows, %d without" % (busy, idle)
    left = s.sql("SELECT status, count(*) FROM scans GROUP BY 1 ORDER BY 1")
    assert left == [("done", 20000), ("error", 45)]


def test_three_daemons_reap_each_orphan_once_and_survive_the_leader(tmp_path, pg, daemons):
    """Thousands of orphans, three hosts, the leader SIGKILLed mid-work."""
    env = pgenv(tmp_path, pg)
    s = env.store
    n = 3000
    seed_counted_orphans(s, n, 0.001)  # the sleep makes the backlog take a while
    s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
          " SELECT 'u', 'live-' || i, 'running', now(), now() + interval '1 hour'"
          " FROM generate_series(1, 50) i")
    ds = []
    for i in range(3):
        cache = os.path.join(env.tmp, "cache%d.json" % i)
        log = os.path.join(env.tmp, "log%d" % i, "limpeza.log")
        ds.append(daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_BATCH="100",
                          LIMPEZA_CACHE_FILE=cache, LIMPEZA_LOG_FILE=log))
    # find the leader once it has reaped part of the backlog
    leader = None
    deadline = time.monotonic() + 20 * SLOW
    while leader is None and time.monotonic() < deadline:
        for d in ds:
            if "👑 Líder" in d.stderr():
                leader = d
        time.sleep(0.05)
    assert leader is not None
    deadline = time.monotonic() + 30 * SLOW
    while int(s.sql("SELECT count(*) FROM reaped")[0][0]) < 300:
        assert time.monotonic() < deadline, "the leader reaped nothing"
        time.sleep(0.02)
    leader.p.kill()
    leader.p.wait()
    done_at_kill = int(s.sql("SELECT count(*) FROM reaped")[0][0])
    assert done_at_kill < n, "the leader finished before it could be killed"
    # another one takes over and finishes
    deadline = time.monotonic() + 60 * SLOW
    while time.monotonic() < deadline:
        left = int(s.sql("SELECT count(*) FROM scans WHERE status = 'running'"
                         " AND job_id LIKE 'orphan-%%'")[0][0])
        if left == 0:
            break
        time.sleep(0.1)
    assert left == 0
    counts = s.sql("SELECT count(*), count(DISTINCT job_id), max(c) FROM"
                   " (SELECT job_id, count(*) c FROM reaped GROUP BY job_id) x")[0]
    assert counts == (n, n, 1), counts
    assert int(s.sql("SELECT count(*) FROM scans WHERE job_id LIKE 'live-%%'"
                     " AND status = 'running'")[0][0]) == 50
    survivors = [d for d in ds if d is not leader]
    assert sum("👑 Líder" in d.stderr() for d in survivors) == 1
    for d in survivors:
        # a follower says so once, however many cycles it ran
        assert d.stderr().count("👥 Outra instância é a líder") <= 1
        assert d.stop() == 0


def test_outage_is_logged_once_and_survived(tmp_path, daemons):
    """The database stops mid-cycle (during a reaping batch) and comes back."""
    cluster = PgCluster()
    try:
        env = pgenv(tmp_path, cluster)
        s = env.store
        seed_counted_orphans(s, 600, 0.005)
        d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                    LIMPEZA_BATCH="100", LIMPEZA_LOG_LEVEL="debug")
        d.wait_for("Lote no banco: 100 jobs")
        cluster.stop("immediate")
        d.wait_for("❌ Erro no banco \\(postgresql\\)")
        # several failing cycles, one error line
        log = d.wait_for("Ciclo", count=d.stderr().count("Ciclo") + 8)
        assert log.count("❌ Erro no banco (postgresql)") == 1
        assert d.p.poll() is None
        cluster.start()
        s.add("after-restart", "running", 900)
        d.wait_for("✅ Banco disponível novamente \\(postgresql\\)", timeout=40)
        d.wait_for("running > 3min: [1-9]", timeout=20)
        deadline = time.monotonic() + 30 * SLOW
        while s.statuses()["after-restart"] != "error" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.statuses()["after-restart"] == "error"
        assert int(s.sql("SELECT count(*) FROM scans WHERE status = 'running'")[0][0]) == 0
        # a batch cut by the crash was rolled back whole: nothing twice
        assert s.sql("SELECT count(*), count(DISTINCT job_id) FROM reaped")[0] == (601, 601)
        assert d.stderr().count("❌ Erro no banco (postgresql)") == 1
        assert d.stop() == 0
    finally:
        cluster.destroy()


def test_database_refusing_connections_at_start(tmp_path, pg, daemons):
    env = pgenv(tmp_path, pg)
    url = "postgresql://app:%s@127.0.0.1:%d/%s" % (APP_PASSWORD, pg.port + 1 if pg.port < 65535 else 1, env.store.dbname)
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms", DATABASE_URL=url)
    log = d.wait_for("Ciclo 3 ")
    assert log.count("❌ Erro no banco (postgresql): cannot connect") == 1
    assert APP_PASSWORD not in log


@contextlib.contextmanager
def another_session_holding(env, sql):
    """Another session runs sql (taking a lock) and keeps its transaction open."""
    holder = env.store.connect()
    holder.autocommit = False
    holder.cursor().execute(sql)
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


def timed_once(env):
    t0 = time.monotonic()
    p = env.run("once", LIMPEZA_CACHE_FILE="")
    return p, time.monotonic() - t0


def test_locked_table_hits_lock_timeout_not_a_hang(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    env.store.add("run-stale", "running", 900)
    with another_session_holding(env, "LOCK TABLE scans IN ACCESS EXCLUSIVE MODE"):
        p, took = timed_once(env)
    assert p.returncode == 1
    assert "lock timeout" in p.stderr
    assert took < 10 * SLOW
    p = env.run("once", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0 and env.store.statuses()["run-stale"] == "error"


def test_rows_locked_by_a_writer_are_skipped_not_waited_for(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    env.store.add("busy", "running", 900)
    env.store.add("free", "running", 900)
    with another_session_holding(env, "SELECT 1 FROM scans WHERE job_id = 'busy' FOR UPDATE"):
        p, took = timed_once(env)
        assert p.returncode == 0, p.stderr
        assert took < 5 * SLOW
    assert env.store.statuses() == {"busy": "running", "free": "error"}


def test_secrets_never_printed(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    good = env.store.url
    wrong = good.replace(APP_PASSWORD, "Wr0ng-" + APP_PASSWORD)
    for url, secret in ((good, APP_PASSWORD), (wrong, "Wr0ng-" + APP_PASSWORD)):
        for args in (["once"], ["check"], ["stats"], ["stats", "--json"]):
            p = env.run(*args, DATABASE_URL=url, LIMPEZA_LOG_LEVEL="debug")
            assert secret not in p.stdout + p.stderr, (args, p.stdout + p.stderr)
            assert secret not in env.log_text()
    p = env.run("once", DATABASE_URL=wrong)
    assert "password authentication failed" in p.stderr
    p = env.run("check", DATABASE_URL=good)
    assert "app:***@127.0.0.1" in p.stdout
    # URL parameters reach libpq: this server has no SSL
    p = env.run("once", DATABASE_URL=good + "?sslmode=require")
    assert "SSL" in p.stderr
    assert APP_PASSWORD not in p.stderr


def test_libpq_keyword_form(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    env.store.add("run-stale", "running", 900)
    url = "host=127.0.0.1 port=%d dbname=%s user=app password='%s'" % (
        pg.port, env.store.dbname, APP_PASSWORD)
    p = env.run("once", DATABASE_URL=url, LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0, p.stderr
    assert env.store.statuses()["run-stale"] == "error"
    p = env.run("check", DATABASE_URL=url)
    assert APP_PASSWORD not in p.stdout and "password=***" in p.stdout
