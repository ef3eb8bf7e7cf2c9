"""The health probe and forced cleanup (SPEC §1.3) against a real HTTP server."""

import json
import re
import time

import pytest

from conftest import SLOW


def fill(env):
    """Live jobs in both places: nothing here is stale."""
    now = time.time()
    s = env.store
    s.add("db-run", "running", 10, created_age_s=150)
    s.add("db-young", "running", 5, created_age_s=30)
    s.add("db-q", "queued", 5, created_age_s=60)
    s.add("db-done", "done", 5)
    env.write_cache({"c-run": {"status": "running", "start_time": now - 150},
                     "c-young": {"status": "running", "start_time": now - 30},
                     "c-q": {"status": "queued"},
                     "c-done": {"status": "done", "all": [1]}})


def test_reports_active_jobs(env, health):
    fill(env)
    health.set_json({"status": "healthy", "jobs_active": 2})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url)
    assert p.returncode == 0, p.stderr
    assert "📊 API Health: 2 jobs ativos" in p.stderr
    assert "MUITOS JOBS" not in p.stderr
    assert env.store.statuses()["db-run"] == "running"
    assert health.hits == 1


def test_forced_cleanup_above_threshold(senv, health):
    env = senv
    fill(env)
    health.set_json({"status": "healthy", "jobs_active": 9})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url)
    assert p.returncode == 0, p.stderr
    assert "WARNING - ⚠️ MUITOS JOBS ATIVOS: 9 - Executando limpeza forçada!" in p.stderr
    assert "WARNING - 🚨 Limpeza forçada: 7 jobs terminados" in p.stderr
    assert "✅ Limpeza executada: 7 jobs processados" in p.stderr
    st = env.store.statuses()
    assert st == {"db-run": "error", "db-young": "error", "db-q": "error", "db-done": "done"}
    assert env.store.row("db-q")["error_message"] == "Limpeza forçada - excesso de jobs ativos"
    assert env.store.row("db-done")["error_message"] is None
    # FORCE_CACHE=all: the file is replaced by {} (not deleted)
    assert env.read_cache() == "{}"


def test_threshold_is_strict_and_zero_disables(env, health):
    fill(env)
    # 5 is not more than the threshold 5: the probe answered, nothing forced
    health.set_json({"jobs_active": 5})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url)
    assert p.returncode == 0, p.stderr
    assert "📊 API Health: 5 jobs ativos" in p.stderr
    assert "MUITOS JOBS" not in p.stderr and "Limpeza forçada" not in p.stderr
    # 6 is: the same setting forces
    health.set_json({"jobs_active": 6})
    p = env.run("once", "--health", LIMPEZA_HEALTH_URL=health.url, LIMPEZA_DRY_RUN="1")
    assert p.returncode == 0, p.stderr
    assert "MUITOS JOBS ATIVOS: 6" in p.stderr
    # 0 disables forced cleanup, however many jobs the API reports
    health.set_json({"jobs_active": 500})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url, LIMPEZA_FORCE_THRESHOLD="0")
    assert p.returncode == 0, p.stderr
    assert "📊 API Health: 500 jobs ativos" in p.stderr
    assert "MUITOS JOBS" not in p.stderr and "Limpeza forçada" not in p.stderr
    assert env.store.statuses()["db-run"] == "running"
    assert "c-run" in json.loads(env.read_cache())
    assert health.hits == 3


def test_force_active_only_and_min_age(senv, health):
    env = senv
    fill(env)
    health.set_json({"jobs_active": 9})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url, LIMPEZA_FORCE_CACHE="active",
                LIMPEZA_FORCE_MIN_AGE="100s")
    assert p.returncode == 0, p.stderr
    # db-run was created 150 s ago; db-young 30 s, db-q 60 s: spared
    assert env.store.statuses() == {"db-run": "error", "db-young": "running",
                                    "db-q": "queued", "db-done": "done"}
    cache = json.loads(env.read_cache())
    assert set(cache) == {"c-young", "c-q", "c-done"}
    assert "🚨 Limpeza forçada: 2 jobs terminados" in p.stderr


def test_once_force_without_health(senv):
    env = senv
    fill(env)
    p = env.run("once", "--force")
    assert p.returncode == 0, p.stderr
    assert "Limpeza forçada solicitada" in p.stderr
    assert "🚨 Limpeza forçada: 7 jobs terminados" in p.stderr
    assert env.read_cache() == "{}"


@pytest.mark.parametrize("fault,expect", [
    ("500", "HTTP status 500"),
    ("html", "answer is not JSON"),
    ("string", "jobs_active is not a non-negative integer"),
    ("real", "jobs_active is not a non-negative integer"),
    ("negative", "jobs_active is not a non-negative integer"),
    ("missing", "answer has no jobs_active"),
    ("huge", "larger than 1 MiB"),
    ("hang", "timed out"),
    ("trickle", "timed out"),
    # libcurl's own words: 7.88 (Debian 12) "Couldn't", 8.14 (Debian 13) "Could not"
    ("refused", "Could(n't| not) connect"),
])
def test_faulty_health_never_forces(env, health, fault, expect):
    fill(env)
    url = health.url
    if fault == "500":
        health.set_json({"jobs_active": 99}, status=500)
    elif fault == "html":
        health.set_json(b"<html>502 Bad Gateway</html>")
    elif fault == "string":
        health.set_json({"jobs_active": "99"})
    elif fault == "real":
        health.set_json(b'{"jobs_active": 99.0}')
    elif fault == "negative":
        health.set_json({"jobs_active": -99})
    elif fault == "missing":
        health.set_json({"status": "healthy"})
    elif fault == "refused":
        url = "http://127.0.0.1:9/api/health"
    else:
        health.mode = fault
    t0 = time.monotonic()
    p = env.run("once", LIMPEZA_HEALTH_URL=url, LIMPEZA_HEALTH_TIMEOUT="1s")
    took = time.monotonic() - t0
    assert p.returncode == 1
    assert "❌ Erro ao consultar API Health: " in p.stderr
    assert re.search(expect, p.stderr)
    assert "MUITOS JOBS" not in p.stderr
    assert env.store.statuses()["db-run"] == "running"
    assert "c-run" in json.loads(env.read_cache())
    # the cycle went on to its end, which names the failed step, within the timeout
    assert p.stderr.rstrip().endswith("⚠️ Limpeza incompleta - falha em: API health")
    assert "Sistema limpo" not in p.stderr
    assert took < 4 * SLOW


def test_https_certificates_are_verified(env, tmp_path):
    """A self-signed certificate is refused: no answer, so no forced cleanup."""
    import http.server
    import ssl
    import subprocess
    import threading
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b'{"jobs_active": 99}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        fill(env)
        p = env.run("once", LIMPEZA_HEALTH_URL="https://127.0.0.1:%d/api/health"
                    % srv.server_address[1])
        assert p.returncode == 1
        assert "❌ Erro ao consultar API Health: SSL certificate problem" in p.stderr
        assert "MUITOS JOBS" not in p.stderr
        assert env.store.statuses()["db-run"] == "running"
    finally:
        srv.shutdown()
        srv.server_close()


def test_enormous_health_body_is_cut_at_1_mib(env, health):
    """Hundreds of MB on offer: limpeza stops reading at 1 MiB, promptly."""
    fill(env)
    health.mode = "huge"
    health.huge_mib = 300
    t0 = time.monotonic()
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url)
    assert p.returncode == 1 and "larger than 1 MiB" in p.stderr
    assert time.monotonic() - t0 < 5 * SLOW
