"""The schemas people have (issue 23, item 3; SPEC §1.2): an id column of
any of the types the API may use, rows without an updated time, the URL's
connect_timeout, and a retention look-up that fails.

Every type is run on PostgreSQL (text, varchar, uuid, integer, bigint) and
on SQLite (TEXT, INTEGER): reaping, the dry run, retention and the forced
cleanup, each judged by the rows and the cache file afterwards.
"""

import json
import re
import socket
import subprocess
import threading
import uuid

import pytest

from conftest import BIN, SLOW, Env, PgStore, SqliteStore, pg_cluster

HOUR = 3600
MIN = 60

PG_TYPES = ["text", "varchar(64)", "uuid", "integer", "bigint"]
SQLITE_TYPES = ["TEXT", "INTEGER"]


def ids_for(column_type):
    """Four job ids the type can hold, as the API's cache keys write them."""
    if "int" in column_type.lower():
        return ["101", "102", "2147483647" if column_type == "integer" else "9000000000", "104"]
    if column_type == "uuid":
        return [str(uuid.uuid4()) for _ in range(4)]
    return ["job-a", "job-b", "job-c", "job-d"]


def pg_typed(tmp_path, column_type):
    store = PgStore(pg_cluster())
    store.sql("ALTER TABLE scans ALTER job_id TYPE %s USING job_id::%s"
              % (column_type, column_type))
    return Env(tmp_path, store)


def sqlite_typed(tmp_path, column_type):
    store = SqliteStore(str(tmp_path / "jobs.db"))
    # The same table with the id column of the given type.
    store.sql("ALTER TABLE scans RENAME TO old")
    store.sql("DROP INDEX ix_scans_job_id")
    store.sql("CREATE TABLE scans (id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL,"
              " job_id %s NOT NULL, status VARCHAR(50) NOT NULL, error_message TEXT,"
              " created_at DATETIME, updated_at DATETIME)" % column_type)
    store.sql("CREATE UNIQUE INDEX ix_scans_job_id ON scans (job_id)")
    store.sql("DROP TABLE old")
    return Env(tmp_path, store)


def status_of(env, job_id):
    return env.store.sql("SELECT status FROM scans WHERE CAST(job_id AS text) = %s"
                         if isinstance(env.store, PgStore) else
                         "SELECT status FROM scans WHERE CAST(job_id AS TEXT) = ?",
                         (job_id,))[0][0]


def add(env, job_id, status, updated_age_s, created_age_s=None):
    """A row; job_id goes in as text, which each type reads."""
    env.store.add(job_id, status, updated_age_s, created_age_s)


