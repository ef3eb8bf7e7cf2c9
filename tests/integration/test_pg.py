"""PostgreSQL only: clock zones, leader election, outages, locks, check advice, secrets."""

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import psycopg2
import pytest

from conftest import BIN, RACE_SECONDS, ROOT, SLOW, Env, PgStore, drop_bouncer
from pgcluster import APP_PASSWORD, PgCluster, pg_bin


LEADER_KEY = 7105573


def pgenv(tmp_path, cluster, column_type="timestamp", via="direct"):
    return Env(tmp_path, PgStore(cluster, column_type, via))


def take_leader_lock(store):
    """Another instance's session holding the leader's lock (taken as soon
    as limpeza's transaction holding it, if any, ends; never waiting for
    ever). Closing the connection releases it."""
    holder = store.connect()
    cur = holder.cursor()
    cur.execute("SET lock_timeout = '20s'")
    cur.execute("SELECT pg_advisory_lock(%s)", (LEADER_KEY,))
    return holder


@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
@pytest.mark.parametrize("zone", ["America/Sao_Paulo", "Asia/Tokyo"])
def test_server_zone_does_not_move_the_deadline(tmp_path, pg, zone, column_type, via):
    """SPEC §8.4: naive UTC columns against now() under any server zone,
    directly and through PgBouncer (the zone is set per transaction)."""
    env = pgenv(tmp_path, pg, column_type, via)
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
    s.assert_no_session_state()


