"""The daemon's life and its honesty: signals only in the main thread, a stop
that never waits on the network, a reload that reads the unit's settings file,
cycle endings that name what failed, dry runs that name what they would end."""

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import time

from conftest import BIN, ROOT, SLOW
from pgcluster import free_port
from test_observability import Webhook

DAEMON_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGTERM)


def threads(pid):
    """{tid: set of blocked signal numbers}, as the kernel reports them."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                mask = int(re.search(r"^SigBlk:\s+([0-9a-f]+)$", f.read(), re.M).group(1), 16)
        except FileNotFoundError:  # a thread that just ended
            continue
        out[int(tid)] = {n for n in range(1, 65) if mask & (1 << (n - 1))}
    return out


def assert_helpers_block_the_daemon_signals(pid):
    ts = threads(pid)
    helpers = {tid: blocked for tid, blocked in ts.items() if tid != pid}
    assert helpers, "no helper thread to look at: %r" % ts
    for tid, blocked in helpers.items():
        missing = [signal.Signals(s).name for s in DAEMON_SIGNALS if s not in blocked]
        assert not missing, "thread %d takes %s" % (tid, ", ".join(missing))
    return len(helpers)


def test_signals_reach_only_the_main_thread(env, daemons):
    """libmicrohttpd's thread and the alert worker block SIGTERM, SIGINT,
    SIGHUP and SIGUSR1 (the kernel's SigBlk says so), so none of them can
    swallow a signal meant for the loop: 100 mixed SIGUSR1/SIGHUP each take
    effect within 1 s, then SIGTERM ends the daemon within 1 s."""
    hook = Webhook()
    port = free_port()
    try:
        d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_ALERT_WEBHOOK=hook.url,
                    LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port)
        d.wait_for("Sistema limpo")
        assert assert_helpers_block_the_daemon_signals(d.p.pid) >= 2
        rnd = random.Random(15)
        effects = {signal.SIGUSR1: "🔔 SIGUSR1: ciclo imediato",
                   signal.SIGHUP: "🔄 Configuração recarregada"}
        for i in range(100):
            sig = rnd.choice([signal.SIGUSR1, signal.SIGHUP])
            n = d.stderr().count(effects[sig])
            d.signal(sig)
            d.wait_for(re.escape(effects[sig]), timeout=1, count=n + 1)
            if i % 25 == 0:
                assert_helpers_block_the_daemon_signals(d.p.pid)
        assert_helpers_block_the_daemon_signals(d.p.pid)
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.p.wait(5 * SLOW) == 0
        assert time.monotonic() - t0 < 1.0 * SLOW
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def test_stop_and_reload_never_wait_on_the_webhook(env, health, daemons):
    """A webhook that accepts and never answers: two forced cleanups queue two
    alerts (one in flight, one waiting). A reload is done within 1 s, and
    SIGTERM exits 0 within 2 s, saying how many alerts it dropped."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)  # the kernel completes the connections; nobody answers
    try:
        health.set_json({"status": "healthy", "jobs_active": 9})
        env.write_cache({"c": {"status": "running"}})
        d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=health.url,
                    LIMPEZA_ALERT_WEBHOOK="http://127.0.0.1:%d/hook" % sink.getsockname()[1])
        d.wait_for("Limpeza forçada: 1 jobs terminados")
        env.write_cache({"c2": {"status": "running"}})
        d.signal(signal.SIGUSR1)
        d.wait_for("Limpeza forçada: 1 jobs terminados", count=2)
        t0 = time.monotonic()
        d.signal(signal.SIGHUP)
        d.wait_for("🔄 Configuração recarregada")
        assert time.monotonic() - t0 < 1.0 * SLOW
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.p.wait(10 * SLOW) == 0
        assert time.monotonic() - t0 < 2.0 * SLOW
        log = d.stderr()
        assert "⚠️ Parada: 2 alertas não enviados descartados" in log
        assert log.rstrip().endswith("⚠️ Parada: 2 alertas não enviados descartados")
    finally:
        sink.close()


UNIT = os.path.join(ROOT, "etc", "desfollow-limpeza-3min.service")
SETTINGS_FILE = "/etc/default/desfollow-limpeza"


