"""Retention (SPEC §1.1, LIMPEZA_CACHE_RETENTION): finished jobs leave the
cache file once the database holds them as finished for longer than the
retention, by the database's clock; without a database only when set, from
first sight. Each store test runs on SQLite, PostgreSQL and PostgreSQL
through PgBouncer (`senv`), with explicit row times, never long sleeps.

Python's json is the oracle for the file: what is left must load, hold
exactly the jobs expected, and every kept job keeps its bytes.
"""

import json
import os
import re
import time
import urllib.request

import pytest

from conftest import ROOT, SLOW, SqliteStore
from pgcluster import free_port

with open(os.path.join(ROOT, "tests", "fixtures", "desfollow_jobs.example.json")) as f:
    API_JOBS = json.load(f)
# The API's own done job (results of ~720-byte profiles) and error job.
DONE = next(j for j in API_JOBS.values() if j["status"] == "done")
ERROR = next(j for j in API_JOBS.values() if j["status"] == "error")
HOUR = 3600


def cache_text(jobs):
    """The file as the API's save_jobs writes it: json.dump, defaults."""
    return json.dumps(jobs)


def member_bytes(text, job_id):
    """A job's bytes as they sit in a json.dump'ed file (defaults)."""
    return '"%s": %s' % (job_id, json.dumps(json.loads(text)[job_id]))


def assert_kept_byte_for_byte(before, after, kept):
    for job_id in kept:
        assert member_bytes(before, job_id) in after, job_id


def retired_lines(text):
    return re.findall(r"🗑️ Cache: (\d+) jobs finalizados removidos \(já no banco\)", text)


def test_done_and_error_with_rows_finished_long_ago_leave(senv):
    env = senv
    env.store.add("old-done", "done", 2 * HOUR, 3 * HOUR)
    env.store.add("old-error", "error", 2 * HOUR, 3 * HOUR)
    text = env.write_cache(cache_text({"old-done": DONE, "old-error": ERROR,
                                       "q": {"status": "queued"}}))
    p = env.run("once")  # the default retention: 1h
    assert p.returncode == 0, p.stderr
    after = env.read_cache()
    assert list(json.loads(after)) == ["q"]
    assert_kept_byte_for_byte(text, after, ["q"])
    assert retired_lines(p.stderr) == ["2"]
    # retention is not reaping: the cycle found no orphan
    assert "✅ Sistema limpo" in p.stderr


def test_done_with_a_row_finished_within_the_retention_is_kept(senv):
    env = senv
    env.store.add("old", "done", 2 * HOUR, 3 * HOUR)
    # created long ago, finished (updated) 10 minutes ago: its age is the row's updated_at
    env.store.add("young", "done", 600, 3 * HOUR)
    text = env.write_cache(cache_text({"old": DONE, "young": DONE}))
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    after = env.read_cache()
    assert list(json.loads(after)) == ["young"]
    assert_kept_byte_for_byte(text, after, ["young"])
    # a shorter retention makes the same row old enough
    p = env.run("once", LIMPEZA_CACHE_RETENTION="5m")
    assert p.returncode == 0, p.stderr
    assert json.loads(env.read_cache()) == {}


def test_done_without_a_row_is_kept(senv):
    env = senv
    env.store.add("old", "done", 2 * HOUR)
    env.store.add("other", "done", 2 * HOUR)
    text = env.write_cache(cache_text({"old": DONE, "no-row": DONE, "no-row-error": ERROR}))
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    after = env.read_cache()
    assert list(json.loads(after)) == ["no-row", "no-row-error"]
    assert_kept_byte_for_byte(text, after, ["no-row", "no-row-error"])


def test_done_whose_row_is_still_running_is_kept(senv):
    """A row still running (or queued) keeps the job, however old the row:
    stale ones included (this pass's database step then reaps them, and
    their new updated time starts their retention)."""
    env = senv
    env.store.add("old", "done", 2 * HOUR)
    env.store.add("running-row", "running", 2 * HOUR, 3 * HOUR)
    env.store.add("queued-row", "queued", 2 * HOUR, 3 * HOUR)
    text = env.write_cache(cache_text({"old": DONE, "running-row": DONE,
                                       "queued-row": ERROR}))
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    after = env.read_cache()
    assert list(json.loads(after)) == ["running-row", "queued-row"]
    assert_kept_byte_for_byte(text, after, ["running-row", "queued-row"])
    assert env.store.statuses()["running-row"] == "error"  # reaped after the cache step
    p = env.run("once")
    assert list(json.loads(env.read_cache())) == ["running-row", "queued-row"]


