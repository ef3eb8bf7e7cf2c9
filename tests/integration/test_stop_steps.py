"""A stop in the middle of a step tells what was done and what was not
(issue 21, item 8, the gaps an outside review found): a stop during the
forced cleanup's statement skips the rest of it, the forced cache pass
included; a stop in the middle of a backlog counts the batches already
committed in the seed's line; a stop during retention's look-up is a step
not run, not "retenção adiada"; and `once` stops on SIGHUP during a
network wait as it does between steps.

The database waits are made by the server itself, in pg_sleep() (a
trigger, or a view), and seen in pg_stat_activity: no lock_timeout and no
race decide the outcome."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, SLOW, Env, PgStore
from test_stop import no_leftovers, stop_within_a_second, wait_until


def sleeping(store):
    """How many of limpeza's statements sleep in pg_sleep() on the server."""
    return int(store.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND application_name = 'limpeza' AND wait_event = 'PgSleep'")[0][0])


def sleep_on_update(store, when):
    """A trigger: an UPDATE of a row for which `when` (plpgsql, NEW in
    scope) holds sleeps 20 s on the server, until it is cancelled."""
    store.sql("CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$"
              " BEGIN IF %s THEN PERFORM pg_sleep(20); END IF; RETURN NEW; END $$" % when)
    store.sql("CREATE TRIGGER hold BEFORE UPDATE ON scans FOR EACH ROW EXECUTE FUNCTION hold()")


def test_a_stop_during_the_forced_cleanup_skips_the_rest_of_it(tmp_path, pg, daemons):
    """The forced cleanup's UPDATE sleeps on the server; SIGTERM cancels it.
    The step is named as not run, nothing is logged as a failure, and the
    forced cache pass does not run: the cache's live jobs stay."""
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    for i in range(3):
        s.add("live-%d" % i, "running", 5)
    sleep_on_update(s, "NEW.error_message LIKE 'Limpeza forçada%'")
    now = time.time()
    cache = {"c-%d" % i: {"status": "running", "start_time": now} for i in range(2)}
    text = env.write_cache(cache)
    d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_ACTIVE_FROM="database",
                LIMPEZA_FORCE_THRESHOLD="1")
    wait_until(lambda: sleeping(s), "the forced cleanup's statement never slept")
    log = stop_within_a_second(d)
    assert "📊 Banco: 3 jobs ativos (running + queued)" in log, log
    assert "- WARNING - 🛑 Parada no meio do ciclo - etapas não executadas: limpeza forçada" in log, log
    assert "Limpeza incompleta" not in log, log
    assert "Erro no banco" not in log, log
    assert "Job terminado no cache" not in log and "🚨 Limpeza forçada:" not in log, log
    assert env.read_cache() == text
    wait_until(lambda: not sleeping(s), "the statement still sleeps on the server", timeout=1)
    assert s.statuses() == {"live-%d" % i: "running" for i in range(3)}
    no_leftovers(env)


def test_a_stop_in_a_backlog_tells_the_batches_committed(tmp_path, pg, daemons):
    """Batches of one row: the first commits, the second sleeps on the
    server (any row already ended by a committed batch makes the trigger
    sleep) and is cancelled by the stop. The seed's line counts the row
    that was ended, as do its own line and the cycle's closing line."""
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    for i in range(3):
        s.add("stale-%d" % i, "running", 900 - i)
    sleep_on_update(s, "EXISTS (SELECT 1 FROM scans WHERE status = 'error')")
    d = daemons(env, LIMPEZA_INTERVAL="60s", LIMPEZA_BATCH="1", LIMPEZA_CACHE_FILE="")
    wait_until(lambda: sleeping(s), "the second batch never slept")
    log = stop_within_a_second(d)
    ended = [j for j, st in s.statuses().items() if st == "error"]
    assert len(ended) == 1, s.statuses()
    assert log.count("🧹 Job running encerrado no banco: ") == 1, log
    assert "🧹 Job running encerrado no banco: %s (criado há" % ended[0] in log, log
    assert "🧹 Limpeza banco executada: running > 3min: 1, queued > 2min: 0" in log, log
    assert "✅ Limpeza executada: 1 jobs processados" in log, log
    assert "🛑 Parada no meio do ciclo - etapas não executadas: banco" in log, log
    assert "Erro no banco" not in log and "Limpeza incompleta" not in log, log


