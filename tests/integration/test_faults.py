"""A fault at each fallible call of a cycle, one at a time, every one of them.

A clean `limpeza once` is traced first (strace), and every call of the
system calls below that its main thread makes from the cycle's first log
line on is one point: the cache pass's file calls, libpq's (socket,
connect, send, poll, receive) against a real PostgreSQL, libcurl's against
a real HTTP server, and, in a second scenario, the webhook's. For each
point the same run is made again with strace failing that call alone
(`-e inject=SYSCALL:error=ERRNO:when=N`, counted per syscall and per
thread as strace counts), and then:

- limpeza ended on its own with a cycle's status (0 or 1), or with the
  documented out-of-memory exit: never a signal, never another code;
- the cache file is the old version or the new one, valid, holding every
  job that was not reaped;
- a cycle that did not do all its work says which step failed and never
  says "Sistema limpo";
- the next run, with no fault, does all of it and leaves no temporary file.

The test prints how many points it ran and how long it took.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import BIN, SANITIZED, Env, PgStore, pg_cluster

STRACE = shutil.which("strace")

# What each call fails with: an error it can really return there.
ERRNO = {
    "openat": "EACCES", "read": "EIO", "pread64": "EIO", "write": "ENOSPC",
    "pwrite64": "ENOSPC", "fsync": "EIO", "fdatasync": "EIO", "fcntl": "EAGAIN",
    "flock": "EINTR", "renameat2": "EIO", "unlink": "EIO", "unlinkat": "EIO",
    "newfstatat": "EIO", "fstat": "EIO", "statx": "EIO", "lseek": "EIO",
    "copy_file_range": "EIO", "ftruncate": "EIO", "fchmod": "EPERM", "fchown": "EPERM",
    "close": "EIO", "mkdir": "EACCES",
    # sendto: the connection broken from that send on (see run_points).
    "socket": "EMFILE", "connect": "ECONNREFUSED", "sendto": "EPIPE",
    "recvfrom": "ECONNRESET", "poll": "ENOMEM", "ppoll": "ENOMEM",
    "getsockopt": "ENOBUFS", "setsockopt": "ENOBUFS", "getsockname": "ENOBUFS",
    "getpeername": "ENOTCONN",
    # allocations: a failed mmap is a failed allocation (the documented
    # out-of-memory exit) or a library that cannot be loaded. (brk is not
    # failed: the kernel's brk never returns an error, it leaves the
    # break where it was, and an injected -ENOMEM is no break at all.)
    "mmap": "ENOMEM",
}

LINE = re.compile(r"^(\d+) +([a-z0-9_]+)\((.*)$")


def trace(cmd, env, out):
    """The calls of ERRNO's set that cmd makes, as (pid, name, args) in order."""
    p = subprocess.run([STRACE, "-f", "-qq", "-s", "64", "-o", out,
                        "-e", "trace=" + ",".join(ERRNO), *cmd], env=env,
                       capture_output=True, text=True, timeout=120)
    calls = []
    with open(out, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                calls.append((int(m.group(1)), m.group(2), m.group(3)))
    return p, calls


def points(calls, main_pid, first_log):
    """(name, n, args, before) for each call that the chosen thread makes
    from the first one that satisfies first_log on: n is the call's number
    among that thread's calls of that name, as strace's when= counts, and
    before how many of each other call the thread had made until then."""
    seen, out, started = {}, [], False
    for pid, name, args in calls:
        if pid != main_pid:
            continue
        seen[name] = seen.get(name, 0) + 1
        started = started or first_log(name, args)
        if started:
            out.append((name, seen[name], args, dict(seen)))
    return out


class Scenario:
    """One cycle's worth of state, set anew before each point."""

    OLD = {"stale": {"status": "running", "start_time": 0.0},
           "keep": {"status": "done", "all": [1, 2, 3], "count": 3},
           "live": {"status": "queued", "created_at": 0.0}}

    def __init__(self, env, pg_store=None):
        self.env = env
        self.store = pg_store

    def reset(self):
        now = time.time()
        old = json.loads(json.dumps(self.OLD))
        old["stale"]["start_time"] = now - 999
        old["live"]["created_at"] = now
        self.old = old
        self.new = {k: v for k, v in old.items() if k != "stale"}
        self.env.write_cache(old)
        for f in os.listdir(self.env.tmp):
            if ".limpeza-" in f:
                os.unlink(os.path.join(self.env.tmp, f))
        if self.store is not None:
            self.store.sql("DELETE FROM scans")
            self.store.add("db-stale", "running", 900)
            self.store.add("db-live", "running", 0)

    def complete(self):
        """Did the cycle do all its work?"""
        done = json.loads(self.env.read_cache()) == self.new
        if self.store is not None:
            done = done and self.store.statuses() == {"db-stale": "error",
                                                      "db-live": "running"}
        return done

    def check_file(self, where):
        data = json.loads(self.env.read_cache())  # valid, whatever happened
        assert data in (self.old, self.new), (where, data)


def run_points(scenario, cmd, env, pts, tmp):
    """Runs every point; returns how many ended as a failed cycle and each
    point's log, by point."""
    failed_steps = 0
    slow, logs = [], {}
    for name, n, args, before in pts:
        t0 = time.monotonic()
        where = "%s #%d (%s...)" % (name, n, args[:60])
        scenario.reset()
        injects = ["inject=%s:error=%s:when=%d" % (name, ERRNO[name], n)]
        if name == "sendto":
            # A send fails on a broken connection, and the waits after it
            # fail too: libpq, after a failed send, waits on for the
            # server's last words (pqSendSome), which a healthy socket
            # whose one send was faked would never bring (limpeza's 35 s
            # client deadline, every time).
            injects.append("inject=poll:error=ENOMEM:when=%d+"
                           % (before.get("poll", 0) + 1))
        traced = ",".join(i.split("=")[1].split(":")[0] for i in injects)
        # (strace injects only into calls it traces: trace=none would
        # silently inject nothing)
        p = subprocess.run([STRACE, "-f", "-qq", "-o", os.devnull, "-e", "trace=" + traced,
                            *[x for i in injects for x in ("-e", i)], *cmd], env=env,
                           capture_output=True, text=True, timeout=120)
        log = logs[(name, n)] = p.stderr
        oom = p.returncode == 1 and "out of memory" in log
        assert p.returncode in (0, 1), (where, p.returncode, log[-2000:])
        scenario.check_file(where)
        # a write to the log itself may be the failed call: its line is lost
        log_write = name == "write" and args.startswith("2,")
        if not scenario.complete() and not oom and not log_write:
            assert p.returncode == 1, (where, log[-2000:])
            assert re.search(r"falha em: |❌|⚠️", log), (where, log[-2000:])
        if p.returncode == 1:
            failed_steps += 1
            assert "Sistema limpo" not in log, (where, log[-2000:])
        # the next run, with no fault, does all of it
        q = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert q.returncode == 0, (where, "next run", q.stderr[-2000:])
        assert scenario.complete(), (where, "next run", q.stderr[-2000:])
        assert [f for f in os.listdir(scenario.env.tmp) if ".limpeza-" in f] == [], where
        slow.append((time.monotonic() - t0, where))
    slow.sort(reverse=True)
    print("\nslowest points: " + "; ".join("%.1f s %s" % x for x in slow[:5]))  # -s shows it
    return failed_steps, logs


def first_cycle_line(name, args):
    return name == "write" and args.startswith("2,")


@pytest.mark.skipif(SANITIZED, reason="the enumeration runs once, with the plain build")
def test_a_fault_at_each_call_of_a_cycle(tmp_path, health, capsys):
    """Every point of one cycle against PostgreSQL, the cache file and the
    API's health route."""
    assert STRACE, "strace is missing (scripts/deps.sh test installs it)"
    store = PgStore(pg_cluster())
    env = Env(tmp_path, store)
    health.set_json({"status": "healthy", "jobs_active": 1})
    sc = Scenario(env, store)
    e = env.env(LIMPEZA_HEALTH_URL=health.url, LIMPEZA_LOG_FILE="")
    sc.reset()
    t0 = time.monotonic()
    p, calls = trace([BIN, "once"], e, str(tmp_path / "trace"))
    assert p.returncode == 0 and sc.complete(), p.stderr
    pts = points(calls, calls[0][0], first_cycle_line)
    kinds = {pt[0] for pt in pts}
    # the cycle's path as the issue names it: the cache file's calls,
    # libpq's and libcurl's
    for want in ("openat", "read", "fsync", "flock", "renameat2", "unlink", "fcntl",
                 "connect", "sendto", "recvfrom", "poll"):
        assert want in kinds, (want, sorted(kinds))
    failed, logs = run_points(sc, [BIN, "once"], e, pts, tmp_path)
    # the injections landed: the first connect (libpq's) fails the store step
    assert "Erro no banco" in logs[("connect", 1)] or "Erro ao consultar API" in \
        logs[("connect", 1)], logs[("connect", 1)]
    took = time.monotonic() - t0
    with capsys.disabled():  # shown in `make test` too, not only with -s
        print("\nfault enumeration (store, cache, health): %d points, %d ended as a failed "
              "cycle, %.0f s" % (len(pts), failed, took))


@pytest.mark.skipif(SANITIZED, reason="the enumeration runs once, with the plain build")
def test_a_fault_at_each_call_of_the_webhook(tmp_path, capsys):
    """Every point of the forced cleanup's alert, sent by its own thread:
    no fault there may stop the cycle or change what it did."""
    from test_observability import Webhook
    assert STRACE, "strace is missing (scripts/deps.sh test installs it)"
    env = Env(tmp_path)
    sc = Scenario(env)
    sc.new = {}
    hook = Webhook()
    try:
        e = env.env(DATABASE_URL=None, LIMPEZA_LOG_FILE="", LIMPEZA_ALERT_WEBHOOK=hook.url,
                    LIMPEZA_FORCE_CACHE="all")
        cmd = [BIN, "once", "--force"]
        sc.reset()
        sc.new = {}
        t0 = time.monotonic()
        p, calls = trace(cmd, e, str(tmp_path / "trace"))
        assert p.returncode == 0 and sc.complete(), p.stderr
        assert hook.wait(1) == ["forced_cleanup"]
        main = calls[0][0]
        threads = [pid for pid, _, _ in calls if pid != main]
        assert threads, "no alert thread seen"
        # The sender thread's network calls, from its first one on. strace
        # counts per thread but injects into every thread's Nth call: so
        # only calls that the main thread never makes here (it has no
        # database and no health URL) are points of the sender alone.
        main_names = {name for pid, name, _ in calls if pid == main}
        pts = [pt for pt in points(calls, threads[0], lambda name, args: True)
               if pt[0] not in main_names]
        assert {"socket", "connect", "sendto"} <= {pt[0] for pt in pts}, pts

        def reset():
            Scenario.reset(sc)
            sc.new = {}
        sc.reset = reset
        failed, logs = run_points(sc, cmd, e, pts, tmp_path)
        # the injections landed: with its connect failed, the alert is lost
        # and said so, and the cycle is not the worse for it
        assert "Alerta não entregue" in logs[("connect", 1)], logs[("connect", 1)]
        took = time.monotonic() - t0
        with capsys.disabled():
            print("\nfault enumeration (webhook): %d points, %d ended as a failed cycle, "
                  "%.0f s" % (len(pts), failed, took))
    finally:
        hook.server.shutdown()
        hook.server.server_close()
