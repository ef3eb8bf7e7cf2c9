#!/usr/bin/env python3
"""A month of scans, from the API's side (`make bench-month`, part of `make bench`).

The API (the original backend/app/routes.py) reloads its whole cache file on
every request that touches a job, and never removes a finished one. This
runs the API's cache functions -- its read of the whole file on a poll
(load_jobs) and its read-and-rewrite on a job change (set_job), here
through the test suite's API double, tests/integration/apidouble.py,
which behaves as routes.py does -- for DAYS simulated days of
SCANS_PER_DAY scans: each scan is written as the API writes it (`queued`,
then `running` with the profile, then `done` with result lists of ~720-byte
profile entries shaped after tests/fixtures/desfollow_jobs.example.json),
with its row in the `scans` table written as database.py's save_scan_result
writes it (PostgreSQL as Debian ships it, the real table shape, a throwaway cluster).

limpeza runs beside it on a compressed clock: a simulated day lasts
DAY_SECONDS real seconds; the real daemon runs with its interval and its
retention scaled alike (a pass every 30 simulated minutes, 48 a day;
retention 1 h = DAY_SECONDS / 24). Every write is real, and timed; one
status poll per scan (load_jobs while the scan runs, when the status route
reads the cache) is timed too.

The old cleaner never removes a finished job: its file on day N holds every
scan so far, exactly as the API wrote them, whatever its passes do (they
only drop stale running/queued jobs, and these scans all finish). Writing
9,000 scans through set_job on that file would take hours (a set_job costs
seconds by the second week), so its file for day N is built directly, job
by job in the API's order and json.dump's form, and load_jobs and set_job
are timed on it a few times. The output says so.
"""

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "desfollow_jobs.example.json")
PASSES_PER_DAY = 48  # a pass every 30 simulated minutes, for both cleaners

# --- The API's cache, through the test suite's API double
# --- (tests/integration/apidouble.py, written from reading routes.py): the
# --- whole file read for every poll, read and written whole for every job
# --- change, without a lock. The bench points it at its own path.

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from apidouble import JobCache  # noqa: E402

CACHE_FILE = "/tmp/desfollow_jobs.json"


def load_jobs():
    """The API's read of its cache (each status poll)."""
    return JobCache(CACHE_FILE).read()


def set_job(job_id, data):
    """The API's write of one job (each scan's state change)."""
    JobCache(CACHE_FILE).put(job_id, data)


# --- Scans: realistic, and the same on both sides (seeded by their number).

class Scans:
    """Scan number i: its job id, user, profile and ghosts_result (the
    shape get_ghosts_with_profile returns), with result lists of 28 to 105
    profiles (40-150 KB a done job), each entry the fixture's shape with
    its own pk, username, name and a picture URL of the fixture's length."""

    def __init__(self, seed=16):
        with open(FIXTURE) as f:
            jobs = json.load(f)
        done = next(j for j in jobs.values() if j["status"] == "done")
        self.profile = done["profile_info"]
        self.entry = done["all"][0]
        self.url_head = self.entry["profile_pic_url"][:60]
        self.url_len = len(self.entry["profile_pic_url"]) - 60
        rng = random.Random(seed)
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
        self.pool = "".join(rng.choice(alphabet) for _ in range(1 << 18))
        self.seed = seed

    def _entry(self, rng, k):
        e = dict(self.entry)
        pk = str(rng.randrange(10 ** 10, 10 ** 11))
        e["pk"] = e["id"] = pk
        e["username"] = "perfil_%d_%d" % (k, rng.randrange(10 ** 6))
        e["full_name"] = "Perfil %d ✨" % k
        at = rng.randrange(len(self.pool) - self.url_len)
        e["profile_pic_url"] = self.url_head + self.pool[at:at + self.url_len]
        return e

    def scan(self, i):
        rng = random.Random(self.seed * 1000003 + i)
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        username = "usuario_%d" % rng.randrange(5000)
        profile = dict(self.profile)
        profile["username"] = username
        profile["followers_count"] = rng.randrange(100, 5000)
        profile["following_count"] = rng.randrange(100, 5000)
        n = rng.randrange(28, 106)
        famous = rng.randrange(1, 6)
        ghosts = [self._entry(rng, k) for k in range(n)]
        result = {
            "ghosts": ghosts,
            "ghosts_count": n,
            "real_ghosts": ghosts[famous:],
            "famous_ghosts": ghosts[:famous],
            "real_ghosts_count": n - famous,
            "famous_ghosts_count": famous,
            "followers_count": profile["followers_count"],
            "following_count": profile["following_count"],
        }
        return job_id, username, profile, result