def test_a_stop_during_the_retention_look_up_is_a_step_not_run(tmp_path, pg, daemons):
    """scans is made a view whose rows sleep on the server, so retention's
    look-up (the cycle's first statement: the cache step asks about its
    finished jobs) hangs until the stop cancels it. The cache step is named
    as not run, not as a store that did not answer; the file is not
    written."""
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    s.add("done-1", "done", 7200)
    s.sql("ALTER TABLE scans RENAME TO scans_real")
    s.sql("CREATE VIEW scans AS SELECT * FROM scans_real WHERE pg_sleep(20) IS NOT NULL")
    text = env.write_cache({"done-1": {"status": "done"}, "live": {"status": "running",
                                                                   "start_time": time.time()}})
    d = daemons(env, LIMPEZA_INTERVAL="60s")
    wait_until(lambda: sleeping(s), "the retention look-up never slept")
    log = stop_within_a_second(d)
    assert "🛑 Parada no meio do ciclo - etapas não executadas: cache, banco" in log, log
    assert "retenção adiada" not in log, log
    assert "Erro no banco" not in log and "Limpeza incompleta" not in log, log
    assert env.read_cache() == text
    wait_until(lambda: not sleeping(s), "the look-up still sleeps on the server", timeout=1)
    no_leftovers(env)


def test_once_stops_on_sighup_during_the_health_request(env, health):
    """`once` takes SIGHUP as a stop (a closed terminal), between steps and
    during a network wait alike: the hung health request is abandoned at
    once, not run to its timeout and logged as the API's failure."""
    health.mode = "hang"
    env.write_cache(json.dumps({}))
    p = subprocess.Popen([BIN, "once"], env=env.env(LIMPEZA_HEALTH_URL=health.url,
                                                     LIMPEZA_HEALTH_TIMEOUT="8s"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: health.hits >= 1, "no health request")
        t0 = time.monotonic()
        p.send_signal(signal.SIGHUP)
        _, err = p.communicate(timeout=20 * SLOW)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, err
    assert "🛑 Parada no meio do ciclo - etapas não executadas: API health" in err, err
    assert "Erro ao consultar API Health" not in err, err
    assert "Sistema limpo" not in err, err
    assert took <= 1.0 * SLOW, (took, err)


class CancelSink:
    """A TCP proxy to PostgreSQL for the first connection only; every later
    one (libpq's cancel request comes on a connection of its own) is
    accepted and never answered nor closed, as a server that hangs."""

    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.proxied = 0
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.proxied:
                self.held.append(c)
                continue
            self.proxied += 1
            s = socket.create_connection(self.target)
            threading.Thread(target=self.pump, args=(c, s), daemon=True).start()
            threading.Thread(target=self.pump, args=(s, c), daemon=True).start()

    @staticmethod
    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
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
        for c in self.held:
            c.close()


def test_a_stop_does_not_wait_on_a_cancel_request_nobody_takes(tmp_path, pg, daemons):
    """The reaping's statement sleeps on the server; at SIGTERM the cancel
    request's connection is accepted and never answered (PQcancel() has no
    timeout). The stop waits for it a bounded time, then goes on: exit 0
    within 1 s, the stop line, no leftover file."""
    env = Env(tmp_path, PgStore(pg))
    s = env.store
    s.add("stale", "running", 900)
    sleep_on_update(s, "true")
    sink = CancelSink(pg.port)
    try:
        url = s.url.replace(":%d/" % pg.port, ":%d/" % sink.port)
        assert url != s.url
        d = daemons(env, DATABASE_URL=url, LIMPEZA_INTERVAL="60s")
        wait_until(lambda: sleeping(s), "the reaping's statement never slept")
        log = stop_within_a_second(d)
        assert sink.held, "no cancel request was sent"
        assert "🛑 Parada no meio do ciclo - etapas não executadas: banco" in log, log
        no_leftovers(env)
    finally:
        sink.close()
        # what the server still runs for the dropped connection
        s.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE"
              " application_name = 'limpeza' AND pid <> pg_backend_pid()")


