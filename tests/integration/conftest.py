"""Shared fixtures: the limpeza binary, a job store, a cache file, a health server, a daemon."""

import collections
import contextlib
import http.server
import json
import os
import re
import signal
import socketserver
import sqlite3
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from pgcluster import APP_PASSWORD

BIN = os.environ.get("LIMPEZA_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "limpeza")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SANITIZED = os.environ.get("LIMPEZA_SANITIZED") == "1"
# Sanitized binaries start and run slower; waits stretch, assertions do not.
SLOW = 4 if SANITIZED else 1
# How long a race test may keep going to see the race it needs. Generous:
# on an idle machine the race comes within a second; the bound is there so
# that a race that never comes fails with its reason, not a hang.
RACE_SECONDS = float(os.environ.get("RACE_SECONDS", "120")) * SLOW
# CI runs as root on a machine where every fault can be set up.
CI = os.environ.get("CI") == "true"


def cannot_set_up(reason):
    """A test that cannot set up its fault skips, loudly; under CI it fails,
    so a row of RELIABILITY.md is never silently left unchecked."""
    if CI:
        pytest.fail("cannot set up the fault under CI: " + reason, pytrace=False)
    pytest.skip(reason)


def utc(delta_s=0.0):
    """SQLAlchemy's text form of utcnow() + delta_s."""
    t = datetime.now(timezone.utc) + timedelta(seconds=delta_s)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteStore:
    """The API's scans table in an embedded SQLite file."""

    def __init__(self, path):
        self.path = path
        self.url = "sqlite:///" + path  # path is absolute: sqlite:////...
        with open(os.path.join(ROOT, "tests/fixtures/scans_sqlite.sql")) as f:
            schema = f.read()
        with self.connect() as db:
            db.executescript(schema)

    def connect(self):
        return sqlite3.connect(self.path, timeout=10)

    def add(self, job_id, status, updated_age_s=0.0, created_age_s=None):
        """A row whose updated_at is updated_age_s seconds in the past."""
        if created_age_s is None:
            created_age_s = updated_age_s
        with self.connect() as db:
            db.execute(
                "INSERT INTO scans (username, job_id, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                ("u-" + job_id, job_id, status, utc(-created_age_s), utc(-updated_age_s)))

    def row(self, job_id):
        with self.connect() as db:
            db.row_factory = sqlite3.Row
            r = db.execute("SELECT * FROM scans WHERE job_id = ?", (job_id,)).fetchone()
            return dict(r) if r else None

    def statuses(self):
        with self.connect() as db:
            return dict(db.execute("SELECT job_id, status FROM scans").fetchall())

    def age(self, job_id):
        with self.connect() as db:
            return db.execute("SELECT (julianday('now') - julianday(updated_at)) * 86400"
                              " FROM scans WHERE job_id = ?", (job_id,)).fetchone()[0]

    def sql(self, query, args=()):
        with self.connect() as db:
            return db.execute(query, args).fetchall()


class PgStore:
    """The API's scans table (SPEC §9's real shape) in a database of its own.
    limpeza reaches it directly, or with via="pgbouncer" through the run's
    PgBouncer in transaction mode; the test's own queries go direct."""

    counter = 0

    def __init__(self, cluster, column_type="timestamp", via="direct"):
        PgStore.counter += 1
        self.cluster = cluster
        self.via = via
        self.dbname = "t%d_%d" % (os.getpid(), PgStore.counter)
        with open(os.path.join(ROOT, "tests/fixtures/scans_pg.sql")) as f:
            schema = f.read()
        if column_type != "timestamp":
            schema += ("\nALTER TABLE scans ALTER created_at TYPE %s USING created_at AT TIME ZONE 'UTC',"
                       " ALTER updated_at TYPE %s USING updated_at AT TIME ZONE 'UTC';"
                       % (column_type, column_type))
        cluster.create_db(self.dbname, schema)
        self.bouncer = pg_bouncer(cluster) if via == "pgbouncer" else None
        self.url = (self.bouncer or cluster).url(self.dbname)

    def connect(self):
        return self.cluster.app(self.dbname)

    def sql(self, query, args=None):
        return self.cluster.sql(query, args, dbname=self.dbname, as_app=True)

    def add(self, job_id, status, updated_age_s=0.0, created_age_s=None):
        if created_age_s is None:
            created_age_s = updated_age_s
        # The session zone is UTC: a naive column gets UTC, as the API writes it.
        self.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at) VALUES"
                 " (%s, %s, %s, now() - make_interval(secs => %s), now() - make_interval(secs => %s))",
                 ("u-" + job_id, job_id, status, created_age_s, updated_age_s))

    def row(self, job_id):
        c = self.connect()
        try:
            cur = c.cursor()
            cur.execute("SELECT * FROM scans WHERE job_id = %s", (job_id,))
            r = cur.fetchone()
            return dict(zip([d[0] for d in cur.description], r)) if r else None
        finally:
            c.close()

    def age(self, job_id):
        """Seconds since the row's updated_at, by the database's clock."""
        return float(self.sql("SELECT extract(epoch FROM now() - updated_at) FROM scans"
                              " WHERE job_id = %s", (job_id,))[0][0])

    def statuses(self):
        return dict(self.sql("SELECT job_id, status FROM scans"))

    # What an API-style client's session holds that limpeza must not change.
    SESSION_SHOW = ("SELECT current_setting('statement_timeout'),"
                    " current_setting('lock_timeout'), current_setting('TimeZone'),"
                    " current_setting('application_name')")

    def server_settings(self):
        """SESSION_SHOW as the server gives it to a client of its own."""
        c = psycopg2.connect(host="127.0.0.1", port=self.cluster.port, user="app",
                             password=APP_PASSWORD, dbname=self.dbname)
        try:
            cur = c.cursor()
            cur.execute(self.SESSION_SHOW)
            return cur.fetchone()
        finally:
            c.close()

    def assert_no_session_state(self):
        """What limpeza may leave on the server once it has exited (SPEC §2):
        no advisory lock, and on every server connection of PgBouncer's pool
        an API-style client sees the server's own settings."""
        locks = self.cluster.sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND d.datname = %s", (self.dbname,))[0][0]
        assert locks == 0, "%d advisory locks left in %s" % (locks, self.dbname)
        if self.bouncer is None:
            return  # a direct session ends with limpeza
        own = self.server_settings()
        # one open transaction per server connection the pool may hold,
        # so every one of them answers
        clients = [self.bouncer.connect(self.dbname) for _ in range(self.bouncer.pool_size)]
        try:
            seen = []
            for c in clients:
                c.autocommit = False
                cur = c.cursor()
                cur.execute(self.SESSION_SHOW)
                seen.append(cur.fetchone())
            assert seen == [own] * len(clients), (seen, own)
        finally:
            for c in clients:
                c.close()

    @contextlib.contextmanager
    def api_sessions_watched(self):
        """While the block runs, an API-style client on PgBouncer's pool
        reads SESSION_SHOW in one short transaction after another (each may
        run on another server connection); at the end every sample must be
        the server's own settings. Yields the samples (a Counter)."""
        own = self.server_settings()
        seen = collections.Counter()
        stop = threading.Event()

        def sample():
            c = self.bouncer.connect(self.dbname)
            c.autocommit = False
            try:
                while not stop.is_set():
                    cur = c.cursor()
                    cur.execute(self.SESSION_SHOW)
                    seen[cur.fetchone()] += 1
                    c.commit()
            finally:
                c.close()

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield seen
        finally:
            stop.set()
            t.join(10)
        assert sum(seen.values()) >= 50, seen
        foreign = {k: v for k, v in seen.items() if k != own}
        assert not foreign, "the API's client saw %r (the server's own: %r)" % (foreign, own)

    def sessions_gone(self, keep=()):
        """Waits until no client session but the pids in keep is left in the
        database (a backend's counters reach the statistics as it exits).
        It asks from another database, so that its own queries add no
        transaction to this one's statistics."""
        deadline = time.monotonic() + 10 * SLOW
        while int(self.cluster.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend' AND NOT pid = ANY (%s::int[])",
                (self.dbname, list(keep)))[0][0]):
            assert time.monotonic() < deadline, "sessions left in %s" % self.dbname
            time.sleep(0.02)


