#!/usr/bin/env python3
"""A stand-in for the Desfollow API, written for limpeza's tests from
reading the API's backend/app/routes.py (none of its code is here).

What it reproduces is what limpeza meets on the real host:

- the job cache is one JSON file that every request reads whole and every
  change writes whole again (open for writing, which truncates it, then
  json.dump), with no lock and no atomic rename; a file that cannot be
  read counts as empty;
- a job is written with no time at all: `queued`, then `running` with its
  profile, then `done` with its result lists, or `error`;
- GET /api/health is not read-only: it reads the cache, turns every
  `running` job without `start_time` into `"status": "error", "error":
  "Job órfão - sem start_time"`, writes the whole file back, and only then
  counts running jobs younger than 30 min (so it answers 0);
- several worker processes serve it at once (the API runs under gunicorn
  with several Uvicorn workers), each doing the above with nobody's lock.

Run as a program it serves 127.0.0.1 on a free port (printed on its first
line of standard output) with WORKERS forked processes:

    apidouble.py CACHE_FILE [WORKERS]

Routes: GET /api/health; POST /api/scan/ID (queued), POST
/api/scan/ID/running, POST /api/scan/ID/done, POST /api/scan/ID/error;
GET /api/scan/ID (the job as the cache holds it, 404 if it is not there).
"""

import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import time

ORPHAN_MESSAGE = "Job órfão - sem start_time"
FRESH_S = 1800  # the health route counts running jobs younger than this


class JobCache:
    """The API's job cache file, handled the way the API handles it."""

    def __init__(self, path):
        self.path = path

    def read(self):
        """Every job; {} when the file is missing or cannot be read (the
        API reports the error and carries on with nothing)."""
        try:
            with open(self.path, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001 - the API swallows them all
            print("apidouble: cannot read %s: %s" % (self.path, e), file=sys.stderr)
            return {}

    def write(self, jobs):
        """The whole file again, in place: truncated, then dumped."""
        try:
            with open(self.path, "w") as f:
                json.dump(jobs, f)
        except Exception as e:  # noqa: BLE001
            print("apidouble: cannot write %s: %s" % (self.path, e), file=sys.stderr)

    def put(self, job_id, job):
        """One job changed: read everything, change it, write everything."""
        jobs = self.read()
        jobs[job_id] = job
        self.write(jobs)

    def get(self, job_id):
        return self.read().get(job_id)

    def health(self):
        """The health route's effect and answer."""
        jobs = self.read()
        active = 0
        for job in jobs.values():
            if not isinstance(job, dict) or job.get("status") != "running":
                continue
            if "start_time" not in job:
                job["status"] = "error"
                job["error"] = ORPHAN_MESSAGE
            elif time.time() - job["start_time"] < FRESH_S:
                active += 1
        self.write(jobs)
        return {"status": "healthy", "jobs_active": active}


def scan_job(state):
    """A job as the API writes it in each state, without any time."""
    if state == "queued":
        return {"status": "queued"}
    if state == "running":
        return {"status": "running", "profile_info": {"username": "someone",
                                                      "followers_count": 120},
                "count": 0}
    if state == "done":
        return {"status": "done", "count": 2, "all": [{"username": "a"}, {"username": "b"}],
                "profile_info": {"username": "someone"}}
    return {"status": "error", "error": "Erro no scan"}


def handler_for(cache):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if parts == ["api", "health"]:
                self.answer(200, cache.health())
            elif len(parts) == 3 and parts[:2] == ["api", "scan"]:
                job = cache.get(parts[2])
                if job is None:
                    self.answer(404, {"detail": "Job não encontrado"})
                else:
                    self.answer(200, job)
            else:
                self.answer(404, {"detail": "Not Found"})

        def do_POST(self):
            parts = self.path.strip("/").split("/")
            if parts[:2] != ["api", "scan"] or len(parts) not in (3, 4):
                self.answer(404, {"detail": "Not Found"})
                return
            state = parts[3] if len(parts) == 4 else "queued"
            cache.put(parts[2], scan_job(state))
            self.answer(200, {"job_id": parts[2]})

    return Handler


def serve(cache_path, workers=3):
    """Binds, prints the port, forks the workers and waits for them; a
    SIGTERM ends them all."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(sock.getsockname()[1], flush=True)
    cache = JobCache(cache_path)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            server = socketserver.TCPServer(("127.0.0.1", 0), handler_for(cache),
                                            bind_and_activate=False)
            server.socket = sock
            server.serve_forever()
            os._exit(0)
        children.append(pid)

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
