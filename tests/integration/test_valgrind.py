"""Valgrind memcheck over `once` runs and a short daemon run with reloads: no errors, no leaks."""

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BIN, ROOT, SANITIZED
from pgcluster import free_port
from test_observability import Webhook, samples, scrape

pytestmark = pytest.mark.skipif(SANITIZED, reason="valgrind runs the plain build, not ASan's")

VALGRIND = ["valgrind", "--leak-check=full", "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
            "--suppressions=" + os.path.join(ROOT, "tests", "valgrind.supp")]


def summary(text):
    errors = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    definite = re.search(r"definitely lost: ([\d,]+) bytes", text)
    return (int(errors.group(1)) if errors else None,
            int(definite.group(1).replace(",", "")) if definite else 0)


@pytest.mark.parametrize("args", [["once"], ["once", "--force"], ["once", "--dry-run"],
                                  ["check"], ["stats", "--json"]])
def test_once_runs_are_clean(env, health, args):
    now = time.time()
    env.store.add("db-stale", "running", 900)
    env.store.add("db-q", "queued", 900)
    env.write_cache({"a": {"status": "running", "start_time": now - 999},
                     "b": {"status": "queued"}, "c": {"status": "done", "all": [1, 2]}})
    health.set_json({"status": "healthy", "jobs_active": 9})
    p = subprocess.run(VALGRIND + [BIN, *args], env=env.env(LIMPEZA_HEALTH_URL=health.url,
                                                            LIMPEZA_CACHE_ACTION="mark"),
                       capture_output=True, text=True, timeout=300)
    errors, lost = summary(p.stderr)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    assert errors == 0 and lost == 0, p.stderr[-3000:]


def test_daemon_with_reloads_is_clean(env, health, tmp_path):
    """The daemon's every moving part under memcheck: metrics scraped, alerts
    sent (a forced cleanup every cycle), reloads good and bad, SIGUSR1."""
    envfile = tmp_path / "backend.env"
    envfile.write_text("LIMPEZA_RUNNING_TTL=3m\n")
    os.chmod(envfile, 0o600)
    health.set_json({"status": "healthy", "jobs_active": 9})
    env.write_cache({"a": {"status": "running", "start_time": time.time() - 999}})
    hook = Webhook()
    port = free_port()
    err = open(tmp_path / "vg.txt", "w+")
    p = subprocess.Popen(VALGRIND + [BIN, "run"], stderr=err,
                         env=env.env(LIMPEZA_HEALTH_URL=health.url, LIMPEZA_INTERVAL="200ms",
                                     LIMPEZA_ENV_FILES=str(envfile),
                                     LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port,
                                     LIMPEZA_ALERT_WEBHOOK=hook.url))
    try:
        deadline = time.monotonic() + 60
        while "Ciclo 2 " not in open(tmp_path / "vg.txt").read():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        status, text = scrape(port)
        assert status == 200
        assert samples(text), text
        assert "forced_cleanup" in hook.wait(1, timeout=60)
        for ttl in ("90s", "soon", "2m"):  # a good, a bad and a good reload
            envfile.write_text("LIMPEZA_RUNNING_TTL=%s\n" % ttl)
            p.send_signal(signal.SIGHUP)
            time.sleep(0.7)
        p.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
    text = open(tmp_path / "vg.txt").read()
    errors, lost = summary(text)
    assert "Recarga da configuração falhou" in text and text.count("Configuração recarregada") == 2
    assert "Alerta não entregue" not in text
    assert rc == 0 and errors == 0 and lost == 0, text[-3000:]