def down_url(env):
    if isinstance(env.store, SqliteStore):
        return "sqlite:///" + env.tmp + "/missing/nothing.db"
    return "postgresql://app:pw@127.0.0.1:%d/x" % free_port()


def test_database_down_removes_nothing_for_retention_and_still_reaps_orphans(senv, daemons):
    """Several cycles, well past a short retention, with the store down: the
    finished job stays (no fallback to first sight), orphans still go, and
    the postponement is said once."""
    env = senv
    env.write_cache(cache_text({"done": DONE, "error": ERROR,
                                "orphan": {"status": "running", "start_time": time.time() - 999}}))
    d = daemons(env, DATABASE_URL=down_url(env), LIMPEZA_CACHE_RETENTION="300ms",
                LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms")
    d.wait_for("Job órfão no cache limpo: orphan")
    t0 = time.monotonic()
    d.wait_for("Ciclo 6 ", timeout=20)
    assert time.monotonic() - t0 >= 0.9  # three retentions and more since first sight
    text = d.stderr()
    assert d.stop() == 0
    assert list(json.loads(env.read_cache())) == ["done", "error"]
    assert text.count("retenção adiada, o banco não respondeu") == 1, text[-3000:]
    assert "jobs finalizados removidos" not in text


def test_retention_zero_keeps_finished_jobs_forever(senv):
    env = senv
    env.store.add("old", "done", 30 * 24 * HOUR)
    text = env.write_cache(cache_text({"old": DONE}))
    p = env.run("once", "--cache-retention=0")
    assert p.returncode == 0, p.stderr
    assert env.read_cache() == text
    p = env.run("check", LIMPEZA_CACHE_RETENTION="0")
    assert "ok: cache retention off (LIMPEZA_CACHE_RETENTION=0)" in p.stdout, p.stdout
    assert "1 finished (0 past retention)" in p.stdout


def test_no_database_and_no_explicit_setting_removes_nothing(env, daemons):
    text = env.write_cache(cache_text({"done": DONE, "error": ERROR}))
    p = env.run("check", DATABASE_URL=None)
    assert ("ok: cache retention off: no database to confirm finished jobs and "
            "LIMPEZA_CACHE_RETENTION not set") in p.stdout, p.stdout
    d = daemons(env, DATABASE_URL=None, LIMPEZA_INTERVAL="100ms")
    d.wait_for("Ciclo 4 ")
    assert d.stop() == 0
    assert env.read_cache() == text


def json_events(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def ts(event):
    from datetime import datetime
    return datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


@pytest.mark.parametrize("how", ["environment", "option", "env file"])
def test_no_database_and_explicit_retention_removes_after_first_sight(env, daemons, how):
    """Aged from the pass that first saw the job finished: not before the
    retention, and at its end by the daemon's deadline wake-up (the regular
    cycles are 30 s apart), with the file unchanged meanwhile."""
    env.write_cache(cache_text({"done": DONE, "error": ERROR, "q": {"status": "queued"},
                                "orphan": {"status": "running", "start_time": time.time() - 999}}))
    over = {"DATABASE_URL": None, "LIMPEZA_INTERVAL": "30s", "LIMPEZA_LOG_FORMAT": "json"}
    args = []
    if how == "environment":
        over["LIMPEZA_CACHE_RETENTION"] = "1s"
    elif how == "option":
        args = ["--cache-retention", "1s"]
    else:
        envfile = os.path.join(env.tmp, "backend.env")
        with open(envfile, "w") as f:
            f.write("LIMPEZA_CACHE_RETENTION=1s\n")
        os.chmod(envfile, 0o600)
        over["LIMPEZA_ENV_FILES"] = envfile
    d = daemons(env, *args, **over)
    text = d.wait_for('"event":"cache_retired"')
    events = json_events(text)
    # cycle 1 starts before its cache pass first sees the jobs
    cycle1 = next(e for e in events if e["event"] == "cycle" and e["cycle"] == 1)
    assert any(e["event"] == "cache_orphan" for e in events)
    retired = next(e for e in events if e["event"] == "cache_retired")
    assert retired["count"] == 2 and retired["retention"] == "1s", retired
    assert ts(retired) - ts(cycle1) >= 0.999  # the log's times are in ms
    assert not any(e["event"] == "cycle" and e["cycle"] == 2 for e in events)
    assert d.stop() == 0
    assert list(json.loads(env.read_cache())) == ["q"]


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def test_young_row_leaves_when_its_retention_ends_without_a_file_change(senv, daemons):
    """The unchanged-file shortcut must not hide a retention that ends: the
    row's age, learnt from the look-up, makes the file due then; the metric
    counts it with reason="retention"."""
    env = senv
    env.store.add("young", "done", 0.2, HOUR)
    env.write_cache(cache_text({"young": DONE}))
    port = free_port()
    d = daemons(env, LIMPEZA_CACHE_RETENTION="3s", LIMPEZA_INTERVAL="30s",
                LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port)
    d.wait_for("Sistema limpo")
    assert list(json.loads(env.read_cache())) == ["young"]
    text = d.wait_for(r"🗑️ Cache: 1 jobs finalizados removidos \(já no banco\)", timeout=15)
    assert "Ciclo 2 " not in text
    assert json.loads(env.read_cache()) == {}
    body = scrape(port)
    assert 'limpeza_jobs_reaped_total{store="cache",state="done",reason="retention"} 1' \
        in body, body
    assert d.stop() == 0


def test_retention_removes_in_mark_mode_too(senv):
    env = senv
    env.store.add("old", "done", 2 * HOUR)
    env.write_cache(cache_text({"old": DONE,
                                "orphan": {"status": "running", "start_time": time.time() - 999}}))
    p = env.run("once", LIMPEZA_CACHE_ACTION="mark")
    assert p.returncode == 0, p.stderr
    data = json.loads(env.read_cache())
    assert list(data) == ["orphan"]
    assert data["orphan"]["status"] == "error"
    assert retired_lines(p.stderr) == ["1"]


def test_dry_run_only_reports(senv):
    env = senv
    env.store.add("old", "done", 2 * HOUR)
    text = env.write_cache(cache_text({"old": DONE, "new": DONE}))
    p = env.run("once", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert env.read_cache() == text
    assert "🧪 Job finalizado seria removido do cache: old (finalizado há 72" in p.stderr
    assert "🧪 Cache: 1 jobs finalizados seriam removidos (retenção de 60min)" in p.stderr
    assert "jobs finalizados removidos" not in p.stderr


def test_log_lines_in_english_and_json(senv):
    env = senv
    for i in range(3):
        env.store.add("old-%d" % i, "done", 2 * HOUR)
    env.write_cache(cache_text({"old-0": DONE}))
    p = env.run("once", LIMPEZA_LANG="en", LIMPEZA_LOG_LEVEL="debug")
    assert "🗑️ Cache: 1 finished jobs removed (already in the database)" in p.stderr
    assert "🗑️ Finished job removed from cache: old-0 (finished 72" in p.stderr
    env.write_cache(cache_text({"old-1": DONE, "old-2": ERROR}))
    p = env.run("once", LIMPEZA_LOG_FORMAT="json", LIMPEZA_LOG_LEVEL="debug")
    events = json_events(p.stderr)
    assert [e["count"] for e in events if e["event"] == "cache_retired"] == [2]
    assert sorted(e["job_id"] for e in events if e["event"] == "cache_retired_job") == \
        ["old-1", "old-2"]
    # ids are at debug level only
    p = env.run("once")
    assert "old-" not in p.stderr


def test_stats_shows_size_finished_and_what_retention_would_remove(senv):
    env = senv
    env.store.add("old", "done", 2 * HOUR)
    env.store.add("young", "done", 60)
    text = env.write_cache(cache_text({"old": DONE, "young": DONE, "error": ERROR,
                                       "q": {"status": "queued"}}))
    p = env.run("stats", "--json")
    assert p.returncode == 0, p.stderr
    cache = json.loads(p.stdout)["cache"]
    assert cache["size_bytes"] == len(text.encode())
    assert cache["finished"] == 3
    assert cache["retention_would_remove"] == 1
    assert cache["retention"] == "rows"
    p = env.run("stats")
    assert "cache: %d bytes, finished jobs: 3, retention (rows) would remove: 1" % len(text) \
        in p.stdout, p.stdout
    assert env.read_cache() == text  # stats changes nothing
    p = env.run("check")
    assert ("ok: cache retention 60min: a finished job leaves the cache file once its row "
            "in the database has been finished for 60min") in p.stdout, p.stdout


def test_many_ids_and_odd_ids_in_one_pass(senv):
    """More finished jobs than one look-up statement takes, and ids the
    array must quote; an id that cannot be text (a lone surrogate) has no
    row and is kept, and does not stop the others."""
    env = senv
    odd = ['a"b', "c\\d", "x,y", "{z}", "NULL", " sp ", "ação 🎉"]
    ids = ["job-%04d" % i for i in range(2100)] + odd
    if isinstance(env.store, SqliteStore):
        with env.store.connect() as db:
            db.executemany("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
                           " VALUES ('u', ?, 'done', datetime('now', '-3 hours'),"
                           " datetime('now', '-2 hours'))", [(i,) for i in ids])
    else:
        env.store.sql("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
                      " SELECT 'u', j, 'done', now() - interval '3 hours',"
                      " now() - interval '2 hours' FROM unnest(%s::text[]) j", (ids,))
    jobs = {i: {"status": "done", "count": 1} for i in ids}
    text = cache_text(jobs)
    # a key Python writes for a lone surrogate: no database text can hold it
    text = text[:-1] + ', "\\ud83d": {"status": "done"}, "kept": {"status": "done"}}'
    env.write_cache(text)
    p = env.run("once", timeout=120)
    assert p.returncode == 0, p.stderr
    left = json.loads(env.read_cache())
    assert list(left) == ["\ud83d", "kept"]
    assert retired_lines(p.stderr) == [str(len(ids))]


def test_a_follower_prunes_its_own_cache_file(tmp_path, pg, daemons, via):
    """Every host prunes its own file: while another instance holds the
    leader's lock, a daemon's look-up (read-only, not elected) still
    answers, and its finished jobs leave."""
    from conftest import Env, PgStore
    from test_pg import take_leader_lock
    env = Env(tmp_path, PgStore(pg, via=via))
    env.store.add("old", "done", 2 * HOUR)
    env.write_cache(cache_text({"old": DONE, "new": DONE}))
    holder = take_leader_lock(env.store)
    try:
        d = daemons(env, LIMPEZA_INTERVAL="30s")
        log = d.wait_for("o banco é limpo por outra instância")  # a follower: no Sistema limpo
        assert "👥 Outra instância é a líder" in log
        assert retired_lines(log) == ["1"]
        assert list(json.loads(env.read_cache())) == ["new"]
        assert d.stop() == 0
    finally:
        holder.close()
    env.store.assert_no_session_state()


@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
def test_row_age_is_the_database_clock_in_its_session_zone(tmp_path, pg, column_type, via):
    """The test cluster's server zone is America/Sao_Paulo; the API writes
    naive UTC. Ages come from now() against updated_at read in
    LIMPEZA_DB_TIMEZONE (UTC) within the look-up's own transaction: a row
    finished 2 h ago leaves, one finished 50 min ago stays (3 h off either
    way would swap them)."""
    from conftest import Env, PgStore
    env = Env(tmp_path, PgStore(pg, column_type, via))
    env.store.add("two-hours", "done", 2 * HOUR)
    env.store.add("fifty-minutes", "done", 50 * 60)
    env.write_cache(cache_text({"two-hours": DONE, "fifty-minutes": DONE}))
    p = env.run("once")
    assert p.returncode == 0, p.stderr
    assert list(json.loads(env.read_cache())) == ["fifty-minutes"]
    env.store.assert_no_session_state()