def running_job(profile_info):
    """The `running` write of run_scan_with_database (routes.py)."""
    return {
        "status": "running",
        "profile_info": profile_info,
        "count": 0,
        "real_ghosts_count": 0,
        "famous_ghosts_count": 0,
        "followers_count": profile_info.get('followers_count', 0),
        "following_count": profile_info.get('following_count', 0),
        "profile_followers_count": profile_info.get('followers_count', 0),
        "profile_following_count": profile_info.get('following_count', 0)
    }


def done_job(profile_info, ghosts_result):
    """The `done` write of run_scan_with_database (routes.py)."""
    return {
        "status": "done",
        "profile_info": profile_info,
        "count": ghosts_result.get('ghosts_count', 0),
        "all": ghosts_result.get('ghosts', []),
        "real_ghosts": ghosts_result.get('real_ghosts', []),
        "famous_ghosts": ghosts_result.get('famous_ghosts', []),
        "real_ghosts_count": ghosts_result.get('real_ghosts_count', 0),
        "famous_ghosts_count": ghosts_result.get('famous_ghosts_count', 0),
        "followers_count": ghosts_result.get('followers_count', 0),
        "following_count": ghosts_result.get('following_count', 0),
        "profile_followers_count": profile_info.get('followers_count', 0),
        "profile_following_count": profile_info.get('following_count', 0)
    }


# --- The database writes of database.py, in SQL (the ORM's statements).