def test_check_advises_the_index_and_checks_types(tmp_path, pg):
    env = pgenv(tmp_path, pg)
    p = env.run("check", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    major = os.path.basename(os.path.dirname(pg_bin()))  # the server the tests run
    assert re.search(r"ok: postgresql %s\.\d+, server zone America/Sao_Paulo, session zone UTC"
                     % major, out)
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


def utc_offset(store, zone):
    """The zone's offset from UTC now, as PostgreSQL itself computes it."""
    return store.sql("SELECT CASE WHEN utc_offset < interval '0' THEN '-' ELSE '+' END"
                     " || to_char(abs(extract(epoch FROM utc_offset)) * interval '1 second',"
                     " 'HH24:MI') FROM pg_timezone_names WHERE name = %s", (zone,))[0][0]


@pytest.mark.parametrize("zone", ["-03:00", "+03:00", "UTC-3", "Etc/GMT+3", "-3"])
def test_zone_offsets_are_refused(tmp_path, pg, zone):
    """PostgreSQL reads -03:00 (and UTC-3, Etc/GMT+3...) with the POSIX sign:
    with LIMPEZA_DB_TIMEZONE=-03:00 a job 0 s old was reaped. Such a zone is
    refused before anything is touched: exit 2 and one line that names the
    setting and the value, says why and what is accepted."""
    env = pgenv(tmp_path, pg)
    s = env.store
    s.add("fresh-run", "running", 0)
    s.add("fresh-queued", "queued", 0)
    for cmd in (["once"], ["check"], ["run"]):
        p = env.run(*cmd, LIMPEZA_DB_TIMEZONE=zone, LIMPEZA_CACHE_FILE="", timeout=10)
        assert p.returncode == 2, (cmd, p.stdout + p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert "LIMPEZA_DB_TIMEZONE '%s'" % zone in lines[0]
        assert "sign reversed" in lines[0] and "America/Sao_Paulo" in lines[0]
    assert s.statuses() == {"fresh-run": "running", "fresh-queued": "queued"}


def test_check_shows_the_session_zone_offset_and_fails_on_an_unknown_zone(tmp_path, pg, via):
    """`limpeza check` shows the offset from UTC of the zone naive
    timestamps are read in (PostgreSQL's own figure), and fails on a name
    PostgreSQL does not know."""
    env = pgenv(tmp_path, pg, via=via)
    for zone in ("America/Sao_Paulo", "Asia/Kolkata", "UTC"):
        p = env.run("check", LIMPEZA_DB_TIMEZONE=zone, LIMPEZA_CACHE_FILE="")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "session zone %s (UTC%s)" % (zone, utc_offset(env.store, zone)) in p.stdout
    assert utc_offset(env.store, "Asia/Kolkata") == "+05:30"
    p = env.run("check", LIMPEZA_DB_TIMEZONE="America/Atlantis", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 1, p.stdout
    assert ("FAIL: database: PostgreSQL does not know the zone 'America/Atlantis'"
            " (LIMPEZA_DB_TIMEZONE)") in p.stdout
    assert "check FAILED" in p.stdout


def test_follower_leaves_the_database_alone(tmp_path, pg, daemons, via):
    """While another instance holds the leader's lock, a daemon cleans only
    its cache file and says so once; once the lock is free it leads at its
    next cycle. With election off it reaps regardless."""
    env = pgenv(tmp_path, pg, via=via)
    env.store.add("run-stale", "running", 900)
    env.write_cache({"c-old": {"status": "queued", "created_at": time.time() - 999}})
    holder = take_leader_lock(env.store)
    try:
        d = daemons(env, LIMPEZA_INTERVAL="200ms")
        log = d.wait_for("Ciclo 4 ")
        assert log.count("👥 Outra instância é a líder: aqui só o cache é limpo") == 1
        assert "Limpeza banco executada" not in log and "👑" not in log
        assert env.store.statuses() == {"run-stale": "running"}
        assert env.read_cache() == "{}"
        # with election off, a daemon reaps regardless
        env2 = Env(tmp_path / "noelect", env.store)
        os.makedirs(env2.tmp, exist_ok=True)
        d2 = daemons(env2, LIMPEZA_INTERVAL="200ms", LIMPEZA_LEADER_KEY="0")
        d2.wait_for("running > 3min: 1")
        assert "Outra instância" not in d2.stderr() and "👑" not in d2.stderr()
        assert env.store.statuses() == {"run-stale": "error"}
        assert d2.stop() == 0
    finally:
        holder.close()
    env.store.add("run-stale-2", "running", 900)
    log = d.wait_for("👑 Líder: esta instância limpa o banco")
    d.wait_for("running > 3min: 1")
    assert env.store.statuses()["run-stale-2"] == "error"
    assert d.stop() == 0
    env.store.assert_no_session_state()


def test_nothing_of_limpeza_reaches_the_api_through_the_pool(tmp_path, pg, daemons):
    """The API's client on PgBouncer's pool (of 2), sampled in one short
    transaction after another while a daemon reaps through the same pool
    and after it exits, always sees the server's own application_name,
    TimeZone, statement_timeout and lock_timeout: limpeza sets each of them
    for its own transactions only. Its transactions still show
    application_name 'limpeza' in pg_stat_activity while they run."""
    env = pgenv(tmp_path, pg, via="pgbouncer")
    s = env.store
    seed_counted_orphans(s, 10, 0.01)
    d = daemons(env, LIMPEZA_INTERVAL="100ms", LIMPEZA_BATCH="5", LIMPEZA_CACHE_FILE="")
    d.wait_for("running > 3min: 10")
    shown = 0
    with s.api_sessions_watched():
        # a stale row every 20 ms keeps limpeza's batches (50 ms each) going;
        # watched for 3 s at least, and on until a sample has caught one of
        # limpeza's transactions (a busy machine may take longer)
        t0 = time.monotonic()
        while shown == 0 or time.monotonic() - t0 < 3:
            if time.monotonic() - t0 > RACE_SECONDS:
                pytest.fail("in %.0f s no sample of pg_stat_activity caught a transaction "
                            "of limpeza's with application_name 'limpeza'" % RACE_SECONDS)
            s.add("more-%f" % time.monotonic(), "running", 900)
            shown += int(pg.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                " AND application_name = 'limpeza'", (s.dbname,))[0][0])
            time.sleep(0.02)
    assert d.stop() == 0
    assert updates_counted(s)[2] == 1
    s.assert_no_session_state()


def test_once_reaps_while_a_daemon_leads(tmp_path, pg, daemons, health, via):
    """Election is for daemons: the operator's quick cleanup
    (limpar_jobs_rapido.sh, `limpeza once --force`) and `limpeza once` reap
    the database even while the leader's lock is held (as it is whenever the
    leading daemon reaps)."""
    env = pgenv(tmp_path, pg, via=via)
    s = env.store
    s.add("stale", "running", 900)
    d = daemons(env, LIMPEZA_INTERVAL="30s", LIMPEZA_CACHE_FILE="")
    d.wait_for("👑 Líder")
    assert s.statuses() == {"stale": "error"}
    s.add("live-run", "running", 5)
    s.add("live-queued", "queued", 5)
    s.add("stale-2", "running", 900)
    health.set_json({"status": "healthy", "jobs_active": 2})
    holder = take_leader_lock(s)
    try:
        p = env.run("once", LIMPEZA_CACHE_FILE="")
        assert p.returncode == 0, p.stderr
        assert "running > 3min: 1, queued > 2min: 0" in p.stderr
        assert "Outra instância" not in p.stderr
        assert s.statuses()["stale-2"] == "error"
        p = subprocess.run([os.path.join(ROOT, "limpar_jobs_rapido.sh"), "--bin", BIN,
                            "--health-url", health.url, "--env-file", str(tmp_path / "none")],
                           capture_output=True, text=True, env=env.env(LIMPEZA_CACHE_FILE=""),
                           timeout=60 * SLOW)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "🚨 Limpeza forçada: 2 jobs terminados" in p.stderr
        assert "Outra instância" not in p.stderr
        assert s.statuses() == {"stale": "error", "stale-2": "error", "live-run": "error",
                                "live-queued": "error"}
    finally:
        holder.close()
    assert d.p.poll() is None
    assert d.stop() == 0
    s.assert_no_session_state()


def seed_counted_orphans(store, n, sleep_s):
    """n stale running rows, and a trigger that records (slowly) EVERY update
    of a row, whatever it changes: a row updated twice is counted twice. It
    also writes each update to the server log, which no rollback undoes."""
    store.sql("""
        CREATE TABLE reaped (job_id text, at timestamptz DEFAULT clock_timestamp());
        CREATE FUNCTION count_reap() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO reaped (job_id) VALUES (NEW.job_id);
            RAISE LOG 'limpeza-test update of %%', NEW.job_id;
            PERFORM pg_sleep(%s);
            RETURN NEW;
        END $$;
        CREATE TRIGGER count_reap AFTER UPDATE ON scans FOR EACH ROW
            EXECUTE FUNCTION count_reap();
        INSERT INTO scans (username, job_id, status, created_at, updated_at)
            SELECT 'u', 'orphan-' || i, 'running', now() - interval '1 hour',
                   now() - interval '1 hour' FROM generate_series(1, %d) i;
    """ % (sleep_s, n))


def updates_counted(store):
    """(updates, distinct rows, most updates of one row) the trigger recorded."""
    return tuple(int(v) for v in store.sql(
        "SELECT coalesce(sum(c), 0), count(*), coalesce(max(c), 0) FROM"
        " (SELECT job_id, count(*) c FROM reaped GROUP BY job_id) x")[0])


def table_scans(store):
    """Sequential scans of the scans table so far, once limpeza's session has
    ended (a backend's counters reach the statistics as it exits)."""
    store.sessions_gone()
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


def roles(log):
    """The daemon's role lines, in order: L leader, F follower."""
    return "".join("L" if "👑" in line else "F" for line in log.splitlines()
                   if "👑 Líder" in line or "👥 Outra instância" in line)


def test_three_daemons_reap_each_orphan_once_and_survive_the_leader(tmp_path, pg, daemons, via):
    """Thousands of orphans, three hosts, a reaping daemon SIGKILLed mid-work;
    directly and through PgBouncer. Every reaping transaction elects anew,
    so the others go on at once; every orphan is updated exactly once (the
    trigger counts every update); afterwards no lock and no setting of
    limpeza's is left on the server."""
    env = pgenv(tmp_path, pg, via=via)
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
        # the queued TTL is short so that a reaped row that a rule still
        # matched would be updated again within the test
        ds.append(daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_BATCH="100",
                          LIMPEZA_QUEUED_TTL="1s", LIMPEZA_LOG_LEVEL="debug",
                          LIMPEZA_CACHE_FILE=cache, LIMPEZA_LOG_FILE=log))
    deadline = time.monotonic() + 30 * SLOW
    while int(s.sql("SELECT count(*) FROM reaped")[0][0]) < 300:
        assert time.monotonic() < deadline, "nothing was reaped"
        time.sleep(0.02)
    # the one that has ended the most rows so far
    victim = max(ds, key=lambda d: len(re.findall(r"Lote no banco: [1-9]", d.stderr())))
    victim.p.kill()
    victim.p.wait()
    done_at_kill = int(s.sql("SELECT count(*) FROM reaped")[0][0])
    assert done_at_kill < n, "the backlog was done before a daemon could be killed"
    # the others finish
    deadline = time.monotonic() + 60 * SLOW
    while time.monotonic() < deadline:
        left = int(s.sql("SELECT count(*) FROM scans WHERE status = 'running'"
                         " AND job_id LIKE 'orphan-%%'")[0][0])
        if left == 0:
            break
        time.sleep(0.1)
    assert left == 0
    # more cycles of the survivors over rows reaped more than a queued TTL ago
    time.sleep(1.5)
    assert updates_counted(s) == (n, n, 1)
    survivors = [d for d in ds if d is not victim]
    assert int(s.sql("SELECT count(*) FROM scans WHERE job_id LIKE 'live-%%'"
                     " AND status = 'running'")[0][0]) == 50
    for d in survivors:
        # the role is logged when it changes: never twice the same in a row
        r = roles(d.stderr())
        assert "LL" not in r and "FF" not in r, r
        assert d.stop() == 0
    s.assert_no_session_state()


def test_leadership_is_taken_in_every_reaping_transaction(tmp_path, pg, daemons):
    """Another instance that takes the leader's lock between two batches of a
    backlog stops this daemon's reaping at its next transaction; when the
    lock is free again, the daemon leads again at once."""
    env = pgenv(tmp_path, pg)
    s = env.store
    seed_counted_orphans(s, 600, 0.002)  # 100 rows a batch: 0.2 s
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_BATCH="100", LIMPEZA_LOG_LEVEL="debug",
                LIMPEZA_CACHE_FILE="")
    d.wait_for("Lote no banco: 100 jobs")
    # waits for the batch in progress to commit
    holder = take_leader_lock(s)
    try:
        held_at = updates_counted(s)[0]
        assert held_at < 600, "the backlog was done before the lock was taken"
        d.wait_for("👥 Outra instância é a líder")
        d.wait_for("Ciclo", count=d.stderr().count("Ciclo") + 5)
        assert updates_counted(s)[0] == held_at
    finally:
        holder.close()
    d.wait_for("👑 Líder", count=2)
    deadline = time.monotonic() + 30 * SLOW
    while updates_counted(s)[0] < 600:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert updates_counted(s) == (600, 600, 1)
    assert roles(d.stderr()) == "LFL"
    assert d.stop() == 0


