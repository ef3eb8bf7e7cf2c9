"""What an outside audit found the proof did not cover (issue 22, item 6):
counts with unequal numbers, the PostgreSQL window between the look and the
batch, every follow-on deadline on both stores, offsets that are not whole
hours, and every side effect of a dry run.

The counts use unequal fixtures on purpose (3 stale running rows and 1
stale queued one; 2 cache orphans and 1 expired queued job): with 1 and 1
a swapped counter reads the same."""

import http.server
import json
import os
import re
import socketserver
import subprocess
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BIN, SLOW, Env, PgStore, pg_cluster
from pgcluster import free_port

# ---------------------------------------------------------------- helpers


def samples(text):
    """{(name, frozenset(labels)): value}, parsed strictly by prometheus_client."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(sm, name, **labels):
    return sm.get((name, frozenset(labels.items())))


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


class Webhook:
    """Counts every request made to it, whatever its method."""

    def __init__(self):
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            do_POST = do_GET = do_PUT = _any

        self.server = socketserver.TCPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d/hook/secret-token" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def store_label(env):
    return "sqlite" if env.store.url.startswith("sqlite:") else "postgresql"


# ------------------------------------------------------- unequal counts

CACHE_ORPHANS = ("c-run-1", "c-run-2")
CACHE_EXPIRED = ("c-q-1",)
DB_ORPHANS = ("db-run-1", "db-run-2", "db-run-3")
DB_EXPIRED = ("db-q-1",)


def unequal_fixture(env):
    now = time.time()
    for j in DB_ORPHANS:
        env.store.add(j, "running", 900)
    for j in DB_EXPIRED:
        env.store.add(j, "queued", 900)
    env.store.add("db-live-1", "running", 0)
    env.store.add("db-live-2", "running", 0)
    jobs = {j: {"status": "running", "start_time": now - 999} for j in CACHE_ORPHANS}
    jobs.update({j: {"status": "queued", "created_at": now - 999} for j in CACHE_EXPIRED})
    jobs["c-live"] = {"status": "running", "start_time": now}
    jobs["c-done"] = {"status": "done"}
    env.write_cache(jobs)


def test_unequal_counts_in_stats_before_and_after(senv, daemons):
    """`stats` (text and --json) counts each status and the cache's stale
    jobs apart: 5 running and 1 queued rows, 3 stale cache jobs; after the
    reaping, 4 in the error status and 2 running, none stale."""
    env = senv
    unequal_fixture(env)
    p = env.run("stats", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["database"]["by_status_24h"] == {"queued": 1, "running": 5}
    assert st["database"]["active"] == 6
    assert st["cache"]["stale"] == 3
    assert st["cache"]["active"] == 1
    assert st["cache"]["finished"] == 1
    p = env.run("stats")
    assert p.returncode == 0, p.stderr
    assert '(24 h): {"queued":1,"running":5}\n' in p.stdout, p.stdout
    assert "database: active jobs: 6, oldest: " in p.stdout
    assert "cache: active jobs: 1 (+3 stale), " in p.stdout

    d = daemons(env, LIMPEZA_INTERVAL="100ms", LIMPEZA_CACHE_RETENTION="0")
    d.wait_for("Sistema limpo")
    assert d.stop() == 0

    st = json.loads(env.run("stats", "--json").stdout)
    assert st["database"]["by_status_24h"] == {"error": 4, "running": 2}
    assert st["database"]["active"] == 2
    assert st["cache"]["stale"] == 0
    assert st["cache"]["active"] == 1
    p = env.run("stats")
    assert '(24 h): {"error":4,"running":2}\n' in p.stdout, p.stdout
    assert "database: active jobs: 2, oldest: " in p.stdout
    assert "cache: active jobs: 1 (+0 stale), " in p.stdout


def test_unequal_counts_in_logs_metrics_and_report(senv, daemons):
    """The first cycle's lines, the metrics per store, state and reason, and
    the 10th cycle's report each carry their own count: 2 and 1 in the
    cache, 3 and 1 in the database, 7 in all."""
    env = senv
    unequal_fixture(env)
    port = free_port()
    d = daemons(env, LIMPEZA_INTERVAL="100ms", LIMPEZA_CACHE_RETENTION="0",
                LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port)
    log = d.wait_for(r"📊 Relatório \(Ciclo 10\)", timeout=30)
    first = log.split("🔄 Ciclo 2 ")[0]

    orphans = re.findall(r"- INFO - 🧹 Job órfão no cache limpo: (\S+) \(rodando há \d+s\)$",
                         first, re.M)
    assert sorted(orphans) == list(CACHE_ORPHANS), first
    expired = re.findall(r"- INFO - 🧹 Job queued expirado no cache: (\S+)$", first, re.M)
    assert expired == list(CACHE_EXPIRED), first
    assert re.search(r"- INFO - ✅ Cache limpo: 3 jobs órfãos removidos$", first, re.M), first
    assert re.search(r"- INFO - 🧹 Limpeza banco executada: running > 3min: 3, "
                     r"queued > 2min: 1$", first, re.M), first
    assert re.search(r"- INFO - ✅ Limpeza executada: 7 jobs processados$", first, re.M), first
    # the report without an API counts every job ended since the start
    assert re.search(r"- INFO - 📊 Relatório \(Ciclo 10\): 7 jobs limpos desde o início$",
                     log, re.M), log[-3000:]
    # nothing else was ever ended: no second summary line
    assert log.count("jobs processados") == 1, log[-3000:]

    sm = samples(scrape(port))
    kind = store_label(env)
    want = {("cache", "running", "orphan"): 2, ("cache", "queued", "expired"): 1,
            (kind, "running", "orphan"): 3, (kind, "queued", "expired"): 1}
    got = {(dict(k[1])["store"], dict(k[1])["state"], dict(k[1])["reason"]): v
           for k, v in sm.items() if k[0] == "limpeza_jobs_reaped_total" and v}
    assert got == want
    assert env.store.statuses() == {**{j: "error" for j in DB_ORPHANS + DB_EXPIRED},
                                    "db-live-1": "running", "db-live-2": "running"}
    assert sorted(json.loads(env.read_cache())) == ["c-done", "c-live"]


# ------------------------------------------------- follow-on deadlines


@pytest.mark.parametrize("longer", ["running", "queued"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_every_follow_on_deadline_uses_its_own_ttl(tmp_path, daemons, kind, longer):
    """Two fresh rows, one running and one queued, with unequal TTLs (4 s and
    8 s) and a regular cycle 120 s away. The first cycle's statistics wake
    limpeza for the row with the shorter TTL; once it is ended, the store
    computes the next deadline (next_due) for the other row. Computed with
    the wrong TTL it comes 4 s early, that wake-up ends nothing and no
    other comes before the next cycle: the row is ended by a second
    deadline wake-up only if its own TTL was used."""
    store = PgStore(pg_cluster()) if kind == "postgresql" else None
    env = Env(tmp_path, store)
    shorter = "queued" if longer == "running" else "running"
    env.store.add("short", shorter, 0)
    env.store.add("long", longer, 0)
    ttl = {shorter: "4s", longer: "8s"}
    d = daemons(env, LIMPEZA_INTERVAL="120s", LIMPEZA_CACHE_FILE="",
                LIMPEZA_RUNNING_TTL=ttl["running"], LIMPEZA_QUEUED_TTL=ttl["queued"])
    log = d.wait_for("Sistema limpo")
    # the set-up: the first cycle came before either row was due
    assert env.store.statuses() == {"short": shorter, "long": longer}, log
    log = d.wait_for("⏰ Prazo atingido: 1 jobs limpos fora do ciclo", count=2, timeout=40)
    assert env.store.statuses() == {"short": "error", "long": "error"}
    assert "🔄 Ciclo 2 " not in log
    assert log.count("⏰ Prazo atingido") == 2
    # the short one first: ending a row stamps its updated time
    assert env.store.row("short")["updated_at"] < env.store.row("long")["updated_at"]


# ------------------------------------ the PostgreSQL look-then-batch window

HOOKS = """
CREATE SCHEMA hook;
GRANT USAGE ON SCHEMA hook TO app;
CREATE SEQUENCE hook.looks;
CREATE SEQUENCE hook.setups;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE hook.looks, hook.setups TO app;
-- now() as limpeza's statements call it: counts the calls. Only the look
-- (and later the batch and the statistics) call it.
CREATE FUNCTION hook.now() RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM nextval('hook.looks');
    RETURN pg_catalog.now();
