#!/usr/bin/env python3
"""The old cleaner's algorithm, restated from SPEC §1 as the baseline (not for use).

cache PATH: load the whole file with json, drop stale jobs (a missing time
counts as 0, as the old cleaner did), json.dump the whole file back, every
pass. db URL: one UPDATE per rule, then the 24 h statistics. dbloop URL N:
that, N times on one connection, each pass's wall and CPU time printed.
daemon: cache and health, every INTERVAL seconds, for CYCLES cycles.
"""

import json
import sys
import time

RUNNING_TTL, QUEUED_TTL = 180, 120


def cache_pass(path):
    with open(path) as f:
        jobs = json.load(f)
    now = time.time()
    for job_id in list(jobs):
        job = jobs[job_id]
        status = job.get("status")
        if status == "running" and now - job.get("start_time", 0) > RUNNING_TTL:
            del jobs[job_id]
        elif status == "queued" and \
                now - job.get("start_time", job.get("created_at", 0)) > QUEUED_TTL:
            del jobs[job_id]
    with open(path, "w") as f:
        json.dump(jobs, f)


def db_pass(conn):
    """One pass; returns the seconds the two UPDATEs took (committed)."""
    cur = conn.cursor()
    t0 = time.monotonic()
    cur.execute("UPDATE scans SET status='error', error_message='Job órfão - mais de 3 minutos',"
                " updated_at=now() WHERE status='running'"
                " AND updated_at < now() - interval '3 minutes'")
    cur.execute("UPDATE scans SET status='error', error_message='Job queued expirado - mais de 2"
                " minutos', updated_at=now() WHERE status='queued'"
                " AND updated_at < now() - interval '2 minutes'")
    conn.commit()
    reap = time.monotonic() - t0
    cur.execute("SELECT status, count(*) FROM scans WHERE created_at >= now() - interval '24 hours'"
                " GROUP BY status")
    cur.fetchall()
    conn.commit()
    return reap


def main():
    what = sys.argv[1]
    if what == "cache":
        cache_pass(sys.argv[2])
    elif what == "db":
        import psycopg2
        conn = psycopg2.connect(sys.argv[2], options="-c TimeZone=UTC")
        print("reap %.6f" % db_pass(conn), file=sys.stderr)
    elif what == "dbloop":
        # steady state: one connection, PASSES passes, each timed in-process
        import psycopg2
        import resource
        conn = psycopg2.connect(sys.argv[2], options="-c TimeZone=UTC")
        for _ in range(int(sys.argv[3])):
            t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
            db_pass(conn)
            t1, r1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
            cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
            # VmHWM, not ru_maxrss: that one keeps the peak of the parent
            # that forked this process
            with open("/proc/self/status") as f:
                peak = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")][0]
            print(json.dumps({"wall": t1 - t0, "cpu": cpu, "rss_mb": peak / 1024}), flush=True)
    elif what == "daemon":
        import urllib.request
        path, health, interval, cycles = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
        for _ in range(cycles):
            cache_pass(path)
            try:
                urllib.request.urlopen(health, timeout=10).read()
            except OSError:
                pass
            time.sleep(interval)
        time.sleep(3600)  # stay up to be measured


if __name__ == "__main__":
    main()
