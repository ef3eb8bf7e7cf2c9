"""The job-store contract (SPEC §1.2): every test taking `senv` runs unchanged
against SQLite and against a real PostgreSQL server (15 on Debian 12, 17 on Debian 13)."""

import os
import re
import sqlite3
import threading
import time
from datetime import datetime, timezone

import pytest

from conftest import SqliteStore


def once(env, *args, **over):
    over.setdefault("LIMPEZA_CACHE_FILE", "")
    return env.run("once", *args, **over)


def age_of(ts):
    t = datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - t).total_seconds()


def test_reaps_exactly_the_stale_rows(senv):
    env = senv
    s = env.store
    s.add("run-stale", "running", 190)
    s.add("run-fresh", "running", 170)
    s.add("q-stale", "queued", 130)
    s.add("q-fresh", "queued", 110)
    s.add("done-old", "done", 5000)
    s.add("err-old", "error", 5000)
    p = once(env)
    assert p.returncode == 0, p.stderr
    assert s.statuses() == {"run-stale": "error", "run-fresh": "running",
                            "q-stale": "error", "q-fresh": "queued",
                            "done-old": "done", "err-old": "error"}
    r = s.row("run-stale")
    assert r["error_message"] == "Job órfão - mais de 3 minutos"
    if isinstance(r["updated_at"], str):  # SQLite: SQLAlchemy's UTC text
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", r["updated_at"])
    assert -1 < s.age("run-stale") < 10
    assert s.age("run-fresh") > 160
    assert s.row("q-stale")["error_message"] == "Job queued expirado - mais de 2 minutos"
    assert s.row("run-fresh")["error_message"] is None
    assert s.row("done-old")["error_message"] is None
    assert "🧹 Limpeza banco executada: running > 3min: 1, queued > 2min: 1" in p.stderr
    assert "📊 Stats banco (24h): {'done': 1, 'error': 3, 'queued': 1, 'running': 1}" in p.stderr
    assert "✅ Limpeza executada: 2 jobs processados" in p.stderr


def test_ttls_and_language_follow_settings(senv):
    env = senv
    s = env.store
    s.add("r", "running", 100)
    s.add("q", "queued", 100)
    p = once(env, LIMPEZA_RUNNING_TTL="90s", LIMPEZA_QUEUED_TTL="1m", LIMPEZA_LANG="en")
    assert p.returncode == 0, p.stderr
    assert s.row("r")["error_message"] == "Orphan job - no progress for more than 90 seconds"
    assert s.row("q")["error_message"] == "Queued job expired - more than 1 minute"
    assert "🧹 Database cleanup done: running > 90s: 1, queued > 1min: 1" in p.stderr


def test_batches_reap_a_backlog(senv):
    env = senv
    s = env.store
    for i in range(50):
        s.add("stale-%02d" % i, "running", 400)
    for i in range(3):
        s.add("fresh-%d" % i, "running", 10)
    p = once(env, LIMPEZA_BATCH="7", LIMPEZA_LOG_LEVEL="debug")
    assert p.returncode == 0, p.stderr
    st = s.statuses()
    assert sum(1 for k, v in st.items() if k.startswith("stale") and v == "error") == 50
    assert all(v == "running" for k, v in st.items() if k.startswith("fresh"))
    # every reaped id comes back for the log, once
    ids = re.findall(r"Job running encerrado no banco: (stale-\d\d)", p.stderr)
    assert sorted(ids) == ["stale-%02d" % i for i in range(50)]
    assert "running > 3min: 50, queued > 2min: 0" in p.stderr


def test_stats_cover_the_last_24_hours(senv):
    env = senv
    s = env.store
    s.add("old-done", "done", 10, created_age_s=2 * 86400)
    s.add("new-done", "done", 10, created_age_s=3600)
    s.add("new-run", "running", 10)
    p = once(env)
    assert "📊 Stats banco (24h): {'done': 1, 'running': 1}" in p.stderr