END $$;
-- set_config() as each transaction's set-up calls it first: waits, before
-- the transaction has touched the table, for the test's advisory lock
-- numbered after the set-ups so far.
CREATE FUNCTION hook.set_config(name text, value text, is_local boolean)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF name = 'TimeZone' THEN
        PERFORM pg_advisory_xact_lock_shared(4242, nextval('hook.setups')::int);
    END IF;
    RETURN pg_catalog.set_config(name, value, is_local);
END $$;
"""


def waiting_on(admin, k):
    cur = admin.cursor()
    cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 4242"
                " AND objid = %s AND NOT granted", (k,))
    return cur.fetchone()[0] > 0


def looks(admin):
    cur = admin.cursor()
    cur.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM hook.looks")
    return cur.fetchone()[0]


@pytest.mark.parametrize("change", ["progress", "address-reused"])
def test_row_changed_between_the_look_and_the_batch_is_not_ended(tmp_path, pg, change):
    """`once` on PostgreSQL with one stale running row. Between the look that
    found its address (ctid) and the batch that ends it, the test holds
    limpeza's batch transaction in its set-up (a PostgreSQL-side hook: a
    set_config() earlier on limpeza's search_path that waits on an advisory
    lock the test holds; its now() tells that the look has run), and
    either the row gets progress (updated_at = now()) or it is deleted
    and a new live row of the same job id takes its address (TRUNCATE, then
    INSERT: the same ctid). The batch re-checks status and age on the
    row it locks: the row must not be ended. Deterministic: limpeza waits
    on the test's lock, not on timing."""
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    s.add("job", "running", 900)
    pg.sql(HOOKS, dbname=s.dbname)
    pg.sql("ALTER ROLE app IN DATABASE %s SET search_path = hook, pg_catalog, public"
           % s.dbname)
    admin = pg.admin(s.dbname)
    try:
        cur = admin.cursor()
        cur.execute("SELECT ctid::text FROM scans WHERE job_id = 'job'")
        ctid = cur.fetchone()[0]
        for k in range(1, 41):
            cur.execute("SELECT pg_advisory_lock(4242, %s)", (k,))
        p = subprocess.Popen([BIN, "once"], env=env.env(LIMPEZA_CACHE_FILE="",
                                                        LIMPEZA_LOG_LEVEL="debug"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen, k, hit = 0, 1, False
            deadline = time.monotonic() + 30 * SLOW
            while k <= 40:
                while not waiting_on(admin, k):
                    assert p.poll() is None, p.communicate()
                    assert time.monotonic() < deadline, "limpeza never reached set-up %d" % k
                    time.sleep(0.01)
                n = looks(admin)
                if n > seen and seen == 0 and not hit:
                    # the look has run: this set-up opens the batch
                    hit = True
                    if change == "progress":
                        cur.execute("UPDATE scans SET updated_at = now() AT TIME ZONE 'UTC'"
                                    " WHERE job_id = 'job'")
                    else:
                        cur.execute("TRUNCATE scans")
                        cur.execute("INSERT INTO scans (username, job_id, status, created_at,"
                                    " updated_at) VALUES ('u-job', 'job', 'running',"
                                    " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')")
                        cur.execute("SELECT ctid::text FROM scans WHERE job_id = 'job'")
                        assert cur.fetchone()[0] == ctid  # the same address
                    cur.execute("SELECT pg_advisory_unlock_all()")
                    break
                seen = n
                cur.execute("SELECT pg_advisory_unlock(4242, %s)", (k,))
                k += 1
            assert hit, "the look never ran"
            out, err = p.communicate(timeout=30 * SLOW)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        # the window was hit: the look found the row, the batch ended none
        assert "Busca no banco: 1 jobs vencidos" in err, err
        assert re.search(r"Lote no banco: 0 jobs em \d+ ms", err), err
        assert "🧹 Limpeza banco executada: running > 3min: 0, queued > 2min: 0" in err, err
        row = s.row("job")
        assert row["status"] == "running" and row["error_message"] is None, row
        assert s.age("job") < 600
    finally:
        admin.close()
        pg.sql("ALTER ROLE app IN DATABASE %s RESET search_path" % s.dbname)


# ----------------------------------------- offsets that are not whole hours


def test_offsets_with_minutes_in_the_cache_file(env):
    """Cache times in +05:30, -03:30 and +05:45: each job 150 s old (stale
    only past 180 s) is kept, each 210 s old is reaped. Read as whole
    hours, +05:30 and +05:45 would be 30 or 45 minutes off and the -03:30
    job 30 minutes off the other way."""
    from datetime import datetime, timedelta, timezone
    now = datetime.now(timezone.utc)
    jobs = {}
    for name, off in (("ist", (5, 30)), ("nst", (-3, -30)), ("npt", (5, 45))):
        tz = timezone(timedelta(hours=off[0], minutes=off[1]))
        for age in (150, 210):
            t = (now - timedelta(seconds=age)).astimezone(tz)
            jobs["%s-%d" % (name, age)] = {"status": "running", "start_time": t.isoformat()}
    assert "+05:30" in jobs["ist-150"]["start_time"]
    assert "-03:30" in jobs["nst-150"]["start_time"]
    assert "+05:45" in jobs["npt-150"]["start_time"]
    env.write_cache(jobs)
    p = env.run("once", DATABASE_URL="")
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads(env.read_cache())) == ["ist-150", "npt-150", "nst-150"], p.stderr
    ages = dict(re.findall(r"🧹 Job órfão no cache limpo: (\S+) \(rodando há (\d+)s\)", p.stderr))
    assert sorted(ages) == ["ist-210", "npt-210", "nst-210"]
    assert all(210 <= int(a) < 210 + 20 * SLOW for a in ages.values()), ages


# ------------------------------------------------ a dry run changes nothing


def snapshot_rows(env):
    if env.store.url.startswith("sqlite:"):
        with env.store.connect() as db:
            return db.execute("SELECT * FROM scans ORDER BY id").fetchall()
    return env.store.sql("SELECT * FROM scans ORDER BY id")


def directory(env):
    out = {}
    for name in os.listdir(env.tmp):
        path = os.path.join(env.tmp, name)
        if os.path.isfile(path) and not name.startswith("stderr-") and not name.endswith(".db") \
                and not name.startswith("jobs.db"):
            st = os.stat(path)
            with open(path, "rb") as f:
                out[name] = (st.st_ino, st.st_mtime_ns, f.read())
    return out


def test_dry_run_has_no_side_effect(senv, health, daemons):
    """`once --dry-run --force`, `stats`, and a daemon with LIMPEZA_DRY_RUN=1
    for three cycles while the API reports too many jobs: every job, row
    and file is as it was, byte for byte (the cache file's inode and mtime
    too, no temporary file made), the leftover of a killed run
    (`.NAME.limpeza-XXXXXX`) is still there, and the webhook got no
    request. Then a real `once` shows that each of these would have
    changed: the leftover goes, the rows end, the alert goes out."""
    env = senv
    unequal_fixture(env)
    hook = Webhook()
    try:
        leftover = os.path.join(env.tmp, ".desfollow_jobs.json.limpeza-Ab3xQ9")
        with open(leftover, "w") as f:
            f.write('{"writer-job": {"status": "done"}}')
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
        health.set_json({"status": "healthy", "jobs_active": 9})
        rows, files = snapshot_rows(env), directory(env)
        assert set(files) == {"desfollow_jobs.json", os.path.basename(leftover)}
        over = dict(LIMPEZA_HEALTH_URL=health.url, LIMPEZA_ALERT_WEBHOOK=hook.url,
                    LIMPEZA_CACHE_RETENTION="1s")

        p = env.run("once", "--dry-run", "--force", **over)
        assert p.returncode == 0, p.stderr
        assert "🧪 Simulação" in p.stderr
        p = env.run("stats", **over)
        assert p.returncode == 0, p.stderr
        # a dry run asks the API only with --health (issue 21)
        d = daemons(env, "--health", LIMPEZA_INTERVAL="100ms", LIMPEZA_DRY_RUN="1", **over)
        d.wait_for("🔄 Ciclo 4 ")
        assert d.stop() == 0
        assert "seria terminado no cache (limpeza forçada)" in d.stderr()

        assert snapshot_rows(env) == rows
        assert directory(env) == files
        assert hook.requests == []

        # the same without the dry run: each of them changes
        p = env.run("once", "--force", **over)
        assert p.returncode == 0, p.stderr
        assert not os.path.exists(leftover)
        assert snapshot_rows(env) != rows
        assert directory(env)["desfollow_jobs.json"] != files["desfollow_jobs.json"]
        deadline = time.monotonic() + 10 * SLOW
        while not hook.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [json.loads(b)["event"] for _, b in hook.requests] == ["forced_cleanup"]
    finally:
        hook.close()
