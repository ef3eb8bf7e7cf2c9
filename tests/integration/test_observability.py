"""What the daemon tells the outside: /metrics, /healthz, webhook alerts, systemd notifications."""

import http.server
import json
import os
import signal
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request

import pytest

from prometheus_client.parser import text_string_to_metric_families

from conftest import SLOW
from pgcluster import free_port


def scrape(port, path="/metrics", host="127.0.0.1"):
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (host, port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text):
    """{(name, frozenset(labels)): value}, parsed strictly by prometheus_client."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(sm, name, **labels):
    return sm.get((name, frozenset(labels.items())))


def test_metrics_count_what_the_cycles_did(env, health, daemons):
    now = time.time()
    env.store.add("db-run", "running", 900)
    env.store.add("db-q1", "queued", 900)
    env.store.add("db-q2", "queued", 900)
    env.write_cache({"c-run": {"status": "running", "start_time": now - 999},
                     "c-q": {"status": "queued", "created_at": now - 999},
                     "c-live": {"status": "running", "start_time": now},
                     "c-done": {"status": "done"}})
    health.set_json({"status": "healthy", "jobs_active": 3})
    port = free_port()
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port,
                LIMPEZA_HEALTH_URL=health.url)
    d.wait_for("Ciclo 4 ")  # cycles 1 to 3 are over, metrics included
    status, text = scrape(port)
    assert status == 200
    sm = samples(text)
    assert value(sm, "limpeza_jobs_reaped_total", store="cache", state="running", reason="orphan") == 1
    assert value(sm, "limpeza_jobs_reaped_total", store="cache", state="queued", reason="expired") == 1
    assert value(sm, "limpeza_jobs_reaped_total", store="sqlite", state="running", reason="orphan") == 1
    assert value(sm, "limpeza_jobs_reaped_total", store="sqlite", state="queued", reason="expired") == 2
    cycles = value(sm, "limpeza_cycles_total")
    assert cycles >= 3
    assert value(sm, "limpeza_cycle_duration_seconds_count") == cycles
    assert value(sm, "limpeza_cycle_duration_seconds_bucket", le="+Inf") == cycles
    assert value(sm, "limpeza_api_jobs_active") == 3
    assert value(sm, "limpeza_store_up") == 1
    assert value(sm, "limpeza_build_info", version="0.1.0") == 1
    assert abs(value(sm, "limpeza_last_success_timestamp_seconds") - time.time()) < 10
    assert not any(k[0] == "limpeza_step_failures_total" for k in sm)
    assert scrape(port, "/healthz")[0] == 200

    # a forced cleanup shows up with its reason
    health.set_json({"status": "healthy", "jobs_active": 9})
    d.wait_for("Limpeza forçada: 2 jobs terminados")
    sm = samples(scrape(port)[1])
    assert value(sm, "limpeza_jobs_reaped_total", store="cache", state="running", reason="forced") == 1
    assert value(sm, "limpeza_jobs_reaped_total", store="cache", state="other", reason="forced") == 1


def test_healthz_503_without_a_good_cycle_and_bound_address_only(env, daemons):
    port = free_port()
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port,
                LIMPEZA_HEALTH_URL="http://127.0.0.1:9/api/health")
    d.wait_for("Ciclo 3 ")  # cycles 1 and 2 are over, metrics included
    status, body = scrape(port, "/healthz")
    assert status == 503
    sm = samples(scrape(port)[1])
    assert value(sm, "limpeza_step_failures_total", step="health") >= 2
    assert scrape(port, "/nothing")[0] == 404
    # bound to 127.0.0.1 only: another loopback address is refused
    s = socket.socket()
    s.settimeout(2)
    try:
        assert s.connect_ex(("127.0.0.2", port)) != 0
    finally:
        s.close()


def test_healthz_turns_503_three_intervals_after_the_last_good_cycle(env, health, daemons):
    port = free_port()
    health.set_json({"status": "healthy", "jobs_active": 0})
    d = daemons(env, LIMPEZA_INTERVAL="300ms", LIMPEZA_ERROR_BACKOFF="300ms",
                LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port, LIMPEZA_HEALTH_URL=health.url)
    d.wait_for("Ciclo 2 ")
    assert scrape(port, "/healthz")[0] == 200
    # from now on every cycle fails (the API answers 500)
    health.set_json({"jobs_active": 0}, status=500)
    t0 = time.monotonic()
    d.wait_for("HTTP status 500")
    while scrape(port, "/healthz")[0] == 200:
        assert time.monotonic() - t0 < 10 * SLOW
        time.sleep(0.05)
    # not before three intervals (0.9 s) have passed without a good cycle
    assert time.monotonic() - t0 >= 0.9 - 0.3
    assert scrape(port, "/healthz")[0] == 503


def test_metrics_port_in_use_is_logged_and_the_daemon_goes_on(env, daemons):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port)
        log = d.wait_for("Sistema limpo")
        assert "❌ Métricas indisponíveis: cannot listen on 127.0.0.1:%d" % port in log
        assert d.p.poll() is None
    finally:
        busy.close()


class Webhook:
    def __init__(self):
        self.alerts = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers["Content-Length"])
                outer.alerts.append((self.headers["Content-Type"],
                                     json.loads(self.rfile.read(n))))
                self.send_response(204)
                self.end_headers()

        self.server = socketserver.TCPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self):
        return [a[1]["event"] for a in self.alerts]

    def wait(self, n, timeout=15):
        deadline = time.monotonic() + timeout * SLOW
        while len(self.alerts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events()


def test_webhook_alerts_once_per_incident(env, health, daemons):
    hook = Webhook()
    try:
        env.write_cache({"c": {"status": "running"}})
        health.set_json({"status": "healthy", "jobs_active": 9})
        d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                    LIMPEZA_HEALTH_URL=health.url, LIMPEZA_ALERT_WEBHOOK=hook.url)
        assert hook.wait(1) == ["forced_cleanup"]
        ctype, a = hook.alerts[0]
        assert ctype == "application/json"
        assert set(a) == {"event", "host", "count", "message", "time"}
        assert a["count"] == 1 and a["host"] == socket.gethostname()
        assert "9 active jobs" in a["message"]
        # the API goes away: one alert after 3 failing cycles, not more
        health.set_json({"status": "healthy", "jobs_active": 1})
        d.wait_for("API Health: 1 jobs ativos")
        health.set_json(b"oops", status=500)
        n = d.stderr().count("Erro ao consultar API Health")
        d.wait_for("Erro ao consultar API Health", count=n + 6)
        assert hook.wait(2) == ["forced_cleanup", "api_unreachable"]
        assert hook.alerts[1][1]["count"] == 3 and "HTTP status 500" in hook.alerts[1][1]["message"]
        # it comes back: one recovery alert
        health.set_json({"status": "healthy", "jobs_active": 1})
        n = d.stderr().count("API Health: 1 jobs ativos")
        d.wait_for("API Health: 1 jobs ativos", count=n + 3)
        assert hook.wait(3) == ["forced_cleanup", "api_unreachable", "api_recovered"]
        time.sleep(0.5)
        assert hook.events() == ["forced_cleanup", "api_unreachable", "api_recovered"]
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def test_webhook_store_outage_and_a_dead_hook_never_stall(env, daemons):
    hook = Webhook()
    try:
        d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                    DATABASE_URL="sqlite:///" + env.tmp + "/later.db",
                    LIMPEZA_ALERT_WEBHOOK=hook.url)
        assert hook.wait(1) == ["store_unreachable"]
        assert "cannot open" in hook.alerts[0][1]["message"]
        os.rename(env.store.path, env.tmp + "/later.db")
        assert hook.wait(2) == ["store_unreachable", "store_recovered"]
    finally:
        hook.server.shutdown()
        hook.server.server_close()
    # a webhook that never answers does not hold cycles up
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen()
    try:
        env.write_cache({"c": {"status": "running"}})
        t0 = time.monotonic()
        p = env.run("once", "--force", DATABASE_URL=None,
                    LIMPEZA_ALERT_WEBHOOK="http://127.0.0.1:%d/" % sink.getsockname()[1])
        assert p.returncode == 0
        # the cycle itself ended at once; only the exit waits for the bounded post
        assert time.monotonic() - t0 < 8 * SLOW
        assert "Alerta não entregue" in p.stderr
    finally:
        sink.close()


def test_systemd_notifications(env, daemons, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got = []

    def wait_for(word, timeout=10):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            if any(word in m for m in got):
                return
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        raise AssertionError("no %s in %r" % (word, got))

    try:
        d = daemons(env, LIMPEZA_INTERVAL="1h", NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        wait_for("READY=1")
        ready = next(m for m in got if "READY=1" in m)
        assert "STATUS=cycle 1 at " in ready and "jobs reaped" in ready
        # idle, the loop still feeds the watchdog (every 200 ms here)
        n = sum("WATCHDOG=1" in m for m in got)
        time.sleep(1)
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                break
        assert sum("WATCHDOG=1" in m for m in got) >= n + 3
        d.signal(signal.SIGHUP)
        wait_for("RELOADING=1")
        assert "MONOTONIC_USEC=" in next(m for m in got if "RELOADING=1" in m)
        got.clear()
        wait_for("READY=1")
        d.signal(signal.SIGTERM)
        wait_for("STOPPING=1")
        assert d.p.wait(5) == 0
    finally:
        sock.close()


def strict_lines(path):
    """The file's lines, each of which must be valid UTF-8 on its own."""
    with open(path, "rb") as f:
        raw = f.read()
    return [line.decode("utf-8") for line in raw.splitlines()]  # raises if not