def test_follower_again_after_a_reconnect(tmp_path, pg, daemons):
    """A daemon that led, lost its connection and reconnected while another
    instance holds the lock follows (and says so) until the lock is free."""
    env = pgenv(tmp_path, pg)
    s = env.store
    s.add("first", "running", 900)
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                LIMPEZA_CACHE_FILE="")
    d.wait_for("running > 3min: 1")
    holder = take_leader_lock(s)
    try:
        # limpeza's is the one client session there but the holder's
        killed = pg.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = %s AND backend_type = 'client backend'"
                        " AND pid <> %s", (s.dbname, holder.get_backend_pid()))
        assert killed[0][0] == 1
        d.wait_for("✅ Banco disponível novamente", timeout=20)
        s.add("second", "running", 900)
        d.wait_for("👥 Outra instância é a líder")
        d.wait_for("Ciclo", count=d.stderr().count("Ciclo") + 5)
        assert s.statuses() == {"first": "error", "second": "running"}
    finally:
        holder.close()
    d.wait_for("running > 3min: 1", count=2)
    assert s.statuses() == {"first": "error", "second": "error"}
    # it reaps at once; the line says so once the role has held 5 s
    d.wait_for("👑 Líder", count=2)
    assert roles(d.stderr()) == "LFL"
    assert d.stop() == 0