class Database:
    def __init__(self, conn):
        self.conn = conn

    def get_or_create_user(self, username, profile_info=None):
        cur = self.conn.cursor()
        cur.execute("SELECT id FROM users WHERE username = %s", (username,))
        row = cur.fetchone()
        p = profile_info or {}
        if row is None:
            cur.execute(
                "INSERT INTO users (username, email, full_name, profile_pic_url,"
                " is_private, is_verified, followers_count, following_count, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (username, "%s@desfollow.com.br" % username, p.get("full_name"),
                 p.get("profile_pic_url"), p.get("is_private", False),
                 p.get("is_verified", False), p.get("followers_count", 0),
                 p.get("following_count", 0), datetime.utcnow()))
            row = cur.fetchone()
        elif profile_info:
            cur.execute("UPDATE users SET full_name = %s, followers_count = %s,"
                        " following_count = %s, last_updated = %s WHERE id = %s",
                        (p.get("full_name"), p.get("followers_count", 0),
                         p.get("following_count", 0), datetime.utcnow(), row[0]))
        self.conn.commit()
        return row[0]

    def save_scan_result(self, job_id, username, status, profile_info=None,
                         ghosts_data=None, error_message=None):
        """database.py's save_scan_result: the row by job_id, created if
        missing (created_at and updated_at utcnow(), as the model's
        defaults), its status, profile and results, updated_at utcnow()."""
        user_id = self.get_or_create_user(username, profile_info)
        cur = self.conn.cursor()
        cur.execute("SELECT id FROM scans WHERE job_id = %s", (job_id,))
        row = cur.fetchone()
        now = datetime.utcnow()
        if row is None:
            cur.execute("INSERT INTO scans (job_id, user_id, username, status, created_at,"
                        " updated_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                        (job_id, user_id, username, status, now, now))
            row = cur.fetchone()
        g = ghosts_data or {}
        p = profile_info or {}
        cur.execute(
            "UPDATE scans SET status = %s, profile_info = %s, ghosts_data = %s,"
            " real_ghosts = %s, famous_ghosts = %s, ghosts_count = %s,"
            " real_ghosts_count = %s, famous_ghosts_count = %s,"
            " profile_followers_count = %s, profile_following_count = %s,"
            " followers_count = %s, following_count = %s, error_message = %s,"
            " updated_at = %s WHERE id = %s",
            (status, json.dumps(profile_info) if profile_info else None,
             json.dumps(g.get("ghosts", [])) if ghosts_data else None,
             json.dumps(g.get("real_ghosts", [])) if ghosts_data else None,
             json.dumps(g.get("famous_ghosts", [])) if ghosts_data else None,
             g.get("ghosts_count"), g.get("real_ghosts_count"), g.get("famous_ghosts_count"),
             p.get("followers_count", 0), p.get("following_count", 0),
             g.get("followers_count"), g.get("following_count"), error_message,
             now, row[0]))
        self.conn.commit()


# --- Measuring.

def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


class Day:
    def __init__(self):
        self.polls, self.writes, self.size = [], [], 0
        self.snapshots = []  # copies of files the API polled that day


SNAPSHOT_EVERY = 5  # scans: a checkpoint day keeps 20 of the files polled


def checkpoints(days):
    return sorted({d for d in (1, 7, 30) if d <= days} | {days})


def limpeza_side(bin_path, tmp, url, scans, days, per_day, day_s):
    """The real simulation: the API's writes and polls, paced on the
    compressed clock, beside the real limpeza daemon. Returns per-day
    figures (on checkpoint days with copies of files the API polled) and
    what the daemon did."""
    global CACHE_FILE
    import psycopg2
    CACHE_FILE = os.path.join(tmp, "limpeza", "desfollow_jobs.json")
    os.makedirs(os.path.dirname(CACHE_FILE))
    log = os.path.join(tmp, "limpeza.log")
    interval_ms = int(day_s * 1000 / PASSES_PER_DAY)
    retention_ms = int(day_s * 1000 / 24)
    env = {"PATH": os.environ["PATH"], "LIMPEZA_ENV_FILES": "", "LIMPEZA_HEALTH_URL": "",
           "LIMPEZA_LOG_FILE": log, "LIMPEZA_CACHE_FILE": CACHE_FILE, "DATABASE_URL": url,
           "LIMPEZA_INTERVAL": "%dms" % interval_ms,
           "LIMPEZA_CACHE_RETENTION": "%dms" % retention_ms,
           # a failed cycle waits 10 s (a real hour and more of simulated time):
           # scaled, it waits one interval
           "LIMPEZA_ERROR_BACKOFF": "%dms" % interval_ms}
    daemon = subprocess.Popen([bin_path, "run"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    conn = psycopg2.connect(url, options="-c TimeZone=UTC")
    db = Database(conn)
    out = [Day() for _ in range(days)]
    keep = set(checkpoints(days))
    snapdir = os.path.join(tmp, "snapshots")
    os.makedirs(snapdir)
    slot = day_s / per_day
    lag = 0.0
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(log) and "Ciclo 1 " in open(log, encoding="utf-8").read()):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("month: limpeza did not start")
            time.sleep(0.05)
        t0 = time.monotonic()
        for i in range(days * per_day):
            due = t0 + i * slot
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            lag = max(lag, time.monotonic() - due)
            day = out[i // per_day]
            job_id, username, profile, result = scans.scan(i)
            day.writes.append(timed(set_job, job_id, {"status": "queued"}))
            day.writes.append(timed(set_job, job_id, running_job(profile)))
            db.save_scan_result(job_id, username, "running", profile)
            # the browser's poll while it runs: the row says running, so
            # the status route reads the cache (get_job -> load_jobs)
            day.polls.append(timed(load_jobs))
            if i // per_day + 1 in keep and i % SNAPSHOT_EVERY == 0:
                day.snapshots.append(os.path.join(snapdir, "%d.json" % i))
                shutil.copyfile(CACHE_FILE, day.snapshots[-1])
            day.writes.append(timed(set_job, job_id, done_job(profile, result)))
            db.save_scan_result(job_id, username, "done", profile, result)
            if (i + 1) % per_day == 0:
                day.size = os.path.getsize(CACHE_FILE)
        took = time.monotonic() - t0
    finally:
        conn.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    with open(log, encoding="utf-8") as f:
        text = f.read()
    cycles = len(re.findall(r"🔄 Ciclo \d+ ", text))
    pruned = sum(int(n) for n in re.findall(r"🗑️ Cache: (\d+) jobs finalizados removidos", text))
    prunes = len(re.findall(r"🗑️ Cache: \d+ jobs finalizados removidos", text))
    with open(CACHE_FILE) as f:
        left = json.load(f)
    return out, {"cycles": cycles, "pruned": pruned, "prunes": prunes, "took": took,
                 "lag": lag, "interval_ms": interval_ms, "retention_ms": retention_ms,
                 "left": len(left), "half_written": text.count("❌ Cache inválido"),
                 "errors": text.count("❌") - text.count("❌ Cache inválido")}


def retime(out, want, rounds=5):
    """load_jobs and set_job on the files the API polled on each checkpoint
    day, all timed after the run, the days in turn within each round: so
    day 1 and day 30 are compared on this machine's same load, not on
    whatever else ran at the time. Returns {day: (size, poll, write)}."""
    global CACHE_FILE
    polls = {d: [] for d in want}
    writes = {d: [] for d in want}
    for _ in range(rounds):
        for k in range(max(len(out[d - 1].snapshots) for d in want)):
            for d in want:
                snaps = out[d - 1].snapshots
                if k >= len(snaps):
                    continue
                CACHE_FILE = snaps[k]
                polls[d].append(timed(load_jobs))
                CACHE_FILE = snaps[k] + ".w"
                shutil.copyfile(snaps[k], CACHE_FILE)
                writes[d].append(timed(set_job, str(uuid.uuid4()), {"status": "queued"}))
                os.unlink(CACHE_FILE)
    return {d: (statistics.median(os.path.getsize(p) for p in out[d - 1].snapshots),
                statistics.median(polls[d]), statistics.median(writes[d])) for d in want}


def old_side(tmp, scans, days, per_day, reps):
    """The old cleaner's file on each checkpoint day: every scan so far, as
    the API wrote it (json.dump's form, job by job in the API's order),
    built directly; load_jobs and set_job timed on it."""
    global CACHE_FILE
    path = os.path.join(tmp, "old", "desfollow_jobs.json")
    copy = os.path.join(tmp, "old", "set_job.json")
    os.makedirs(os.path.dirname(path))
    want = checkpoints(days)
    out = {}
    n = 0
    with open(path, "w") as f:
        f.write("{")
        for day in range(1, max(want) + 1):
            for _ in range(per_day):
                job_id, _, profile, result = scans.scan(n)
                f.write("%s%s: %s" % (", " if n else "", json.dumps(job_id),
                                      json.dumps(done_job(profile, result))))
                n += 1
            if day not in want:
                continue
            end = f.tell()
            f.write("}")
            f.flush()
            size = os.path.getsize(path)
            CACHE_FILE = path
            polls = [timed(load_jobs) for _ in range(reps)]
            shutil.copyfile(path, copy)
            CACHE_FILE = copy
            writes = [timed(set_job, str(uuid.uuid4()), {"status": "queued"})
                      for _ in range(reps)]
            os.unlink(copy)
            f.seek(end)
            f.truncate()
            out[day] = (size, statistics.median(polls), statistics.median(writes))
    return out


def mb(n):
    return "%.1f MB" % (n / 1e6) if n >= 1e5 else "%.0f kB" % (n / 1e3)


def ms(s):
    return "%.0f ms" % (s * 1000) if s >= 0.1 else "%.1f ms" % (s * 1000)


def run(bin_path, tmp, days=30, per_day=100, day_s=7.0, reps=3):
    """Runs both sides and prints the month's table. Returns the verdict."""
    from pgcluster import PgCluster
    if day_s * 1000 / PASSES_PER_DAY < 100:
        sys.exit("month: --day-seconds must be at least 4.8 (limpeza's shortest interval "
                 "is 100 ms, and a simulated day has %d passes)" % PASSES_PER_DAY)
    scans = Scans()
    want = checkpoints(days)
    c = PgCluster(timezone="UTC")
    try:
        with open(os.path.join(ROOT, "tests", "fixtures", "scans_pg.sql")) as f:
            c.create_db("month", f.read())
        mine, info = limpeza_side(bin_path, tmp, c.url("month"), scans, days, per_day, day_s)
    finally:
        c.destroy()
    again = retime(mine, want)
    old = old_side(tmp, scans, days, per_day, reps)
    print("\nMonth of scans: %d simulated days of %d scans, a day = %.1f s real "
          "(took %.1f s, %.0f ms at most behind schedule); a pass every 30 simulated "
          "minutes (%d a day) for both cleaners: limpeza's daemon with LIMPEZA_INTERVAL="
          "%dms, LIMPEZA_CACHE_RETENTION=%dms (1 h scaled), PostgreSQL rows as "
          "save_scan_result writes them."
          % (days, per_day, day_s, info["took"], info["lag"] * 1000, PASSES_PER_DAY,
             info["interval_ms"], info["retention_ms"]))
    print("limpeza: the real simulation, %d real set_job writes beside the daemon: "
          "%d cycles (%.0f a simulated day), %d finished jobs removed in %d passes, "
          "%d jobs left at the end; %d passes found the file half-written by the API's "
          "open(w) + json.dump and left it alone until the next cycle, %d other error lines. "
          "Its rows: the files the API polled on that day (one in %d, kept), median size, "
          "and load_jobs and set_job timed on them after the run, %d rounds, the days in "
          "turn (so the days share this machine's load)."
          % (days * per_day * 3, info["cycles"], info["cycles"] / (info["took"] / day_s),
             info["pruned"], info["prunes"], info["left"], info["half_written"],
             info["errors"], SNAPSHOT_EVERY, 5))
    print("limpeza, timed live during the run (median of the day's %d polls and %d "
          "writes): %s." % (per_day, 3 * per_day, "; ".join(
              "day %d poll %s, write %s" % (d, ms(statistics.median(mine[d - 1].polls)),
                                            ms(statistics.median(mine[d - 1].writes)))
              for d in want)))
    print("old cleaner: it never removes a finished job, so its file on day N holds every "
          "scan so far; built directly (not written through set_job, which would take "
          "hours), then load_jobs and set_job timed %d times on it (median).\n" % reps)
    print("| day | cleaner | cache file | API poll (load_jobs) | API job write (set_job) |")
    print("|---|---|---|---|---|")
    for d in want:
        o, m = old[d], again[d]
        print("| %d | old cleaner | %s | %s | %s |" % (d, mb(o[0]), ms(o[1]), ms(o[2])))
        print("| %d | limpeza | %s | %s | %s |" % (d, mb(m[0]), ms(m[1]), ms(m[2])))
    last = want[-1]
    o, m = old[last], again[last]
    print("| %d | old ÷ limpeza | %.0f× | %.0f× | %.0f× |" % (
        last, o[0] / m[0], o[1] / m[1], o[2] / m[2]))
    ok = m[1] <= 1.5 * again[1][1]
    print("\nlimpeza: the API's poll on day %d costs %.2f× its day-1 cost (target ≤ 1.5×): %s"
          % (last, m[1] / again[1][1], "met" if ok else "**not met**"))
    return ok