_cluster = None
_bouncers = {}


def pg_cluster():
    """One cluster for the whole run, started on first use."""
    global _cluster
    if _cluster is None:
        from pgcluster import PgCluster
        _cluster = PgCluster()
    return _cluster


def pg_bouncer(cluster):
    """One PgBouncer per cluster for the whole run, started on first use."""
    if id(cluster) not in _bouncers:
        from pgbouncer import PgBouncer
        _bouncers[id(cluster)] = PgBouncer(cluster)
    return _bouncers[id(cluster)]


def drop_bouncer(cluster):
    """Stops the PgBouncer of a cluster that a test destroys itself."""
    b = _bouncers.pop(id(cluster), None)
    if b is not None:
        b.destroy()


def pytest_sessionfinish(session, exitstatus):
    for b in list(_bouncers.values()):
        b.destroy()
    _bouncers.clear()
    if _cluster is not None:
        _cluster.destroy()


class Env:
    """One test's files and the environment limpeza runs with."""

    def __init__(self, tmp, store=None):
        self.tmp = str(tmp)
        self.cache = os.path.join(self.tmp, "desfollow_jobs.json")
        self.log = os.path.join(self.tmp, "log", "limpeza_3min.log")
        self.store = store or SqliteStore(os.path.join(self.tmp, "jobs.db"))
        self.vars = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TZ": "UTC",
            "LIMPEZA_ENV_FILES": "",
            "DATABASE_URL": self.store.url,
            "LIMPEZA_CACHE_FILE": self.cache,
            "LIMPEZA_HEALTH_URL": "",
            "LIMPEZA_LOG_FILE": self.log,
        }
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                self.vars[k] = os.environ[k]

    def env(self, **over):
        e = dict(self.vars)
        for k, v in over.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = str(v)
        return e

    def run(self, *args, timeout=30, **over):
        p = subprocess.run([BIN, *args], env=self.env(**over), capture_output=True,
                           text=True, timeout=timeout * SLOW)
        return p

    def write_cache(self, obj_or_text):
        text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
        with open(self.cache, "w") as f:
            f.write(text)
        return text

    def read_cache(self):
        with open(self.cache) as f:
            return f.read()

    def log_text(self):
        try:
            with open(self.log, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql", "pgbouncer"])
def senv(request, tmp_path):
    """The same test against each store driver, and PostgreSQL both directly
    and through PgBouncer in transaction mode; after the test, PostgreSQL
    holds nothing of limpeza's (no lock, no setting on a pooled connection)."""
    if request.param == "sqlite":
        yield Env(tmp_path)
        return
    store = PgStore(pg_cluster(), via="direct" if request.param == "postgresql"
                    else "pgbouncer")
    yield Env(tmp_path, store)
    store.assert_no_session_state()


@pytest.fixture(params=["direct", "pgbouncer"])
def via(request):
    """How limpeza reaches PostgreSQL: directly, or through PgBouncer in
    transaction mode (Supavisor's port 6543)."""
    return request.param


@pytest.fixture
def pg():
    return pg_cluster()


class HealthServer:
    """A real HTTP server on 127.0.0.1 whose answer each test sets."""

    def __init__(self):
        self.mode = "json"
        self.body = b'{"status":"healthy","jobs_active":0}'
        self.status = 200
        self.hits = 0
        self.huge_mib = 8
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits += 1
                try:
                    outer.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/api/health" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_json(self, obj, status=200):
        self.mode, self.status = "json", status
        self.body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj

    def answer(self, h):
        if self.mode == "hang":
            self.stop.wait(30)
            return
        if self.mode == "trickle":
            h.send_response(200)
            h.send_header("Content-Length", "100")
            h.end_headers()
            for _ in range(100):
                if self.stop.wait(0.5):
                    return
                h.wfile.write(b" ")
                h.wfile.flush()
            return
        if self.mode == "huge":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            chunk = b" " * 65536
            h.wfile.write(b'{"jobs_active": 99, "pad": "')
            for _ in range(self.huge_mib * 16):  # no Content-Length
                h.wfile.write(chunk)
            h.wfile.write(b'"}')
            return
        h.send_response(self.status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(self.body)))
        h.end_headers()
        h.wfile.write(self.body)

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health():
    s = HealthServer()
    yield s
    s.close()


