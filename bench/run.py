#!/usr/bin/env python3
"""make bench: limpeza and the old cleaner's algorithm side by side, in one run.

Wall time, CPU time and peak RSS come from the kernel's accounting of each
finished process (wait4). Prints one Markdown table.

Then the month of scans (bench/month.py): the API's own cost per status poll
and per job write over 30 simulated days, with limpeza and with the old
cleaner, in a table of its own.

Usage: bench/run.py [--cycles N] [--rows N] [--stale N] [--skip-cache] [--skip-db]
                    [--skip-daemon] [--skip-month]
       bench/run.py --month [--days N] [--scans-per-day N] [--day-seconds S]
                    [--month-reps N]   (the month of scans only: make bench-month)
"""

import argparse
import http.server
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, HERE)
BIN = os.environ.get("LIMPEZA_BIN", os.path.join(ROOT, "build", "limpeza"))
PY = "/usr/bin/python3"
BATCH = 1000  # limpeza's default LIMPEZA_BATCH, which the bench runs with

from gen_cache import generate  # noqa: E402


def measure(cmd, env=None, ok=(0,)):
    """(wall s, cpu s, peak RSS MB, stderr) of one finished process.

    GNU time reads the kernel's accounting (wait4) of its own small child,
    so the peak is the command's, not this Python process's (a child forked
    from a big parent inherits its high-water mark).
    """
    fd, out = tempfile.mkstemp()
    os.close(fd)
    p = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", out, *cmd], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with open(out) as f:
        wall, user, sys_, rss = f.read().split()[-4:]
    os.unlink(out)
    if p.returncode not in ok:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), p.stderr[-2000:]))
    return float(wall), float(user) + float(sys_), int(rss) / 1024.0, p.stderr


def limpeza_env(**kw):
    e = {"PATH": os.environ["PATH"], "LIMPEZA_ENV_FILES": "", "LIMPEZA_HEALTH_URL": "",
         "LIMPEZA_LOG_FILE": "", "LIMPEZA_CACHE_FILE": ""}
    e.update({k: str(v) for k, v in kw.items()})
    return e


rows = []


def row(what, mine, base, note=""):
    rows.append((what, mine, base, note))


def verdict(ok, target):
    """The issue's acceptance target for a row, and whether this run met it."""
    return "target %s: %s" % (target, "met" if ok else "**not met**")


def bench_cache(tmp):
    tmp_disk = tmp
    cases = [(tmp, 5, 100, "cache pass, 5 MB, 100 orphans"),
             (tmp, 50, 100, "cache pass, 50 MB, 100 orphans"),
             (tmp, 50, 0, "cache pass, 50 MB, nothing to do")]
    if os.path.isdir("/dev/shm"):
        # the same on a tmpfs, where fsync costs nothing: what the disk adds
        shm = tempfile.mkdtemp(prefix="limpeza-bench-", dir="/dev/shm")
        cases.append((shm, 50, 100, "cache pass, 50 MB, 100 orphans, on tmpfs"))
    for where, mb, orphans, label in cases:
        tmp = where
        src = os.path.join(tmp, "src.json")
        generate(src, mb, orphans)
        size = os.path.getsize(src) / 1048576.0
        a, b = os.path.join(tmp, "a.json"), os.path.join(tmp, "b.json")
        mines, bases = [], []
        for _ in range(5):
            shutil.copy(src, a)
            shutil.copy(src, b)
            # the copies' write-back must not run during the passes, and the
            # virtual disk gets a moment to catch up after it
            os.sync()
            time.sleep(1)
            mines.append(measure([BIN, "once"], limpeza_env(LIMPEZA_CACHE_FILE=a)))
            bases.append(measure([PY, os.path.join(HERE, "old_cleaner.py"), "cache", b]))
        mine, base = median(mines), median(bases)
        note = "RSS %.2f× the file; limpeza %.2f–%.2f s, baseline %.2f–%.2f s" % (
            mine[2] / size, min(m[0] for m in mines), max(m[0] for m in mines),
            min(b[0] for b in bases), max(b[0] for b in bases))
        if mb == 50 and orphans and where == tmp_disk:
            note += "; " + verdict(base[0] >= 10 * mine[0], "≥ 10×") + "; " + \
                verdict(mine[2] <= 1.5 * size, "peak ≤ 1.5× the file")
        row("%s (%.1f MiB file), median of 5" % (label, size), mine[:3], base[:3], note)
        if where.startswith("/dev/shm"):
            shutil.rmtree(where, ignore_errors=True)