def test_dry_run_changes_no_row(senv):
    env = senv
    s = env.store
    s.add("run-stale", "running", 900)
    s.add("q-stale", "queued", 900)
    p = once(env, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert s.statuses() == {"run-stale": "running", "q-stale": "queued"}
    assert "running > 3min: 1, queued > 2min: 1" in p.stderr


def test_busy_database_is_waited_for(env):
    """A writer holding SQLite's lock delays the cycle; it is not an error."""
    s = env.store
    s.add("run-stale", "running", 900)
    locked = threading.Event()

    def writer():
        db = sqlite3.connect(s.path, timeout=10, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE scans SET username = 'x'")
        locked.set()
        time.sleep(1.0)
        db.execute("COMMIT")
        db.close()

    t = threading.Thread(target=writer)
    t.start()
    locked.wait(5)
    p = once(env)
    t.join()
    assert p.returncode == 0, p.stderr
    assert s.row("run-stale")["status"] == "error"


CUSTOM_TABLE = {
    "sqlite": """
        CREATE TABLE "order" (jid TEXT, state TEXT, why TEXT, born TEXT, touched TEXT);
        INSERT INTO "order" VALUES
          ('a', 'RUN', NULL, datetime('now','-1 hour'), strftime('%Y-%m-%d %H:%M:%f', 'now', '-10 minutes')),
          ('b', 'WAIT', NULL, datetime('now','-1 hour'), strftime('%Y-%m-%d %H:%M:%f', 'now', '-10 minutes')),
          ('c', 'RUN', NULL, datetime('now'), strftime('%Y-%m-%d %H:%M:%f', 'now'));""",
    "postgresql": """
        CREATE SCHEMA app;
        CREATE TABLE app."order" (jid text, state text, why text, born timestamp, touched timestamp);
        INSERT INTO app."order" VALUES
          ('a', 'RUN', NULL, now() - interval '1 hour', now() - interval '10 minutes'),
          ('b', 'WAIT', NULL, now() - interval '1 hour', now() - interval '10 minutes'),
          ('c', 'RUN', NULL, now(), now());""",
}


def test_custom_table_columns_and_statuses(senv):
    env = senv
    pg = not isinstance(env.store, SqliteStore)
    table = 'app."order"' if pg else '"order"'
    if pg:
        env.store.sql(CUSTOM_TABLE["postgresql"])
    else:
        with env.store.connect() as db:
            db.executescript(CUSTOM_TABLE["sqlite"])
    p = once(env, LIMPEZA_TABLE="app.order" if pg else "order", LIMPEZA_ID_COLUMN="jid",
             LIMPEZA_STATUS_COLUMN="state", LIMPEZA_UPDATED_COLUMN="touched",
             LIMPEZA_CREATED_COLUMN="born", LIMPEZA_ERROR_COLUMN="why",
             LIMPEZA_RUNNING_STATUS="RUN", LIMPEZA_QUEUED_STATUS="WAIT",
             LIMPEZA_ERROR_STATUS="FAIL")
    assert p.returncode == 0, p.stderr
    rows = dict((r[0], (r[1], r[2])) for r in env.store.sql("SELECT jid, state, why FROM " + table))
    assert rows == {"a": ("FAIL", "Job órfão - mais de 3 minutos"),
                    "b": ("FAIL", "Job queued expirado - mais de 2 minutos"),
                    "c": ("RUN", None)}


def test_unreachable_store_does_not_stop_the_cache_step(senv):
    env = senv
    env.write_cache({"old": {"status": "running", "start_time": time.time() - 999}})
    if isinstance(env.store, SqliteStore):
        url, kind, why = "sqlite:///" + env.tmp + "/missing/nothing.db", "sqlite", "cannot open"
    else:
        url, kind, why = "postgresql://app:pw@127.0.0.1:9/x", "postgresql", "cannot connect"
    p = env.run("once", DATABASE_URL=url)
    assert p.returncode == 1
    assert "❌ Erro no banco (%s): %s" % (kind, why) in p.stderr
    assert "Job órfão no cache limpo: old" in p.stderr
    assert env.read_cache() == "{}"


def test_check_reports_the_table(senv):
    env = senv
    p = env.run("check", LIMPEZA_CACHE_FILE="")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok: column scans.updated_at (" in p.stdout
    assert "check passed" in p.stdout
    p = env.run("check", LIMPEZA_CACHE_FILE="", LIMPEZA_ERROR_COLUMN="why_failed")
    assert p.returncode == 1
    assert "FAIL: column scans.why_failed not found" in p.stdout
    assert "check FAILED" in p.stdout
    p = env.run("check", LIMPEZA_CACHE_FILE="", LIMPEZA_TABLE="nope")
    assert p.returncode == 1
    assert "FAIL: database: table nope not found" in p.stdout


def test_stats_command(senv):
    env = senv
    import json
    s = env.store
    s.add("r1", "running", 30)
    s.add("r2", "running", 500)
    s.add("d", "done", 10)
    env.write_cache({"a": {"status": "queued"}, "b": {"status": "done"},
                     "c": {"status": "running", "start_time": time.time() - 999}})
    p = env.run("stats", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["database"]["by_status_24h"] == {"done": 1, "running": 2}
    assert out["database"]["active"] == 2
    assert 495 < out["database"]["oldest_active_s"] < 520
    assert out["cache"]["active"] == 1 and out["cache"]["stale"] == 1
    assert out["api"] is None
    # stats only looks
    assert s.row("r2")["status"] == "running"
    assert "c" in json.loads(env.read_cache())
    p = env.run("stats")
    assert p.returncode == 0
    assert "active jobs: 2" in p.stdout
