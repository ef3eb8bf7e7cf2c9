"""A stop takes at most 1 s, whatever the network does (issue 21, item 8):
a health server that accepts and never answers, a listener that accepts
and never speaks PostgreSQL, a statement blocked on a lock. Each time
SIGTERM gives exit 0 within 1 s (the daemon's own waits are sliced in
100 ms), the stop line, the steps not run named, and no leftover file."""

import os
import signal
import socket
import threading
import time

from conftest import SLOW, Env, PgStore

BOUND_S = 1.0


def stop_within_a_second(d):
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    rc = d.p.wait(10 * SLOW)
    took = time.monotonic() - t0
    d.err.close()
    assert rc == 0, d.stderr()[-2000:]
    assert took <= BOUND_S * SLOW, (took, d.stderr()[-2000:])
    log = d.stderr()
    assert log.rstrip().endswith("- INFO - 🛑 Sistema de limpeza interrompido"), log[-2000:]
    assert "Sistema limpo" not in log
    return log


def no_leftovers(env):
    names = sorted(n for n in os.listdir(env.tmp) if not n.startswith("stderr-"))
    assert all(n in ("desfollow_jobs.json", "log", "jobs.db") for n in names), names


def wait_until(pred, what, timeout=10):
    deadline = time.monotonic() + timeout * SLOW
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_stop_while_the_health_request_hangs(env, health, daemons):
    health.mode = "hang"
    env.write_cache({})
    d = daemons(env, LIMPEZA_HEALTH_URL=health.url, LIMPEZA_INTERVAL="60s")
    wait_until(lambda: health.hits >= 1, "no health request")
    time.sleep(0.3)
    log = stop_within_a_second(d)
    assert "- WARNING - 🛑 Parada no meio do ciclo - etapas não executadas: API health" in log, log
    assert "Erro ao consultar API Health" not in log
    no_leftovers(env)


class SilentListener:
    """Accepts connections and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_stop_while_the_database_connect_hangs(env, daemons):
    lst = SilentListener()
    try:
        env.write_cache({})
        d = daemons(env, DATABASE_URL="postgresql://app:pw@127.0.0.1:%d/scans" % lst.port,
                    LIMPEZA_INTERVAL="60s")
        wait_until(lambda: lst.conns, "no connection")
        time.sleep(0.3)
        log = stop_within_a_second(d)
        assert "🛑 Parada no meio do ciclo - etapas não executadas: banco" in log, log
        assert "Erro no banco" not in log
        no_leftovers(env)
    finally:
        lst.close()


def test_stop_while_a_statement_waits_for_a_lock(tmp_path, pg, daemons):
    """The look waits on a lock another session holds: the stop cancels it
    on the server, so no limpeza statement is left running after the exit."""
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    s.add("stale", "running", 900)
    holder = s.connect()
    holder.autocommit = False
    holder.cursor().execute("LOCK TABLE scans IN ACCESS EXCLUSIVE MODE")
    try:
        d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_CACHE_FILE="")

        def waiting():
            return int(s.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND application_name = 'limpeza' AND wait_event_type = 'Lock'")[0][0])

        wait_until(waiting, "limpeza never waited on the lock")
        log = stop_within_a_second(d)
        assert "🛑 Parada no meio do ciclo - etapas não executadas: banco" in log, log
        # cancelled on the server: nothing of limpeza's is left waiting
        wait_until(lambda: not waiting(), "limpeza's statement still waits on the server", timeout=1)
    finally:
        holder.rollback()
        holder.close()
    assert s.statuses() == {"stale": "running"}


class SlowProxy:
    """A TCP proxy to PostgreSQL that holds back each chunk the server
    sends by delay_s once the log-in is over (after the server's first
    ReadyForQuery): a database that answers each statement slowly."""

    def __init__(self, port, delay_s):
        self.target = ("127.0.0.1", port)
        self.delay = delay_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(self.target)
            threading.Thread(target=self.pump, args=(c, s, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(s, c, True), daemon=True).start()

    def pump(self, src, dst, from_server):
        ready = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_server and ready:
                    time.sleep(self.delay)
                elif from_server and b"Z\x00\x00\x00\x05" in data:
                    ready = True
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.sock.close()


def test_a_cycle_against_a_slow_database_is_bounded(tmp_path, pg, daemons):
    """Each answer 4 s late: a daemon's cycle gives its database work at
    most twice the interval (at least 10 s, at most 60 s, well below the
    unit's WatchdogSec): it ends with the database step failed, saying
    why, instead of waiting 35 s per statement."""
    env = Env(tmp_path, PgStore(pg))
    for i in range(3):
        env.store.add("stale-%d" % i, "running", 900)
    proxy = SlowProxy(pg.port, 4)
    try:
        url = env.store.url.replace(":%d/" % pg.port, ":%d/" % proxy.port)
        assert url != env.store.url
        d = daemons(env, DATABASE_URL=url, LIMPEZA_INTERVAL="1s", LIMPEZA_CACHE_FILE="")
        log = d.wait_for(r"Ciclo 1 [\s\S]*(Limpeza incompleta|Sistema limpo|Limpeza executada)",
                         timeout=40)
        assert "the cycle's time for the database is up" in log, log
        assert "⚠️ Limpeza incompleta - falha em: banco" in log, log
        log = stop_within_a_second(d)
    finally:
        proxy.close()
