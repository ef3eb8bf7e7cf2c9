#!/usr/bin/env python3
"""A realistic cache file: mostly done jobs with result lists, some active, N orphans.

Usage: gen_cache.py PATH MEGABYTES ORPHANS   (20,000 jobs ≈ 50 MB)
"""

import json
import random
import sys
import time


def generate(path, megabytes, orphans, seed=1):
    rng = random.Random(seed)
    now = time.time()
    jobs = {}
    n_jobs = max(100, int(megabytes * 400))
    per_job = int(megabytes * 1e6 / n_jobs)
    names = max(1, (per_job - 200) // 18)
    # The API's dict keeps insertion order: the oldest (done) jobs come
    # first, and orphans are among the recent ones, every 7th job near the end.
    orphan_at = set(n_jobs - 1 - 7 * k for k in range(min(orphans, n_jobs // 7)))
    for i in range(n_jobs):
        job_id = "%032x" % rng.getrandbits(128)
        if i in orphan_at:
            job = {"status": "running", "start_time": now - 600 - (n_jobs - i),
                   "profile_info": {"username": "user%d" % i}, "count": 0}
        elif i % 50 == 1:
            job = {"status": "running", "start_time": now - rng.uniform(0, 60), "count": 0}
        elif i % 50 == 2:
            job = {"status": "queued"}
        else:
            job = {"status": "done", "start_time": now - rng.uniform(600, 90000),
                   "profile_info": {"username": "user%d" % i, "followers": rng.randint(0, 10**6)},
                   "all": ["ghost_%08d" % rng.randint(0, 10**8) for _ in range(names)],
                   "count": names}
        jobs[job_id] = job
    with open(path, "w") as f:
        json.dump(jobs, f)


if __name__ == "__main__":
    generate(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
