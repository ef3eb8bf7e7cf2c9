"""The job table for `make bench`: the real `scans` table with N rows, of
which a backlog of stale running and queued jobs that reset() recreates
between measurements (bench/run.py does the measuring)."""


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