def test_outage_is_logged_once_and_survived(tmp_path, daemons):
    """The database stops in the middle of a reaping batch and comes back:
    the cut batch is rolled back whole and done again, nothing twice."""
    cluster = PgCluster()
    try:
        env = pgenv(tmp_path, cluster)
        s = env.store
        seed_counted_orphans(s, 600, 0.01)  # 100 rows a batch: about 1 s
        d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                    LIMPEZA_BATCH="100", LIMPEZA_LOG_LEVEL="debug")
        d.wait_for("Lote no banco: 100 jobs")
        # stop while the next batch is at work: its UPDATE started moments ago
        deadline = time.monotonic() + 10 * SLOW
        while not s.sql("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
                        " AND query LIKE 'UPDATE%%' AND now() - query_start < interval '0.3 s'",
                        (s.dbname,)):
            assert time.monotonic() < deadline, "no batch seen at work"
            time.sleep(0.01)
        cluster.stop("immediate")
        d.wait_for("❌ Erro no banco \\(postgresql\\)")
        # several failing cycles, one error line
        log = d.wait_for("Ciclo", count=d.stderr().count("Ciclo") + 8)
        assert log.count("❌ Erro no banco (postgresql)") == 1
        assert d.p.poll() is None
        stopped_at = os.path.getsize(cluster.logfile)
        cluster.start()
        s.add("after-restart", "running", 900)
        d.wait_for("✅ Banco disponível novamente \\(postgresql\\)", timeout=40)
        d.wait_for("running > 3min: [1-9]", timeout=20)
        deadline = time.monotonic() + 30 * SLOW
        while s.statuses()["after-restart"] != "error" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.statuses()["after-restart"] == "error"
        assert int(s.sql("SELECT count(*) FROM scans WHERE status = 'running'")[0][0]) == 0
        # the server log, which no rollback undoes, saw rows updated before
        # the stop that the database did not keep: the batch the stop cut
        with open(cluster.logfile, encoding="utf-8", errors="replace") as f:
            updated = set(re.findall(r"limpeza-test update of (orphan-\d+)", f.read(stopped_at)))
        kept = {r[0] for r in s.sql("SELECT job_id FROM reaped"
                                    " WHERE at < pg_postmaster_start_time()")}
        cut = updated - kept
        assert cut, "the stop did not land in a batch"
        assert kept <= updated
        # and the database kept each of them once
        assert updates_counted(s) == (601, 601, 1)
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