HANG_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A name server that never answers, for names ending in .hang.test. */
int
getaddrinfo(const char *node, const char *service,
    const struct addrinfo *hints, struct addrinfo **res)
{
	int (*real)(const char *, const char *, const struct addrinfo *,
	    struct addrinfo **);
	const char *mark = getenv("HANG_SHIM_MARK");

	if (node != NULL && strlen(node) > 10 &&
	    strcmp(node + strlen(node) - 10, ".hang.test") == 0) {
		if (mark != NULL)
			close(open(mark, O_WRONLY | O_CREAT, 0600));
		sleep(30);
		return EAI_AGAIN;
	}
	real = (int (*)(const char *, const char *, const struct addrinfo *,
	    struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
	/* Two addresses: nobody listens at the first (glibc frees per node). */
	if (node != NULL && strcmp(node, "db.two.test") == 0) {
		struct addrinfo *a, *b;
		int r;

		if ((r = real("127.0.0.2", service, hints, &a)) != 0)
			return r;
		if ((r = real("127.0.0.1", service, hints, &b)) != 0) {
			freeaddrinfo(a);
			return r;
		}
		a->ai_next = b;
		*res = a;
		return 0;
	}
	return real(node, service, hints, res);
}
"""


def hang_shim(tmp_path):
    src = tmp_path / "hang_shim.c"
    so = tmp_path / "hang_shim.so"
    src.write_text(HANG_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    src.unlink()
    return str(so)


def test_a_stop_does_not_wait_on_a_name_server(tmp_path_factory, env, daemons):
    """The database's host name goes to a name server that never answers
    (getaddrinfo() sleeps 30 s: an LD_PRELOAD shim built here). libpq 15
    resolves names synchronously inside PQconnectStartParams(); limpeza
    resolves the name itself, in a thread it waits for in slices. SIGTERM
    during the look-up: exit 0 within 1 s, the database step named as not
    run, no database error."""
    aside = tmp_path_factory.mktemp("shim")
    shim = hang_shim(aside)
    mark = str(aside / "looked-up")
    over = {"LD_PRELOAD": shim, "HANG_SHIM_MARK": mark}
    if "ASAN_OPTIONS" in env.vars:
        over["ASAN_OPTIONS"] = env.vars["ASAN_OPTIONS"] + ":verify_asan_link_order=0"
    env.write_cache({})
    d = daemons(env, DATABASE_URL="postgresql://app:pw@db.hang.test:5432/scans",
                LIMPEZA_INTERVAL="60s", **over)
    wait_until(lambda: os.path.exists(mark), "the host name was never looked up")
    log = stop_within_a_second(d)
    assert "🛑 Parada no meio do ciclo - etapas não executadas: banco" in log, log
    assert "Erro no banco" not in log, log
    no_leftovers(env)


def test_a_host_name_connects_through_each_of_its_addresses(tmp_path, pg):
    """limpeza resolves the host name itself and hands libpq every address
    it has, so libpq still tries them in turn: db.two.test is 127.0.0.2
    (nobody listens there: refused) and then 127.0.0.1, where the server
    is (the shim above answers for that name)."""
    env = Env(tmp_path, PgStore(pg))
    env.store.add("stale", "running", 900)
    url = env.store.url.replace("@127.0.0.1:", "@db.two.test:")
    assert url != env.store.url
    over = {"LD_PRELOAD": hang_shim(tmp_path), "DATABASE_URL": url, "LIMPEZA_CACHE_FILE": ""}
    if "ASAN_OPTIONS" in env.vars:
        over["ASAN_OPTIONS"] = env.vars["ASAN_OPTIONS"] + ":verify_asan_link_order=0"
    p = env.run("once", **over)
    assert p.returncode == 0, p.stderr
    assert env.store.statuses() == {"stale": "error"}, p.stderr


def test_a_stop_in_a_cycle_longer_than_its_interval_starts_no_other(env, health, daemons):
    """The health request hangs past the 1 s interval; SIGTERM abandons it.
    The stop is taken there: no second cycle starts (its own 'Parada' line
    and a cycle counted for nothing) before the exit."""
    health.mode = "hang"
    env.write_cache({})
    d = daemons(env, LIMPEZA_HEALTH_URL=health.url, LIMPEZA_INTERVAL="1s")
    wait_until(lambda: health.hits >= 1, "no health request")
    time.sleep(1.5)  # past the interval: the next cycle is due at once
    log = stop_within_a_second(d)
    assert log.count("🔄 Ciclo ") == 1, log
    assert log.count("🛑 Parada no meio do ciclo") == 1, log
    assert "🛑 Parada no meio do ciclo - etapas não executadas: API health" in log, log


@pytest.mark.parametrize("pinned", ["PGHOSTADDR", "service"])
def test_an_address_pinned_outside_the_url_is_libpqs(tmp_path, pg, pinned):
    """A name with no DNS record (split DNS, a database reached by a name
    only its clients know), its address pinned where libpq reads it:
    PGHOSTADDR, or a service file's hostaddr. limpeza must leave the name
    to libpq then, as before it resolved names itself: a hostaddr of its
    own would override the pinned one (an outside review: "could not
    translate host name")."""
    env = Env(tmp_path, PgStore(pg))
    env.store.add("stale", "running", 900)
    url = env.store.url.replace("@127.0.0.1:", "@db.nonexistent.invalid:")
    assert url != env.store.url
    over = {"LIMPEZA_CACHE_FILE": ""}
    if pinned == "PGHOSTADDR":
        over.update(DATABASE_URL=url, PGHOSTADDR="127.0.0.1")
    else:
        svc = tmp_path / "pg_service.conf"
        svc.write_text("[limpeza]\nhostaddr=127.0.0.1\n")
        sep = "&" if "?" in url else "?"
        over.update(DATABASE_URL=url + sep + "service=limpeza", PGSERVICEFILE=str(svc))
    p = env.run("once", **over)
    assert p.returncode == 0, p.stderr
    assert env.store.statuses() == {"stale": "error"}, p.stderr
