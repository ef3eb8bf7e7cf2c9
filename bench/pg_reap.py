"""The job table for `make bench`: the real `scans` table with N rows, of
which a backlog of stale running and queued jobs that reset() recreates
between measurements (bench/run.py does the measuring)."""

import os
import re
import statistics
import time


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


def logged_statements(c, dbname, run):
    """limpeza's two reaping statements, the look for the stale rows'
    addresses and the batch that ends them, each with its parameters, as
    the server logs them while run() makes limpeza reap (log_statement=all
    for the application's role, for that run only)."""
    c.sql("ALTER ROLE app IN DATABASE %s SET log_statement = 'all'" % dbname)
    start = os.path.getsize(c.logfile)
    try:
        run()
    finally:
        c.sql("ALTER ROLE app IN DATABASE %s RESET log_statement" % dbname)
    with open(c.logfile, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        log = f.read()
    found = []
    for head in ("SELECT ctid", "UPDATE"):
        # "parameters:" up to PostgreSQL 15, "Parameters:" from 16 on
        m = re.search(r"execute <unnamed>: (%s .*)\n.*DETAIL:  [Pp]arameters: (.*)\n" % head, log)
        if m is None:
            raise SystemExit("limpeza's reaping statements not found in the server log")
        params = {int(n): v.replace("''", "'") for n, v in
                  re.findall(r"\$(\d+) = '((?:[^']|'')*)'", m.group(2))}
        found.append((m.group(1), [params[i] for i in sorted(params)]))
    # the batch's $5 is the addresses the look found
    if not found[1][1][4].startswith("{"):
        raise SystemExit("limpeza's batch statement changed: $5 is not the addresses")
    return found


def statements_alone(c, dbname, stale, statements, batch, rounds=5):
    """The reaping statements alone, both sides on one warm connection,
    alternating: limpeza's look, then its batch statement over each
    `batch` of the addresses found (both prepared, planned for their values
    as libpq's unnamed statements are), against the old cleaner's two
    UPDATEs. Returns the medians."""
    from old_cleaner import db_pass
    (look, look_params), (reap, reap_params) = statements
    conn = c.app(dbname)
    cur = conn.cursor()
    cur.execute("SET plan_cache_mode = force_custom_plan")
    cur.execute("PREPARE look AS " + look)
    cur.execute("PREPARE reap AS " + reap)
    call = lambda name, n: "EXECUTE %s(%s)" % (name, ", ".join(["%s"] * n))
    mine, base = [], []
    try:
        for _ in range(rounds):
            reset(c, dbname, stale)
            t0 = time.monotonic()
            cur.execute(call("look", len(look_params)), look_params)
            tids = [r[0] for r in cur.fetchall()]
            for i in range(0, len(tids), batch):
                params = list(reap_params)
                params[4] = "{%s}" % ",".join('"%s"' % t for t in tids[i:i + batch])
                cur.execute(call("reap", len(params)), params)
            mine.append(time.monotonic() - t0)
            reset(c, dbname, stale)
            conn.autocommit = False
            base.append(db_pass(conn))
            conn.autocommit = True
    finally:
        conn.close()
    return statistics.median(mine), statistics.median(base)