def test_names_are_told_apart_as_postgresql_does(tmp_path, pg):
    """`check` and the reaping statements name the table the same way
    (quoted: a name is taken as written), so `Scans` and `scans` are two
    tables to both, as they are to PostgreSQL."""
    env = pgenv(tmp_path, pg)
    s = env.store
    s.add("lower", "running", 900)
    # only scans exists: Scans is not found, by check or by the reaper
    p = env.run("check", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="Scans")
    assert p.returncode == 1, p.stdout
    assert "FAIL: database: table Scans not found" in p.stdout
    p = env.run("once", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="Scans")
    assert p.returncode == 1 and 'relation "Scans" does not exist' in p.stderr
    assert s.statuses() == {"lower": "running"}
    # both exist: each name reaches its own table, in check and in reaping
    s.sql('CREATE TABLE "Scans" (LIKE scans INCLUDING ALL);'
          ' INSERT INTO "Scans" (username, job_id, status, created_at, updated_at)'
          " VALUES ('u', 'upper', 'running', now() - interval '1 hour',"
          " now() - interval '1 hour')")
    s.sql('ALTER TABLE "Scans" ALTER error_message TYPE varchar(300)')
    p = env.run("check", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="Scans")
    assert p.returncode == 0, p.stdout
    assert "ok: column Scans.error_message (character varying(300))" in p.stdout
    assert 'ON "Scans" ("updated_at")' in p.stdout
    p = env.run("check", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="scans")
    assert "ok: column scans.error_message (text)" in p.stdout
    p = env.run("once", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="Scans")
    assert p.returncode == 0, p.stderr
    assert s.statuses() == {"lower": "running"}
    assert s.sql('SELECT status FROM "Scans"') == [("error",)]
    p = env.run("once", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="scans")
    assert s.statuses() == {"lower": "error"}
    # a column is named the same way
    p = env.run("check", LIMPEZA_CACHE_FILE="", LIMPEZA_STATUS_COLUMN="Status")
    assert p.returncode == 1 and "FAIL: column scans.Status not found" in p.stdout
    p = env.run("once", LIMPEZA_CACHE_FILE="", LIMPEZA_STATUS_COLUMN="Status")
    assert p.returncode == 1 and 'column "Status" does not exist' in p.stderr


# Passwords as the original project's env files hold them (and worse), each
# as a DATABASE_URL line of backend/.env and the password as the line spells
# it. libpq decides what the password is (psycopg2's parse_dsn is libpq's
# PQconninfoParse).
SECRET_URLS = [
    ("postgresql://{user}:Desfollow-DB2026###@127.0.0.1:{port}/{db}", "Desfollow-DB2026###"),
    ("postgresql://{user}:[Desfollow-DB2026!!!]@127.0.0.1:{port}/{db}",
     "[Desfollow-DB2026!!!]"),
    ("postgresql://{user}:pa?ss&w=rd@127.0.0.1:{port}/{db}", "pa?ss&w=rd"),
    ("postgresql://{user}:sem;i:co#l@127.0.0.1:{port}/{db}", "sem;i:co#l"),
    ("postgresql://{user}:p%23ss-Desfollow@127.0.0.1:{port}/{db}", "p%23ss-Desfollow"),
    ("postgres://{user}@127.0.0.1:{port}/{db}?password=Kq%26Jurx-Wzpt%3D1&sslmode=disable",
     "Kq%26Jurx-Wzpt%3D1"),
    ('"host=127.0.0.1 port={port} dbname={db} user={user} password=\'Desfollow DB 2026 ###\'"',
     "'Desfollow DB 2026 ###'"),
    ("host=127.0.0.1 port={port} dbname={db} user={user} password='two  words-2026'",
     "'two  words-2026'"),
]


def masked(value):
    """The connection string as limpeza shows it: libpq's parse of it, the
    password as ***; a URL stays a URL."""
    from psycopg2.extensions import parse_dsn
    opts = parse_dsn(value)
    if not value.startswith("postgres"):
        return " ".join("%s=%s" % (k, "***" if k == "password" else v) for k, v in opts.items())
    rest = "&".join("%s=%s" % (k, v) for k, v in opts.items()
                    if k not in ("user", "password", "dbname", "host", "port"))
    return "%s://%s:***@%s:%s/%s%s" % (value.split(":", 1)[0], opts["user"], opts["host"],
                                       opts["port"], opts["dbname"], "?" + rest if rest else "")


