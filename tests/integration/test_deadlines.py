"""Idle passes and exact deadlines (issue: performance): no read when nothing is due,
and a job reaped within 1 s of its deadline even with a 30 s interval."""

import ctypes
import os
import select
import struct
import time

from conftest import SLOW

IN_ACCESS, IN_MODIFY, IN_OPEN = 0x1, 0x2, 0x20


class Inotify:
    """Counts opens and reads of one file, through the kernel's inotify."""

    def __init__(self, path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        assert libc.inotify_add_watch(self.fd, path.encode(), IN_ACCESS | IN_MODIFY | IN_OPEN) >= 0

    def events(self):
        out = []
        while select.select([self.fd], [], [], 0)[0]:
            buf = os.read(self.fd, 4096)
            i = 0
            while i < len(buf):
                _, mask, _, n = struct.unpack_from("iIII", buf, i)
                out.append(mask)
                i += 16 + n
        return out

    def close(self):
        os.close(self.fd)


def test_nothing_due_means_no_read(env, daemons):
    now = time.time()
    env.write_cache({"live": {"status": "running", "start_time": now},
                     "q": {"status": "queued"},
                     "done": {"status": "done", "all": list(range(1000))}})
    before = os.stat(env.cache)
    d = daemons(env, LIMPEZA_INTERVAL="100ms", DATABASE_URL=None, LIMPEZA_LOG_LEVEL="debug")
    d.wait_for("Ciclo 2 ")
    watch = Inotify(env.cache)
    try:
        n = d.stderr().count("Ciclo ")
        d.wait_for("Ciclo ", count=n + 10)
        events = watch.events()
        # ten cycles: the file was neither opened nor read nor written
        assert events == [], events
        assert d.stderr().count("leitura dispensada") >= 10
        after = os.stat(env.cache)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        # a change is seen at once: the next pass reads the file
        with open(env.cache, "a") as f:
            f.write(" ")
        watch.events()
        n = d.stderr().count("Ciclo ")
        d.wait_for("Ciclo ", count=n + 2)
        assert any(e & IN_OPEN for e in watch.events())
    finally:
        watch.close()


def test_job_reaped_at_its_deadline_before_the_next_cycle(senv, daemons):
    env = senv
    t0 = time.time()
    env.store.add("db-job", "running", 0)
    env.write_cache({"c-job": {"status": "running", "start_time": t0},
                     "done": {"status": "done"}})
    # the first cycle sees both jobs 3 s before they fall due; the next
    # regular cycle is 30 s away, and no signal is sent
    d = daemons(env, LIMPEZA_INTERVAL="30s", LIMPEZA_RUNNING_TTL="3s")
    d.wait_for("Sistema limpo")
    deadline = t0 + 3
    reaped = {}
    # Until both are gone, or nearly until the next regular cycle: what
    # shows the wake-up is that they went before it, not how soon (a busy
    # machine may be late; the figure is printed, never asserted).
    while len(reaped) < 2 and time.time() < t0 + 25:
        if "c-job" not in reaped and "c-job" not in env.read_cache():
            reaped["c-job"] = time.time()
        if "db-job" not in reaped and env.store.statuses()["db-job"] == "error":
            reaped["db-job"] = time.time()
        time.sleep(0.02)
    assert set(reaped) == {"c-job", "db-job"}, d.stderr()[-2000:]
    for job, at in reaped.items():
        assert deadline <= at, (job, at - deadline)  # never before its TTL
        print("\n%s reaped %.2f s after its deadline" % (job, at - deadline))
    log = d.stderr()
    assert "⏰ Prazo atingido" in log
    assert "Ciclo 2 " not in log  # the regular cycles kept their rhythm


def test_dry_run_has_no_deadline_wakeups(senv, daemons):
    """A dry run ends nothing, so a stale row stays due: waking for it would
    only repeat the same look every 250 ms. It waits for the next cycle."""
    env = senv
    env.store.add("stale", "running", 900)
    d = daemons(env, LIMPEZA_INTERVAL="30s", LIMPEZA_DRY_RUN="1", LIMPEZA_CACHE_FILE="")
    d.wait_for("📊 Stats banco")
    time.sleep(3)
    log = d.stderr()
    assert "⏰" not in log, log[-2000:]
    assert "Ciclo 2 " not in log
    assert env.store.statuses() == {"stale": "running"}


def limpeza_xacts(pg, store, keep, since=0):
    """Transactions committed or rolled back in the store's database so
    far, once no session but those in keep is left (a backend's counters
    reach the statistics as it exits)."""
    store.sessions_gone(keep)
    dbname = store.dbname
    return int(pg.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                      " WHERE datname = %s", (dbname,))[0][0]) - since


def test_unmet_deadline_backs_off(tmp_path, pg, daemons):
    """A stale row that another session holds FOR UPDATE for 10 s cannot be
    ended (SKIP LOCKED passes it by). A deadline wake-up that ends nothing
    waits for the next regular cycle: a bounded number of transactions per
    cycle, not a look every 250 ms."""
    from conftest import Env, PgStore
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    s.add("held", "running", 900)
    holder = s.connect()
    holder.autocommit = False
    holder.cursor().execute("SELECT 1 FROM scans WHERE job_id = 'held' FOR UPDATE")
    try:
        before = limpeza_xacts(pg, s, [holder.get_backend_pid()])
        d = daemons(env, LIMPEZA_INTERVAL="2s", LIMPEZA_CACHE_FILE="", LIMPEZA_LOG_LEVEL="debug")
        d.wait_for("Ciclo 1 ")
        time.sleep(10)
        assert d.stop() == 0
        log = d.stderr()
        xacts = limpeza_xacts(pg, s, [holder.get_backend_pid()], before)
        assert s.statuses() == {"held": "running"}
    finally:
        holder.rollback()
        holder.close()
    cycles = log.count("🔄 Ciclo")
    looks = log.count("Busca no banco:")
    # per cycle: its look, its batch, the look for the holder of the row
    # it skipped (issue 21) and its statistics, and at most one wake-up (a
    # look, a batch and the holder's look); a few for the test's own queries
    assert xacts <= 7 * cycles + 6, (xacts, cycles, looks)
    assert looks <= 2 * cycles, (looks, cycles)