# The tiny-member file's peak before issue 23 (commit 46a6c92 on the
# 2-core bench machine; the issue measured 328 MB): every member was kept.
TINY_BEFORE_MIB = 327.2


def bench_tiny(tmp):
    """Issue 23's hostile file: 2 million "k":0 members. Refused past the
    member limit, at a peak within 2× the file plus 8 MiB."""
    path = os.path.join(tmp, "tiny.json")
    with open(path, "w") as f:
        f.write("{" + ",".join(['"k":0'] * 2000000) + "}")
    size = os.path.getsize(path) / 1048576.0
    mine = measure([BIN, "once", "--dry-run"], limpeza_env(LIMPEZA_CACHE_FILE=path), ok=(0, 1))
    refused = "limpeza's limit" in mine[3]
    rows.append(("cache pass `once --dry-run`, 2,000,000 tiny members `\"k\":0` (%.1f MiB "
                 "file)" % size, mine[:3], "%.1f MiB peak before issue 23" % TINY_BEFORE_MIB,
                 "%s; peak %.1f MiB against %.1f MiB before; " % (
                     "refused (member limit)" if refused else "read", mine[2],
                     TINY_BEFORE_MIB) +
                 verdict(mine[2] <= 2 * size + 8, "peak ≤ 2× the file + 8 MiB")))
    os.unlink(path)


def scrape(port):
    """(cycles, seconds) from limpeza's own cycle histogram."""
    import urllib.request
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    get = lambda k: float(re.search(r"^%s (\S+)$" % k, body, re.M).group(1))
    return get("limpeza_cycle_duration_seconds_count"), get("limpeza_cycle_duration_seconds_sum")


def on_cpu(pid):
    """Seconds the main thread (where cycles run) spent on a CPU: the kernel's schedstat."""
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0]) / 1e9


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024.0