class Daemon:
    """limpeza run in the background; its standard error goes to a file."""

    def __init__(self, env, *args, cwd=None, **over):
        self.env = env
        self.errpath = os.path.join(env.tmp, "stderr-%d.txt" % time.monotonic_ns())
        self.err = open(self.errpath, "wb")
        environ = env.env(**over)
        if over.get("JOURNAL_STREAM") == "auto":
            st = os.fstat(self.err.fileno())
            environ["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
        self.p = subprocess.Popen([BIN, "run", *args], env=environ, cwd=cwd,
                                  stdout=subprocess.DEVNULL, stderr=self.err)

    def stderr(self):
        with open(self.errpath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=10, count=1, source=None):
        """Waits until pattern (a regex) appears count times in the log."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            text = source() if source else self.stderr()
            if len(rx.findall(text)) >= count:
                return text
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("timed out waiting for %r (x%d); log:\n%s"
                             % (pattern, count, (source() if source else self.stderr())[-3000:]))

    def signal(self, sig):
        self.p.send_signal(sig)

    def stop(self, timeout=5):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout * SLOW)
        finally:
            self.err.close()

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.err.close()


@pytest.fixture
def daemons():
    started = []

    def start(env, *args, **over):
        d = Daemon(env, *args, **over)
        started.append(d)
        return d

    yield start
    # SIGTERM, as systemd stops it: a daemon that exits normally runs
    # LeakSanitizer, whose report then fails the test.
    for d in started:
        if d.p.poll() is None:
            d.p.send_signal(signal.SIGTERM)
    for d in started:
        try:
            d.p.wait(10 * SLOW)
        except subprocess.TimeoutExpired:
            d.p.kill()
            d.p.wait()
        d.err.close()


SAN_VARS = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")


@pytest.fixture(autouse=True)
def sanitizer_reports(tmp_path_factory):
    """Under ASan/UBSan, every limpeza process a test starts writes its
    sanitizer reports to a directory of the test's own; a report there
    fails the test, whatever the test itself saw. Autouse fixtures are set
    up first and torn down last, so daemons are stopped before the look."""
    if not SANITIZED:
        yield
        return
    where = str(tmp_path_factory.mktemp("sanitizer"))
    saved = {k: os.environ.get(k) for k in SAN_VARS}
    for k in SAN_VARS:
        os.environ[k] = (saved[k] or "") + ":log_path=%s/report" % where
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reports = sorted(os.listdir(where))
    if reports:
        text = ""
        for r in reports:
            with open(os.path.join(where, r), errors="replace") as f:
                text += "== %s\n%s\n" % (r, f.read()[-3000:])
        pytest.fail("sanitizer report(s) from limpeza:\n" + text, pytrace=False)