def unit_settings(text):
    """The [Service] lines of a unit: {key: [values]}."""
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def environment_file(path):
    """What systemd puts in the environment for EnvironmentFile=, once, at
    start (systemd.exec(5)): KEY=VALUE lines, # and ; comments."""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def test_reload_applies_a_changed_settings_file(env, daemons, tmp_path):
    """The shipped unit, run as systemd runs it: EnvironmentFile= (if any) is
    read at start only, ExecStart= starts the daemon, ExecReload= reloads it.
    A value changed in the settings file shows in the log and in `check` after
    the reload; a bad one is refused and the old settings stay."""
    settings = tmp_path / "desfollow-limpeza"
    settings.write_text("LIMPEZA_RUNNING_TTL=3m\n")
    os.chmod(settings, 0o600)
    unit = unit_settings(open(UNIT).read().replace(SETTINGS_FILE, str(settings)))
    environ = {}
    for f in unit.get("EnvironmentFile", []):
        environ.update(environment_file(f.lstrip("-")))
    argv = shlex.split(unit["ExecStart"][0])
    assert os.path.basename(argv[0]) == "limpeza" and argv[1] == "run"
    d = daemons(env, *argv[2:], LIMPEZA_INTERVAL="1h", **environ)
    d.wait_for("⏱️ Configuração: jobs > 3min serão limpos")

    def reload():
        cmd = unit["ExecReload"][0].replace("$MAINPID", str(d.p.pid))
        subprocess.run(shlex.split(cmd), check=True)

    settings.write_text("LIMPEZA_RUNNING_TTL=90s\n")
    reload()
    log = d.wait_for("🔄 Configuração recarregada\n.*⏱️ Configuração: jobs > 90s serão limpos")
    check = env.run("check", *argv[2:], LIMPEZA_INTERVAL="1h", **environ)
    assert "LIMPEZA_RUNNING_TTL=90s\n" in check.stdout, check.stdout + check.stderr
    env.write_cache({"r": {"status": "running", "start_time": time.time() - 100}})
    d.signal(signal.SIGUSR1)
    d.wait_for(r"Job órfão no cache limpo: r \(rodando há 10\ds\)")

    settings.write_text("LIMPEZA_RUNNING_TTL=soon\n")
    reload()
    d.wait_for("❌ Recarga da configuração falhou, mantendo a anterior: "
               "invalid LIMPEZA_RUNNING_TTL 'soon' \\(from an env file\\)")
    env.write_cache({"r2": {"status": "running", "start_time": time.time() - 100}})
    d.signal(signal.SIGUSR1)
    d.wait_for(r"Job órfão no cache limpo: r2")
    assert d.p.poll() is None


def broken_env(env):
    """A cycle in which three steps fail: a cache file that does not parse,
    a database that cannot be opened, a health URL nobody listens on."""
    env.write_cache('{"a": {"status": "runn')
    return dict(DATABASE_URL="sqlite:///" + env.tmp + "/missing.db",
                LIMPEZA_HEALTH_URL="http://127.0.0.1:9/api/health")


def test_failed_cycle_ends_naming_the_failed_steps(env, daemons):
    over = broken_env(env)
    p = env.run("once", **over)
    assert p.returncode == 1
    assert "❌ Cache inválido" in p.stderr and "❌ Erro no banco" in p.stderr
    assert "Sistema limpo" not in p.stderr
    last = p.stderr.rstrip().splitlines()[-1]
    assert last.endswith(" - WARNING - ⚠️ Limpeza incompleta - falha em: cache, banco, API health")

    p = env.run("once", LIMPEZA_LANG="en", **over)
    assert "System clean" not in p.stderr
    assert p.stderr.rstrip().endswith("⚠️ Cleanup incomplete - failed: cache, database, API health")

    p = env.run("once", LIMPEZA_LOG_FORMAT="json", **over)
    lines = [json.loads(l) for l in p.stderr.splitlines()]
    assert "clean" not in [l["event"] for l in lines]
    assert lines[-1]["event"] == "cycle_incomplete"
    assert lines[-1]["failed_steps"] == ["cache", "store", "health"]
    assert lines[-1]["level"] == "warning"

    # one step alone, in the daemon: the cycle's last line names it
    env.write_cache({})
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=over["LIMPEZA_HEALTH_URL"])
    log = d.wait_for("⚠️ Ciclo 1 com falhas")
    lines = log.splitlines()
    end = next(i for i, l in enumerate(lines) if "⚠️ Ciclo 1 com falhas" in l)
    assert lines[end - 1].endswith("⚠️ Limpeza incompleta - falha em: API health")
    assert "Sistema limpo" not in log