def daemon_db(c, url, stale, log):
    """A running daemon (connection open, leader already elected): one cycle
    that reaps the backlog, then three with nothing to reap, each started
    with SIGUSR1. Returns (wall, cpu, peak) of the first and a list of the rest."""
    import signal
    import pg_reap
    from pgcluster import free_port
    port = free_port()
    env = limpeza_env(DATABASE_URL=url, LIMPEZA_INTERVAL="24h",
                      LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port, LIMPEZA_LOG_FILE=log)
    p = subprocess.Popen([BIN, "run"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        def cycles():
            try:
                return scrape(port)
            except OSError:
                return (0.0, 0.0)

        deadline = time.monotonic() + 60
        while cycles()[0] < 1:  # the first cycle connects
            if time.monotonic() > deadline or p.poll() is not None:
                tail = open(log).read()[-2000:] if os.path.exists(log) else ""
                sys.exit("limpeza run did not finish its first cycle:\n" + tail)
            time.sleep(0.05)
        pg_reap.reset(c, "bench", stale)
        def ended():
            # watching the log, not scraping, keeps the measured cycle alone
            with open(log, encoding="utf-8") as f:
                text = f.read()
            return text.count("✅ Limpeza executada") + text.count("✅ Sistema limpo")

        out = []
        for _ in range(4):
            n0, s0 = cycles()
            done = ended()
            cpu0 = on_cpu(p.pid)
            p.send_signal(signal.SIGUSR1)
            while ended() <= done:
                time.sleep(0.05)
            cpu1 = on_cpu(p.pid)
            while cycles()[0] < n0 + 1:
                time.sleep(0.01)
            n1, s1 = cycles()
            out.append((s1 - s0, cpu1 - cpu0, peak_rss(p.pid)))
    finally:
        p.terminate()
        p.wait()
    return out[0], out[1:]


def baseline_db(url):
    """The old cleaner's passes on one connection: the backlog, then three idle."""
    import json
    out = subprocess.run([PY, os.path.join(HERE, "old_cleaner.py"), "dbloop", url, "4"],
                         capture_output=True, text=True, check=True).stdout
    passes = [json.loads(line) for line in out.splitlines()]
    return [(x["wall"], x["cpu"], x["rss_mb"]) for x in passes]


def median(runs):
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


def bench_db(tmp, n_rows, stale):
    import pg_reap
    from pgcluster import PgCluster
    c = PgCluster(timezone="UTC")
    try:
        with open(os.path.join(ROOT, "tests", "fixtures", "scans_pg.sql")) as f:
            c.create_db("bench", f.read())
        pg_reap.seed(c, "bench", n_rows, stale)
        url = c.url("bench")
        unindexed = {}
        for label in ("no index", "indexes from limpeza check"):
            if label != "no index":
                out = subprocess.run([BIN, "check"], env=limpeza_env(DATABASE_URL=url),
                                     capture_output=True, text=True).stdout
                for ddl in re.findall(r"^  (CREATE INDEX CONCURRENTLY .*;)$", out, re.M):
                    c.sql(ddl, dbname="bench", as_app=True)
                c.sql("ANALYZE scans", dbname="bench")
            # whole processes: connecting, electing a leader, one cycle; at
            # debug level, which times each batch
            env = limpeza_env(DATABASE_URL=url, LIMPEZA_LOG_LEVEL="debug")
            pg_reap.reset(c, "bench", stale)
            mine = measure([BIN, "once"], env)
            batches = [int(ms) for ms in re.findall(r"Lote no banco: \d+ jobs em (\d+) ms",
                                                    mine[3])]
            looks = [int(ms) for ms in re.findall(r"Busca no banco: \d+ jobs vencidos em "
                                                  r"(\d+) ms", mine[3])]
            idle = measure([BIN, "once"], env)
            pg_reap.reset(c, "bench", stale)
            base = measure([PY, os.path.join(HERE, "old_cleaner.py"), "db", url])
            base_idle = measure([PY, os.path.join(HERE, "old_cleaner.py"), "db", url])
            # steady state: the daemon's cycles on its open connection, at
            # the default log level; the baseline's passes on one connection
            reap, idles = daemon_db(c, url, stale, os.path.join(tmp, "db-daemon.log"))
            pg_reap.reset(c, "bench", stale)
            b = baseline_db(url)
            b_reap, b_idle = b[0], median(b[1:])
            notes = ["", ""]
            if label == "no index":
                unindexed = {"reap": b_reap, "idle": b_idle}
            else:
                # the statements alone, each side timing its own: limpeza's look
                # and batches (its debug log) against the two UPDATEs
                alone = ((sum(looks) + sum(batches)) / 1000.0,)
                b_alone = (float(re.search(r"^reap (\S+)$", base[3], re.M).group(1)),)
                row("reaping alone, %d stale, %s: the look and the batches of one `once` "
                    "process against the two UPDATEs" % (stale, label), alone, b_alone,
                    verdict(alone[0] <= b_alone[0], "DB step no slower than the baseline's "
                            "single UPDATEs"))
                # what the statement itself costs: both sides on one warm
                # connection, so neither connecting nor the client counts
                statements = pg_reap.logged_statements(
                    c, "bench", lambda: (pg_reap.reset(c, "bench", stale),
                                         measure([BIN, "once"], limpeza_env(DATABASE_URL=url))))
                one = pg_reap.statements_alone(c, "bench", stale, statements, BATCH)
                row("reaping statements alone, %d stale, %s, both on one warm connection, "
                    "alternating, median of 5: limpeza's look and batches (as the server "
                    "logged them), against the two UPDATEs" % (stale, label),
                    (one[0],), (one[1],), "per 1,000 rows: %.1f ms against %.1f ms"
                    % (one[0] * 1e6 / stale, one[1] * 1e6 / stale))
                notes = ["same statistics on both sides; the old cleaner on its unindexed "
                         "table: %.3f s (%.1f×)"
                         % (unindexed["reap"][0], unindexed["reap"][0] / reap[0]),
                         "target ≥ 5×: %s against the baseline on the same table, %s "
                         "against the old cleaner on its unindexed table (%.3f s, %.1f×)"
                         % ("met" if b_idle[0] >= 5 * median(idles)[0] else "**not met**",
                            "met" if unindexed["idle"][0] >= 5 * median(idles)[0]
                            else "**not met**",
                            unindexed["idle"][0], unindexed["idle"][0] / median(idles)[0])]
            worst = max(batches or [0])
            row("DB step, %d rows, %d stale, %s: one `once` process" % (n_rows, stale, label),
                mine[:3], base[:3], "longest batch held its row locks %d ms%s"
                % (worst, "; " + verdict(worst <= 100, "≤ 100 ms") if label != "no index"
                   else ""))
            row("next cycle, nothing to reap (stats included), %s: one `once` process" % label,
                idle[:3], base_idle[:3])
            row("DB step, %d rows, %d stale, %s: daemon cycle" % (n_rows, stale, label),
                reap, b_reap, notes[0])
            row("next cycle, nothing to reap (stats included), %s: daemon cycle, median of 3"
                % label, median(idles), b_idle, notes[1])
    finally:
        c.destroy()


class Health(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        body = b'{"status":"healthy","jobs_active":1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def memory(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        text = f.read()
    kb = lambda k: int(re.search(r"^%s:\s+(\d+) kB" % k, text, re.M).group(1))
    return kb("Rss") / 1024.0, kb("Private_Dirty") / 1024.0


def bench_daemon(tmp, cycles):
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/api/health" % srv.server_address[1]
    db = os.path.join(tmp, "jobs.db")
    subprocess.run(["sqlite3", db], stdin=open(os.path.join(ROOT, "tests", "fixtures",
                                                              "scans_sqlite.sql")), check=True)
    a, b = os.path.join(tmp, "da.json"), os.path.join(tmp, "db.json")
    for p in (a, b):
        generate(p, 0.05, 0)
    log = os.path.join(tmp, "daemon.log")
    mine = subprocess.Popen([BIN, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=limpeza_env(DATABASE_URL="sqlite:///" + db, LIMPEZA_CACHE_FILE=a,
                                            LIMPEZA_HEALTH_URL=url, LIMPEZA_INTERVAL="1s",
                                            LIMPEZA_LOG_FILE=log))
    base = subprocess.Popen([PY, os.path.join(HERE, "old_cleaner.py"), "daemon", b, url, "1",
                             str(cycles)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while open(log).read().count("Ciclo ") < cycles if os.path.exists(log) else True:
            time.sleep(0.5)
        # five looks across two intervals, the median of each: the memory
        # kept between cycles, not a cycle's passing peak caught mid-way
        looks = []
        for _ in range(5):
            time.sleep(0.4)
            looks.append((memory(mine.pid), memory(base.pid)))
        m = tuple(sorted(x[0][k] for x in looks)[2] for k in (0, 1))
        o = tuple(sorted(x[1][k] for x in looks)[2] for k in (0, 1))
    finally:
        mine.terminate()
        base.kill()
        mine.wait()
        base.wait()
        srv.shutdown()
    rows.append(("idle daemon after %d cycles (1 s, SQLite, small cache, health URL)" % cycles,
                 "RSS %.2f MiB, Private_Dirty %.2f MiB" % m,
                 "RSS %.2f MiB, Private_Dirty %.2f MiB" % o,
                 verdict(m[1] < 2 and m[0] < 12, "Private_Dirty < 2 MiB, RSS < 12 MiB")))


def fmt(v):
    if isinstance(v, str):
        return v
    if len(v) == 1:
        return "%.3f s" % v
    return "%.3f s wall, %.3f s CPU, %.0f MiB peak" % v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stale", type=int, default=15_000)
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--skip-db", action="store_true")
    ap.add_argument("--skip-daemon", action="store_true")
    ap.add_argument("--skip-month", action="store_true")
    ap.add_argument("--month", action="store_true", help="the month of scans only")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--scans-per-day", type=int, default=100)
    ap.add_argument("--day-seconds", type=float, default=7.0)
    ap.add_argument("--month-reps", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="limpeza-bench-", dir="/tmp")
    if a.month:
        a.skip_cache = a.skip_db = a.skip_daemon = True
    try:
        if not a.skip_cache:
            bench_cache(tmp)
            bench_tiny(tmp)
        if not a.skip_db:
            bench_db(tmp, a.rows, a.stale)
        if not a.skip_daemon:
            bench_daemon(tmp, a.cycles)
        if rows:
            print("| measurement | limpeza | old cleaner (baseline) | speed-up | note |")
            print("|---|---|---|---|---|")
            for what, mine, base, note in rows:
                speed = "%.1f×" % (base[0] / mine[0]) \
                    if not isinstance(mine, str) and not isinstance(base, str) else ""
                print("| %s | %s | %s | %s | %s |" % (what, fmt(mine), fmt(base), speed, note))
            sys.stdout.flush()
        if not a.skip_month:
            import month
            month.run(BIN, tmp, a.days, a.scans_per_day, a.day_seconds, a.month_reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
