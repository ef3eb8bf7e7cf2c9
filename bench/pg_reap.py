#!/usr/bin/env python3
"""Benchmark: the database step on 1,000,000 rows with 15,000 stale ones.

Starts a throwaway PostgreSQL 15 cluster, seeds the real `scans` table, runs
`limpeza once` (database step only) without and then with the index that
`limpeza check` recommends, and prints the cycle time, the following
nothing-to-reap cycle, and the longest time one batch held its row locks
(limpeza times each batch statement and logs it at debug level).

Usage: bench/pg_reap.py [--rows N] [--stale N] [--batch N]
"""

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from pgcluster import PgCluster  # noqa: E402

BIN = os.environ.get("LIMPEZA_BIN", os.path.join(ROOT, "build", "limpeza"))


def seed(c, dbname, rows, stale):
    c.sql("""
        INSERT INTO scans (username, job_id, status, created_at, updated_at)
        SELECT 'user' || (i %% 5000), 'job-' || i,
               CASE WHEN i %% 5 = 0 THEN 'error' ELSE 'done' END,
               now() - make_interval(secs => (i %% 2592000)),
               now() - make_interval(secs => (i %% 2592000)) + interval '90 seconds'
        FROM generate_series(1, %s) i
    """, (rows - stale - 200,), dbname=dbname, as_app=True)
    reset(c, dbname, stale, insert=True)
    c.sql("""
        INSERT INTO scans (username, job_id, status, created_at, updated_at)
        SELECT 'live', 'live-' || i, CASE WHEN i %% 2 = 0 THEN 'running' ELSE 'queued' END,
               now(), now() + interval '1 hour' FROM generate_series(1, 200) i
    """, (), dbname=dbname, as_app=True)
    c.sql("VACUUM ANALYZE scans", dbname=dbname)


def reset(c, dbname, stale, insert=False):
    """(Re)creates the stale backlog: running and queued, last seen 10 min ago."""
    if insert:
        c.sql("""
            INSERT INTO scans (username, job_id, status, created_at, updated_at)
            SELECT 'orphan', 'orphan-' || i, CASE WHEN i %% 3 = 0 THEN 'queued' ELSE 'running' END,
                   now() - interval '15 minutes', now() - interval '10 minutes'
            FROM generate_series(1, %s) i
        """, (stale,), dbname=dbname, as_app=True)
    else:
        c.sql("""
            UPDATE scans SET status = CASE WHEN substr(job_id, 8)::int %% 3 = 0
                                           THEN 'queued' ELSE 'running' END,
                   error_message = NULL, updated_at = now() - interval '10 minutes'
            WHERE job_id LIKE 'orphan-%%'
        """, (), dbname=dbname, as_app=True)
        c.sql("VACUUM ANALYZE scans", dbname=dbname)


def cycle(url, batch, tmp):
    log = os.path.join(tmp, "bench.log")
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": url, "LIMPEZA_ENV_FILES": "",
           "LIMPEZA_CACHE_FILE": "", "LIMPEZA_HEALTH_URL": "", "LIMPEZA_LOG_FILE": "",
           "LIMPEZA_LOG_LEVEL": "debug", "LIMPEZA_BATCH": str(batch)}
    t0 = time.monotonic()
    p = subprocess.run([BIN, "once"], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit("limpeza once failed:\n" + p.stderr)
    batches = [int(ms) for _, ms in re.findall(r"Lote no banco: (\d+) jobs em (\d+) ms", p.stderr)]
    m = re.search(r"running > 3min: (\d+), queued > 2min: (\d+)", p.stderr)
    return wall, int(m.group(1)) + int(m.group(2)), max(batches or [0]), len(batches)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stale", type=int, default=15_000)
    ap.add_argument("--batch", type=int, default=1000)
    a = ap.parse_args()

    c = PgCluster(timezone="UTC")
    try:
        with open(os.path.join(ROOT, "tests", "fixtures", "scans_pg.sql")) as f:
            c.create_db("bench", f.read())
        t0 = time.monotonic()
        seed(c, "bench", a.rows, a.stale)
        print("seeded %d rows (%d stale) in %.1f s" % (a.rows, a.stale, time.monotonic() - t0))
        url = c.url("bench")
        results = []
        for label in ("no index", "recommended indexes"):
            if label != "no index":
                reset(c, "bench", a.stale)
                env = {"PATH": os.environ["PATH"], "DATABASE_URL": url, "LIMPEZA_ENV_FILES": "",
                       "LIMPEZA_CACHE_FILE": "", "LIMPEZA_HEALTH_URL": "", "LIMPEZA_LOG_FILE": ""}
                out = subprocess.run([BIN, "check"], env=env, capture_output=True, text=True).stdout
                for ddl in re.findall(r"^  (CREATE INDEX CONCURRENTLY .*;)$", out, re.M):
                    c.sql(ddl, dbname="bench", as_app=True)
                c.sql("ANALYZE scans", dbname="bench")
            wall, reaped, worst, nb = cycle(url, a.batch, c.base)
            idle, _, _, _ = cycle(url, a.batch, c.base)
            results.append((label, wall, reaped, nb, worst, idle))
        print()
        print("| database step, %d rows, %d stale | cycle | reaped | batches | longest batch (row locks held) | next cycle, nothing to reap |"
              % (a.rows, a.stale))
        print("|---|---|---|---|---|---|")
        for label, wall, reaped, nb, worst, idle in results:
            print("| %s | %.2f s | %d | %d | %d ms | %.2f s |" % (label, wall, reaped, nb, worst, idle))
    finally:
        c.destroy()


if __name__ == "__main__":
    main()