def stale_jobs(env):
    now = time.time()
    env.store.add("db-run", "running", 400)
    env.store.add("db-q", "queued", 400)
    env.store.add("db-live", "running", 0)
    env.write_cache({"c-run": {"status": "running", "start_time": now - 500},
                     "c-q": {"status": "queued", "created_at": now - 500},
                     "c-live": {"status": "running", "start_time": now},
                     "c-done": {"status": "done"}})


def test_dry_run_names_every_job_it_would_end(senv):
    """At info level, in "would" words, in pt, en and JSON; nothing changes."""
    env = senv
    stale_jobs(env)
    before = env.read_cache()
    p = env.run("once", "--dry-run")
    assert p.returncode == 0, p.stderr
    for line in [r"- INFO - 🧪 Job running seria encerrado no banco: db-run$",
                 r"- INFO - 🧪 Job queued seria encerrado no banco: db-q$",
                 r"- INFO - 🧪 Job órfão seria limpo do cache: c-run \(rodando há 50\ds\)$",
                 r"- INFO - 🧪 Job queued expirado seria limpo do cache: c-q$",
                 r"- INFO - 🧪 Cache: 2 jobs órfãos seriam limpos$",
                 r"- INFO - 🧪 Simulação: 4 jobs seriam encerrados$"]:
        assert re.search(line, p.stderr, re.M), line + "\n" + p.stderr
    assert re.search(r"- INFO - 🧪 Simulação no banco: running > 3min: 1, queued > 2min: 1 "
                     r"seriam encerrados$", p.stderr, re.M), p.stderr
    for done in ("Job órfão no cache limpo", "Job queued expirado no cache:",
                 "✅ Cache limpo", r"Job \w+ encerrado no banco", "Limpeza executada",
                 "Limpeza banco executada"):
        assert not re.search(done, p.stderr), done
    assert "live" not in p.stderr

    p = env.run("once", "--dry-run", LIMPEZA_LANG="en")
    for line in ["🧪 Job running would be ended in the database: db-run",
                 "🧪 Orphan job would be cleaned from cache: c-run (running for 50",
                 "🧪 Expired queued job would be cleaned from cache: c-q",
                 "🧪 Dry run: 4 jobs would be ended"]:
        assert line in p.stderr, line

    p = env.run("once", "--dry-run", LIMPEZA_LOG_FORMAT="json")
    lines = [json.loads(l) for l in p.stderr.splitlines()]
    would = {(l["event"], l.get("job_id")) for l in lines if l["level"] == "info"}
    assert {("db_job_would", "db-run"), ("db_job_would", "db-q"),
            ("cache_orphan_would", "c-run"), ("cache_queued_would", "c-q"),
            ("summary_would", None)} <= would
    assert all("would" in l["msg"] for l in lines if l["event"].endswith("_would"))

    # forced, too: every active job, cache and database alike
    p = env.run("once", "--dry-run", "--force")
    for job in ("db-run", "db-q", "db-live"):
        assert re.search(r"- INFO - 🧪 Job \w+ seria encerrado no banco: %s$" % job,
                         p.stderr, re.M), job
    for job in ("c-run", "c-q", "c-live"):
        assert re.search(r"- INFO - 🧪 Job seria terminado no cache \(limpeza forçada\): %s$" % job,
                         p.stderr, re.M), job
    # in "would" words at info, each job counted once: 3 rows, and all 4
    # cache jobs (LIMPEZA_FORCE_CACHE=all empties the file)
    assert re.search(r"- INFO - 🧪 Limpeza forçada solicitada: seria executada$", p.stderr, re.M)
    assert re.search(r"- INFO - 🧪 Limpeza forçada: 7 jobs seriam terminados \(3 no banco, 4 no cache\)$",
                     p.stderr, re.M), p.stderr
    assert re.search(r"- INFO - 🧪 Simulação: 7 jobs seriam encerrados$", p.stderr, re.M), p.stderr
    assert " - WARNING - " not in p.stderr and "🚨" not in p.stderr
    assert "Limpeza banco executada" not in p.stderr
    assert env.read_cache() == before
    assert env.store.statuses() == {"db-run": "running", "db-q": "queued",
                                    "db-live": "running"}