@pytest.mark.parametrize("pad", ["", "x"], ids=["even", "odd"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_non_utf8_error_text_is_alerted_and_never_stops_the_daemon(env, daemons, log_format,
                                                                     pad):
    """A store error whose text is long and not ASCII (a SQLite path of
    500-odd bytes of 'ã' that does not exist: the error echoes it) is cut
    between characters wherever it goes. The third failing cycle's alert
    reaches the webhook as valid JSON and the daemon goes on; every log
    line is valid UTF-8 (and, in JSON form, a JSON object). Before, the
    cut split a character, jansson refused the alert and limpeza exited
    'out of memory'. With and without one more byte before the text, so
    that a cut at a fixed length falls inside a character in one of the
    two, wherever the test's directory is."""
    hook = Webhook()
    try:
        bad = os.path.join(env.tmp, pad + "ã" * 254, "jobs.db")
        d = daemons(env, LIMPEZA_INTERVAL="100ms", LIMPEZA_ERROR_BACKOFF="100ms",
                    DATABASE_URL="sqlite:///" + bad, LIMPEZA_ALERT_WEBHOOK=hook.url,
                    LIMPEZA_LOG_FORMAT=log_format)
        assert hook.wait(1) == ["store_unreachable"], d.stderr()[-2000:]
        msg = hook.alerts[0][1]["message"]
        assert "ãããã" in msg and "\ufffd" not in msg, msg
        # cut between two characters, not inside one (its half shown as \xNN)
        assert "\\x" not in msg, msg
        if log_format == "text":
            d.wait_for("Ciclo 6 ")
        else:
            d.wait_for('"event":"cycle"', count=6)
        assert d.p.poll() is None, d.stderr()[-2000:]
        assert d.stop() == 0
    finally:
        hook.server.shutdown()
        hook.server.server_close()
    lines = strict_lines(env.log)
    if log_format == "json":
        lines = [json.loads(line)["msg"] for line in lines]
    assert any("ãããã" in line for line in lines)
    assert "out of memory" not in d.stderr()


def test_stats_json_with_paths_that_are_not_utf8(env):
    """`stats --json` with a cache path and a database path that are not
    UTF-8: valid JSON that names them (their odd bytes as \\xNN), never
    'out of memory'."""
    cache = os.fsdecode(os.path.join(env.tmp.encode(), b"cache-\xff\xfe.json"))
    db = os.fsdecode(os.path.join(env.tmp.encode(), b"nada-\xe3.db"))
    with open(cache, "w") as f:
        json.dump({"a": {"status": "running", "start_time": time.time()}}, f)
    p = env.run("stats", "--json", LIMPEZA_CACHE_FILE=cache, DATABASE_URL="sqlite:///" + db)
    assert "out of memory" not in p.stderr, p.stderr
    st = json.loads(p.stdout)
    assert st["cache"]["path"].endswith("cache-\\xff\\xfe.json"), st
    assert st["cache"]["active"] == 1, st
    assert "nada-\\xe3.db" in st["database"]["error"], st
    assert p.returncode == 1  # the database cannot be opened