def every_id_type_works(env, ids):
    stale, young, done_long, queued_young = ids
    add(env, stale, "running", 10 * MIN)
    add(env, young, "running", 10)
    add(env, done_long, "done", 2 * HOUR, 3 * HOUR)
    add(env, queued_young, "queued", 10)
    env.write_cache({done_long: {"status": "done", "result": {}}})

    # The dry run names the stale row and changes nothing.
    p = env.run("once", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert re.search(r"seria encerrado no banco: %s\b" % re.escape(stale), p.stderr), p.stderr
    assert status_of(env, stale) == "running"
    assert json.loads(env.read_cache()) != {}

    # check sees the finished job past its retention, and passes.
    p = env.run("check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "(1 past retention)" in p.stdout, p.stdout

    # Reaping ends the stale row; retention takes the finished job out.
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    assert "retenção adiada" not in p.stderr, p.stderr
    assert re.search(r"encerrado no banco: %s\b" % re.escape(stale), p.stderr), p.stderr
    assert status_of(env, stale) == "error"
    assert status_of(env, young) == "running"
    assert json.loads(env.read_cache()) == {}

    # The forced cleanup ends the young active rows, by their ids.
    p = env.run("once", "--force")
    assert p.returncode == 0, p.stderr
    assert status_of(env, young) == "error"
    assert status_of(env, queued_young) == "error"
    assert re.search(r"encerrado no banco: %s\b" % re.escape(young), p.stderr), p.stderr


@pytest.mark.parametrize("column_type", PG_TYPES)
def test_every_id_type_on_postgresql(tmp_path, column_type):
    env = pg_typed(tmp_path, column_type)
    every_id_type_works(env, ids_for(column_type))
    env.store.assert_no_session_state()


@pytest.mark.parametrize("column_type", SQLITE_TYPES)
def test_every_id_type_on_sqlite(tmp_path, column_type):
    env = sqlite_typed(tmp_path, column_type)
    every_id_type_works(env, ids_for(column_type))


def test_a_uuid_cache_key_the_column_cannot_read_has_no_row(tmp_path):
    """Ids that a uuid (or integer) column cannot read are no row, and never
    fail the look-up for the others in their chunk."""
    env = pg_typed(tmp_path, "uuid")
    good = str(uuid.uuid4())
    add(env, good, "done", 2 * HOUR)
    env.write_cache({"not-a-uuid": {"status": "done"}, good.upper(): {"status": "done"},
                     "{%s}" % good.replace("-", ""): {"status": "error"}})
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    # PostgreSQL reads both other spellings of the uuid: their row is finished.
    assert list(json.loads(env.read_cache())) == ["not-a-uuid"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request, tmp_path):
    if request.param == "sqlite":
        return Env(tmp_path)
    return Env(tmp_path, PgStore(pg_cluster()))


def test_null_updated_at_is_aged_by_created_at(store_env):
    env = store_env
    for job_id, status, created in (("old-run", "running", 10 * MIN),
                                    ("old-queue", "queued", 10 * MIN),
                                    ("young-run", "running", 10),
                                    ("ageless", "running", None)):
        add(env, job_id, status, 0, created or 0)
        env.store.sql("UPDATE scans SET updated_at = NULL%s WHERE job_id = '%s'"
                      % ("" if created else ", created_at = NULL", job_id))

    p = env.run("once", "--dry-run")
    assert p.returncode == 0, p.stderr
    would = sorted(re.findall(r"seria encerrado no banco: (\S+)", p.stderr))
    assert would == ["old-queue", "old-run"], p.stderr

    # check counts the row with neither time, and says it is never reaped.
    p = env.run("check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^warning: 1 running or queued rows have neither updated_at nor"
                     r" created_at: .*never reaped$", p.stdout, re.M), p.stdout

    p = env.run("once")
    assert p.returncode == 0, p.stderr
    assert env.store.statuses() == {"old-run": "error", "old-queue": "error",
                                    "young-run": "running", "ageless": "running"}


def test_check_says_when_no_row_is_ageless(store_env):
    store_env.store.add("r", "running", 0)
    p = store_env.run("check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok: every running or queued row has updated_at or created_at" in p.stdout


class Sink:
    """A TCP server that accepts and never answers: a database that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


# connect_timeout in the URL, and the bound limpeza applies: the URL's own,
# at least libpq's 2 s, at most limpeza's 10 s (0 is libpq's "for ever").
CONNECT_TIMEOUTS = [("3", 3), ("1", 2), ("60", 10), ("0", 10)]


def test_connect_timeout_in_the_url_is_honoured_up_to_limpezas_bound(tmp_path):
    """What each failure line says is the bound that was applied (never a
    time measured). The four checks run at once: the test waits 10 s, not
    25."""
    sink = Sink()
    env = Env(tmp_path)
    try:
        procs = [subprocess.Popen(
            [BIN, "check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env.env(DATABASE_URL="postgresql://app:pw@127.0.0.1:%d/db?connect_timeout=%s"
                        % (sink.port, timeout), LIMPEZA_CACHE_FILE=""))
            for timeout, _ in CONNECT_TIMEOUTS]
        outs = [p.communicate(timeout=60 * SLOW) for p in procs]
    finally:
        sink.close()
    for p, (out, err), (timeout, bound) in zip(procs, outs, CONNECT_TIMEOUTS):
        assert p.returncode != 0, (timeout, out)
        want = "FAIL: database: cannot connect: no answer from the database within %ds\n" % bound
        assert want in out, (timeout, out, err)


def enum_status_env(tmp_path):
    """A status column of an enum type without 'done': the retention
    look-up, which asks for done rows, fails on it; reaping does not."""
    env = Env(tmp_path, PgStore(pg_cluster()))
    env.store.sql("CREATE TYPE scan_state AS ENUM ('queued', 'running', 'error');"
                  " ALTER TABLE scans ALTER status TYPE scan_state USING status::scan_state")
    env.store.add("finished", "error", 2 * HOUR)
    env.write_cache({"finished": {"status": "error"}, "q": {"status": "queued"}})
    return env


def test_a_failed_retention_look_up_is_a_failed_step(tmp_path):
    env = enum_status_env(tmp_path)
    p = env.run("once")
    assert "retenção adiada" in p.stderr, p.stderr
    assert "Sistema limpo" not in p.stderr, p.stderr
    assert re.search(r"Limpeza incompleta - falha em: cache", p.stderr), p.stderr
    assert p.returncode != 0
    # Nothing left for retention, and the job is asked about again.
    assert list(json.loads(env.read_cache())) == ["finished", "q"]
    p = env.run("once")
    assert "Limpeza incompleta - falha em: cache" in p.stderr, p.stderr


def test_check_fails_on_a_failed_retention_look_up(tmp_path):
    env = enum_status_env(tmp_path)
    p = env.run("check")
    assert p.returncode != 0, p.stdout
    assert re.search(r"^FAIL: cache file .*: retention cannot ask the database about its"
                     r" 1 finished jobs: .*scan_state", p.stdout, re.M), p.stdout
    assert "check passed" not in p.stdout