@pytest.mark.parametrize("template,spelled", SECRET_URLS, ids=range(len(SECRET_URLS)))
def test_secrets_never_printed(tmp_path, pg, daemons, template, spelled):
    """Every command, the log file and the errors of a failing connection
    show the database URL with its password masked, and no part of the
    password: not as libpq reads it, not as the env file spells it, not
    percent-encoded. The password is read from backend/.env as the API's
    own file holds it, and connects for real (scram-sha-256)."""
    from urllib.parse import quote
    from psycopg2.extensions import parse_dsn
    env = pgenv(tmp_path, pg)
    s = env.store
    user = "sec_%s" % s.dbname
    line = template.format(user=user, port=pg.port, db=s.dbname)
    value = line[1:-1] if line.startswith('"') else line
    password = parse_dsn(value)["password"]
    pg.sql("CREATE ROLE %s LOGIN PASSWORD %%s" % user, (password,))
    pg.sql("GRANT ALL ON scans TO %s" % user, dbname=s.dbname)
    os.makedirs(os.path.join(env.tmp, "backend"))
    with open(os.path.join(env.tmp, "backend", ".env"), "w") as f:
        f.write("# Configurações do Banco de Dados (Supabase)\nDATABASE_URL=%s\n\n"
                "SECRET_KEY=not-the-password\n" % line)
    run = dict(DATABASE_URL=None, LIMPEZA_ENV_FILES="backend/.env", LIMPEZA_LOG_LEVEL="debug")
    forbidden = {password, spelled, quote(password, safe=""), quote(password)}
    # and any word of it
    forbidden |= {w for w in re.split(r"[^A-Za-z0-9]+", password)
                  if len(w) >= 4 and not w.isdigit()}

    def clean(text, what):
        for f in forbidden:
            assert f not in text, (what, f, text[-3000:])

    def limpeza(*args):
        p = subprocess.run([BIN, *args], cwd=env.tmp, env=env.env(**run), capture_output=True,
                           text=True, timeout=30 * SLOW)
        clean(p.stdout + p.stderr, args)
        return p

    s.add("stale", "running", 900)
    p = limpeza("once")
    assert p.returncode == 0, p.stderr
    assert s.statuses() == {"stale": "error"}  # libpq got the password from the file
    p = limpeza("check")
    assert p.returncode == 0, p.stdout
    assert "DATABASE_URL=%s\n" % masked(value) in p.stdout
    for args in (["stats"], ["stats", "--json"]):
        p = limpeza(*args)
        assert p.returncode == 0, p.stderr
    d = daemons(env, **run, LIMPEZA_INTERVAL="200ms", cwd=env.tmp)
    text = d.wait_for("Ciclo 2 ")
    assert "| Banco: %s |" % masked(value) in text
    assert d.stop() == 0
    clean(d.stderr(), "run")
    # a failing connection: the server refuses the password
    pg.sql("ALTER ROLE %s PASSWORD 'something-else'" % user)
    for args in (["once"], ["check"], ["stats"], ["stats", "--json"]):
        p = limpeza(*args)
        assert p.returncode == 1
        assert "password authentication failed" in p.stdout + p.stderr, args
    d = daemons(env, **run, LIMPEZA_INTERVAL="200ms", cwd=env.tmp)
    text = d.wait_for("❌ Erro no banco \\(postgresql\\): cannot connect")
    assert d.stop() == 0
    clean(d.stderr(), "run")
    clean(env.log_text(), "log file")
    assert masked(value) in env.log_text()
    pg.sql("DROP OWNED BY %s" % user, dbname=s.dbname)
    pg.sql("DROP ROLE %s" % user)


def test_url_parameters_reach_libpq(tmp_path, pg):
    """URL parameters reach libpq: this server has no SSL."""
    env = pgenv(tmp_path, pg)
    p = env.run("once", DATABASE_URL=env.store.url + "?sslmode=require")
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


class PgProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL, to cut a connection
    of limpeza's at a chosen moment. Each connection is pumped by one thread
    per direction. freeze(data) -> True: from that chunk of limpeza's on,
    nothing more is read from limpeza nor forwarded (a peer that stops
    reading; rcvbuf makes the proxy's receive buffer small, so limpeza's
    sends back up soon). cut(state, msg) -> True: the server's message msg
    is forwarded, then both ends are closed (once). The server's direction
    goes message by message: the URL disables SSL and GSS encryption, so
    every server message is typed."""

    def __init__(self, port, freeze=None, cut=None, rcvbuf=None):
        self.target = port
        self.freeze, self.cut = freeze, cut
        self.frozen, self.was_cut, self.done = (threading.Event(), threading.Event(),
                                                threading.Event())
        self.socks = []
        self.lsock = socket.socket()
        if rcvbuf:
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, dbname):
        return ("postgresql://app:%s@127.0.0.1:%d/%s?sslmode=disable&gssencmode=disable"
                % (APP_PASSWORD, self.port, dbname))

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [c, s]
            threading.Thread(target=self._from_client, args=(c, s), daemon=True).start()
            threading.Thread(target=self._from_server, args=(s, c), daemon=True).start()

    def _from_client(self, c, s):
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    s.shutdown(socket.SHUT_WR)
                    return
                if self.freeze and not self.frozen.is_set() and self.freeze(data):
                    self.frozen.set()
                    self.done.wait()
                    return
                s.sendall(data)
        except OSError:
            pass

    def _from_server(self, s, c):
        buf, state = b"", {}
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    c.shutdown(socket.SHUT_WR)
                    return
                buf += data
                while len(buf) >= 5:
                    end = 1 + struct.unpack("!I", buf[1:5])[0]
                    if len(buf) < end:
                        break
                    msg, buf = buf[:end], buf[end:]
                    c.sendall(msg)
                    if self.cut and not self.was_cut.is_set() and self.cut(state, msg):
                        self.was_cut.set()
                        for x in (c, s):
                            x.shutdown(socket.SHUT_RDWR)
                        return
        except OSError:
            pass

    def close(self):
        self.done.set()
        self.lsock.close()
        for x in self.socks:
            x.close()


def test_a_database_that_stops_reading_cannot_hold_limpeza(tmp_path, pg):
    """A batch of 300,000 addresses (about 3.6 MB) sent to a peer that stops
    reading as the UPDATE starts: the send backs up. limpeza gives up within
    its client deadline (35 s, so this test takes about 40 s) with a
    database error; it used to block in poll() for ever."""
    env = pgenv(tmp_path, pg)
    s = env.store
    s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
          " SELECT 'u', 'o-' || i, 'running', now() - interval '1 hour',"
          " now() - interval '1 hour' FROM generate_series(1, 300000) i")
    proxy = PgProxy(pg.port, freeze=lambda data: b"UPDATE" in data, rcvbuf=4096)
    try:
        t0 = time.monotonic()
        p = env.run("once", DATABASE_URL=proxy.url(s.dbname), LIMPEZA_CACHE_FILE="",
                    LIMPEZA_BATCH="1000000", timeout=80)
        took = time.monotonic() - t0
        assert proxy.frozen.is_set()
    finally:
        proxy.close()
    assert p.returncode == 1, p.stderr
    assert ("❌ Erro no banco (postgresql): the database took nothing more of what was sent"
            " within 35s") in p.stderr, p.stderr
    assert took < 50 * SLOW, took
    assert int(s.sql("SELECT count(*) FROM scans WHERE status = 'running'")[0][0]) == 300000


def test_a_server_that_never_answers_the_startup_costs_ten_seconds(tmp_path, pg):
    """A server that accepts the connection and never answers, with
    connect_timeout=0 (libpq's "wait for ever") in the URL: `limpeza once`
    gives up at its own connect deadline (10 s)."""
    env = pgenv(tmp_path, pg)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshake; nobody answers
    try:
        url = "postgresql://app:%s@127.0.0.1:%d/%s?connect_timeout=0" % (
            APP_PASSWORD, silent.getsockname()[1], env.store.dbname)
        t0 = time.monotonic()
        p = env.run("once", DATABASE_URL=url, LIMPEZA_CACHE_FILE="", timeout=30)
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert p.returncode == 1, p.stderr
    assert "❌ Erro no banco (postgresql): cannot connect" in p.stderr, p.stderr
    assert "10s" in p.stderr and APP_PASSWORD not in p.stderr
    assert 9.5 < took < 10 + 3 * SLOW, took



def after_a_batch_commit(state, msg):
    """The server's CommandComplete of a batch's COMMIT (after its UPDATE's)."""
    if msg[:1] == b"C" and msg[5:].startswith(b"UPDATE"):
        state["update"] = True
    return msg[:1] == b"C" and msg[5:].startswith(b"COMMIT") and state.get("update", False)


def once_cut(tmp_path, pg, via, cut):
    """Three stale rows and one `once` through a proxy that cuts its
    connection where cut says: (env, store, the finished process)."""
    env = pgenv(tmp_path, pg, via=via)
    s = env.store
    for i in range(3):
        s.add("stale-%d" % i, "running", 900)
    proxy = PgProxy(s.bouncer.port if s.bouncer else pg.port, cut=cut)
    try:
        p = env.run("once", DATABASE_URL=proxy.url(s.dbname), LIMPEZA_CACHE_FILE="",
                    LIMPEZA_LOG_LEVEL="debug")
        assert proxy.was_cut.is_set()
    finally:
        proxy.close()
    return env, s, p


def test_a_batch_committed_as_the_connection_drops_is_counted(tmp_path, pg, via):
    """The connection drops right after the server confirmed a batch's
    COMMIT, before the pipeline's last answer (a proxy in front of
    PostgreSQL, or of PgBouncer, cuts it there): the rows the database kept
    are logged and counted all the same, and the step still reports the
    lost connection."""
    env, s, p = once_cut(tmp_path, pg, via, after_a_batch_commit)
    assert s.statuses() == {"stale-0": "error", "stale-1": "error", "stale-2": "error"}
    assert p.returncode == 1, p.stderr
    assert re.search(r"Lote no banco: 3 jobs em \d+ ms", p.stderr), p.stderr
    for i in range(3):
        assert "🧹 Job running encerrado no banco: stale-%d" % i in p.stderr
    assert "🧹 Limpeza banco executada: running > 3min: 3, queued > 2min: 0" in p.stderr
    assert "❌ Erro no banco (postgresql): connection lost" in p.stderr


def after_a_batch_update(state, msg):
    return msg[:1] == b"C" and msg[5:].startswith(b"UPDATE")


def test_a_batch_cut_between_its_update_and_its_commit(tmp_path, pg, via):
    """The connection drops after the batch's UPDATE answered and before
    its COMMIT did: whether the rows ended is not known to limpeza, so
    none is counted, the step fails with the lost connection, and (under
    the sanitizers) the UPDATE's result that had come whole is freed, not
    leaked. The next run finds the rows ended or ends them."""
    env, s, p = once_cut(tmp_path, pg, via, after_a_batch_update)
    assert p.returncode == 1, p.stderr
    assert "❌ Erro no banco (postgresql): connection lost" in p.stderr, p.stderr
    assert "Job running encerrado no banco" not in p.stderr
    p = env.run("once", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0, p.stderr
    assert s.statuses() == {"stale-0": "error", "stale-1": "error", "stale-2": "error"}


def test_two_daemons_do_not_flap_between_roles(tmp_path, pg, daemons, via):
    """Two daemons at 100 ms over one table for 6 s while stale rows arrive
    all the time. Every reaping transaction elects anew, so which daemon
    reaps may change from one cycle to the next; the 👑/👥 lines tell a
    change of role only once it has held for 3 elections and 5 s, so each
    daemon says one or two, not one per turn. No row is updated twice."""
    env = pgenv(tmp_path, pg, via=via)
    s = env.store
    seed_counted_orphans(s, 0, 0.005)  # a batch of 3 rows holds the lock 15 ms
    ds = []
    for i in range(2):
        ds.append(daemons(env, LIMPEZA_INTERVAL="100ms", LIMPEZA_BATCH="3",
                          LIMPEZA_CACHE_FILE="",
                          LIMPEZA_LOG_FILE=os.path.join(env.tmp, "log%d" % i, "limpeza.log")))
    added = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        s.add("stale-%d" % added, "running", 900)
        added += 1
        time.sleep(0.01)
    deadline = time.monotonic() + 20 * SLOW
    while updates_counted(s)[1] < added:
        assert time.monotonic() < deadline, (updates_counted(s), added)
        time.sleep(0.05)
    for d in ds:
        assert d.stop() == 0
    assert updates_counted(s) == (added, added, 1)
    lines = [roles(d.stderr()) for d in ds]
    # the first answer, and at most one change that held for 5 s
    assert all(1 <= len(r) <= 2 for r in lines), lines


@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
def test_infinite_timestamps_are_neither_reaped_nor_break_the_stats(tmp_path, pg, daemons,
                                                                   column_type):
    """A row whose updated_at is 'infinity' or '-infinity' (a value
    PostgreSQL accepts in any timestamp column) has no age: it is never
    reaped, and it does not fail the statistics every cycle (which would
    look like an unreachable store). The stale row beside them is reaped,
    and under the sanitizers no conversion of an infinite age is made
    (undefined behaviour in C)."""
    env = pgenv(tmp_path, pg, column_type)
    s = env.store
    for job_id, status, ts in (("run-inf", "running", "infinity"),
                               ("run-neg", "running", "-infinity"),
                               ("q-inf", "queued", "infinity"),
                               ("q-neg", "queued", "-infinity")):
        s.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
              " VALUES ('u', %s, %s, %s, %s)", (job_id, status, ts, ts))
    s.add("run-stale", "running", 900)
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    assert "running > 3min: 1, queued > 2min: 0" in p.stderr, p.stderr
    assert s.statuses() == {"run-inf": "running", "run-neg": "running", "q-inf": "queued",
                            "q-neg": "queued", "run-stale": "error"}
    p = env.run("stats", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    st = json.loads(p.stdout)
    assert st["database"]["active"] == 4, st
    p = env.run("stats")
    assert p.returncode == 0, p.stdout + p.stderr
    d = daemons(env, LIMPEZA_INTERVAL="200ms")
    d.wait_for("Ciclo 3 ")
    assert d.stop() == 0
    text = d.stderr()
    assert "Erro no banco" not in text and "❌" not in text, text
    assert s.statuses()["run-inf"] == "running"


@pytest.mark.parametrize("pad", ["", "x"], ids=["even", "odd"])
def test_a_long_non_ascii_server_error_is_alerted_and_never_stops_the_daemon(tmp_path, pg,
                                                                             daemons, pad):
    """A PostgreSQL error of 600-odd bytes of non-ASCII text (a trigger's
    message echoing a user's name, as a constraint's DETAIL does) fails
    every batch: the third failing cycle's alert reaches the webhook as
    valid JSON, the text cut between characters, and the daemon goes on.
    With and without one more byte before the text, so that a cut at a
    fixed length falls inside a character in one of the two."""
    from test_observability import Webhook, strict_lines
    env = pgenv(tmp_path, pg)
    s = env.store
    s.sql("""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'recusado para %s%%', repeat('ã', 300);
        END $$;
        CREATE TRIGGER refuse BEFORE UPDATE ON scans FOR EACH ROW
            EXECUTE FUNCTION refuse();
    """ % pad)
    s.add("run-stale", "running", 900)
    hook = Webhook()
    try:
        d = daemons(env, LIMPEZA_INTERVAL="100ms", LIMPEZA_ERROR_BACKOFF="100ms",
                    LIMPEZA_ALERT_WEBHOOK=hook.url, LIMPEZA_CACHE_FILE="")
        assert hook.wait(1) == ["store_unreachable"], d.stderr()[-2000:]
        msg = hook.alerts[0][1]["message"]
        assert "ãããã" in msg and "\ufffd" not in msg, msg
        d.wait_for("Ciclo 5 ")
        assert d.p.poll() is None, d.stderr()[-2000:]
        assert d.stop() == 0
    finally:
        hook.server.shutdown()
        hook.server.server_close()
    assert any("recusado para %sãããã" % pad in line for line in strict_lines(env.log))
    assert s.statuses() == {"run-stale": "running"}
