"""The daemon end to end: loop, log lines, signals, reload, exit codes (SPEC §3, §5)."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BIN, SLOW


def test_daemon_reaps_and_logs_every_step(env, health, daemons):
    now = time.time()
    env.store.add("db-stale", "running", 400)
    env.store.add("db-q", "queued", 400)
    env.store.add("db-live", "running", 0)
    env.write_cache({"c-old": {"status": "running", "start_time": now - 212},
                     "c-q": {"status": "queued", "created_at": now - 300},
                     "c-nots": {"status": "running"},
                     "c-done": {"status": "done"}})
    health.set_json({"status": "healthy", "jobs_active": 2})
    d = daemons(env, LIMPEZA_HEALTH_URL=health.url, LIMPEZA_INTERVAL="300ms",
                LIMPEZA_RUNNING_TTL="2s", LIMPEZA_REPORT_EVERY="3")
    log = d.wait_for(r"📊 Relatório \(Ciclo 3\): 2 jobs ativos na API")
    for line in [
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - INFO - 🚀 Sistema de Limpeza 2 Segundos iniciado\.\.\.$",
        r"- INFO - ⏱️ Configuração: jobs > 2s serão limpos a cada 300ms$",
        r"- INFO - 🔄 Ciclo 1 - \d\d:\d\d:\d\d$",
        r"- INFO - 🚀 Iniciando limpeza completa\.\.\.$",
        r"- INFO - 🧹 Job órfão no cache limpo: c-old \(rodando há 21[23]s\)$",
        r"- INFO - 🧹 Job queued expirado no cache: c-q$",
        r"- INFO - ✅ Cache limpo: 2 jobs órfãos removidos$",
        r"- INFO - 🧹 Limpeza banco executada: running > 2s: 1, queued > 2min: 1$",
        r"- INFO - 📊 Stats banco \(24h\): \{'error': 2, 'running': 1\}$",
        r"- INFO - 📊 API Health: 2 jobs ativos$",
        r"- INFO - ✅ Limpeza executada: 4 jobs processados$",
        r"- INFO - ✅ Sistema limpo - nenhum job órfão encontrado$",
        r"- INFO - 📊 Relatório \(Ciclo 3\): 2 jobs ativos na API$",
    ]:
        assert re.search(line, log, re.M), line
    # the job without a time is reaped 2 s after it was first seen, no sooner
    log = d.wait_for(r"Job órfão no cache limpo: c-nots \(rodando há [23]s\)")
    assert json.loads(env.read_cache()) == {"c-done": {"status": "done"}}
    # the live row went stale after 2 s without progress: reaped too, at
    # its deadline between cycles or by a cycle
    deadline = time.monotonic() + 10 * SLOW
    while env.store.statuses()["db-live"] != "error" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert env.store.statuses()["db-live"] == "error"
    # its line follows the commit: wait for it, not read the log at once
    d.wait_for(r"running > 2s: 1, queued > 2min: 0|⏰ Prazo atingido: \d+ jobs")
    assert d.stop() == 0
    log = d.stderr()
    assert log.rstrip().endswith("- INFO - 🛑 Sistema de limpeza interrompido")
    # the log file has the same lines
    assert env.log_text() == log


def test_sigterm_when_idle_exits_within_a_second(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="1h")
    d.wait_for("Sistema limpo")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.p.wait(5 * SLOW) == 0
    assert time.monotonic() - t0 < 1.0 * SLOW
    assert "🛑 Sistema de limpeza interrompido" in d.stderr()


def test_sigint_too(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="1h")
    d.wait_for("Sistema limpo")
    d.signal(signal.SIGINT)
    assert d.p.wait(5 * SLOW) == 0


def test_sigusr1_runs_a_cycle_now(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="1h")
    d.wait_for(r"Ciclo 1 ")
    env.write_cache({"old": {"status": "queued", "created_at": time.time() - 999}})
    d.signal(signal.SIGUSR1)
    log = d.wait_for(r"Job queued expirado no cache: old", timeout=3)
    assert "🔔 SIGUSR1: ciclo imediato" in log
    assert "Ciclo 2 " in log
    assert env.read_cache() == "{}"


def mapped(pid, name):
    with open("/proc/%d/maps" % pid) as f:
        return name in f.read()


def smaps(pid, key):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        return int(re.search(r"^%s:\s+(\d+) kB" % key, f.read(), re.M).group(1))


def test_libraries_are_loaded_only_when_the_settings_need_them(env, health, daemons):
    """libpq and libcurl (and the forty libraries behind them) are loaded on
    first need: not for a cache file alone, libcurl once a health URL is set."""
    d = daemons(env, LIMPEZA_INTERVAL="1h")
    d.wait_for(r"Ciclo 1 ")
    assert not mapped(d.p.pid, "libcurl") and not mapped(d.p.pid, "libpq")
    health.set_json({"status": "healthy", "jobs_active": 2})
    d2 = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=health.url)
    d2.wait_for(r"API Health: 2 jobs ativos")
    assert mapped(d2.p.pid, "libcurl") and not mapped(d2.p.pid, "libpq")
    assert d.stop() == 0 and d2.stop() == 0


def test_gnutls_is_left_uninitialised(env, health, daemons):
    """GnuTLS comes in with libcurl's dependencies and initialises itself when
    loaded unless GNUTLS_NO_IMPLICIT_INIT=1, which limpeza sets before loading
    libcurl: the same daemon with the operator's GNUTLS_NO_IMPLICIT_INIT=0
    keeps the GnuTLS state, hundreds of kB more."""
    health.set_json({"status": "healthy", "jobs_active": 1})
    lean = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=health.url)
    full = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=health.url,
                   GNUTLS_NO_IMPLICIT_INIT="0")
    for d in (lean, full):
        d.wait_for(r"API Health: 1 jobs ativos")
    assert smaps(lean.p.pid, "Rss") < smaps(full.p.pid, "Rss") - 256


def test_sighup_reloads_settings_and_keeps_them_on_error(env, daemons, tmp_path):
    envfile = tmp_path / "backend.env"
    envfile.write_text("LIMPEZA_RUNNING_TTL=3m\n")
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_ENV_FILES=str(envfile))
    d.wait_for("jobs > 3min serão limpos")
    env.write_cache({"r": {"status": "running", "start_time": time.time() - 100}})

    envfile.write_text("export LIMPEZA_RUNNING_TTL=90s\n")
    d.signal(signal.SIGHUP)
    d.wait_for("🔄 Configuração recarregada")
    d.signal(signal.SIGUSR1)
    d.wait_for(r"Job órfão no cache limpo: r \(rodando há 10\ds\)")

    # a bad value is refused; the previous settings stay in force
    envfile.write_text("LIMPEZA_RUNNING_TTL=soon\n")
    d.signal(signal.SIGHUP)
    log = d.wait_for("❌ Recarga da configuração falhou, mantendo a anterior: "
                     "invalid LIMPEZA_RUNNING_TTL 'soon' \\(from an env file\\)")
    env.write_cache({"r2": {"status": "running", "start_time": time.time() - 100}})
    d.signal(signal.SIGUSR1)
    d.wait_for(r"Job órfão no cache limpo: r2", timeout=3)
    assert d.p.poll() is None


def test_log_file_reopened_after_rotation(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="1h")
    d.wait_for("Sistema limpo")
    os.rename(env.log, env.log + ".1")
    d.signal(signal.SIGHUP)
    d.wait_for("Configuração recarregada")
    d.signal(signal.SIGUSR1)
    d.wait_for("Ciclo 2 ", source=env.log_text)
    with open(env.log + ".1") as f:
        assert "Ciclo 2" not in f.read()
    # cycle 2 has ended: from here the idle daemon logs nothing until told
    d.wait_for("Sistema limpo", count=2)
    # moved away without a SIGHUP, and a new empty file put in its place
    # (logrotate's `create`): noticed at the next line
    os.rename(env.log, env.log + ".2")
    open(env.log, "w").close()
    d.signal(signal.SIGUSR1)
    d.wait_for("Ciclo 3 ", source=env.log_text)
    with open(env.log + ".2") as f:
        assert "Ciclo 3" not in f.read()


def test_log_directory_is_created(env, daemons):
    deep = os.path.join(env.tmp, "var", "log", "desfollow", "limpeza_3min.log")
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_LOG_FILE=deep)
    d.wait_for("Sistema limpo")
    with open(deep) as f:
        assert "🚀 Sistema de Limpeza 3 Minutos iniciado..." in f.read()


def test_unwritable_log_does_not_stop_the_daemon(env, daemons):
    blocker = os.path.join(env.tmp, "file")
    open(blocker, "w").close()
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_LOG_FILE=blocker + "/x/limpeza.log")
    log = d.wait_for("Sistema limpo")
    assert "cannot open log file" in log
    assert d.p.poll() is None
    # the fault goes: the log file is tried again every 5 s (at the first
    # line logged then), so with a line every 0.5 s it is open within 5.5 s
    os.unlink(blocker)
    t0 = time.monotonic()
    n = 2
    while not os.path.exists(blocker + "/x/limpeza.log") and time.monotonic() - t0 < 15 * SLOW:
        d.signal(signal.SIGUSR1)
        d.wait_for("Ciclo %d " % n)
        n += 1
        time.sleep(0.5)
    assert os.path.exists(blocker + "/x/limpeza.log")
    assert time.monotonic() - t0 < 5.5 + 1.0 * SLOW
    d.signal(signal.SIGUSR1)
    d.wait_for("Ciclo %d " % n)
    with open(blocker + "/x/limpeza.log") as f:
        assert "Ciclo %d " % n in f.read()


def test_failed_cycle_waits_the_error_backoff(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_ERROR_BACKOFF="500ms",
                LIMPEZA_HEALTH_URL="http://127.0.0.1:9/api/health")
    log = d.wait_for("Ciclo 3 ", timeout=5)
    assert "⚠️ Ciclo 1 com falhas - próximo ciclo em 500ms" in log
    assert "❌ Erro ao consultar API Health" in log


def test_journal_priority_prefix(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="1h", JOURNAL_STREAM="auto",
                LIMPEZA_HEALTH_URL="http://127.0.0.1:9/api/health")
    log = d.wait_for("Limpeza incompleta")
    assert re.search(r"^<6>\d{4}-.* - INFO - 🚀 Sistema de Limpeza", log, re.M)
    assert re.search(r"^<3>\d{4}-.* - ERROR - ❌ Erro ao consultar API Health", log, re.M)
    assert re.search(r"^<4>.* - WARNING - ⚠️ DATABASE_URL|^<4>.* - WARNING - ⚠️ Ciclo 1", log, re.M)
    # the file has no prefixes
    assert "<6>" not in env.log_text()


def test_no_database_url_warns_once(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="200ms", DATABASE_URL=None)
    log = d.wait_for("Ciclo 3 ")
    assert log.count("⚠️ DATABASE_URL não definido - limpeza do banco desativada") == 1
    assert "Limpeza banco" not in log


def test_store_outage_logged_once_per_change(env, daemons):
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                DATABASE_URL="sqlite:///" + env.tmp + "/later.db")
    log = d.wait_for("Ciclo 4 ")
    assert log.count("❌ Erro no banco (sqlite)") == 1
    os.rename(env.store.path, env.tmp + "/later.db")
    log = d.wait_for("✅ Banco disponível novamente \\(sqlite\\)")
    assert log.count("❌ Erro no banco (sqlite)") == 1


def test_json_and_english_logs(env, daemons):
    env.write_cache({"old": {"status": "running", "start_time": time.time() - 500}})
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_LOG_FORMAT="json")
    d.wait_for('"event":"clean"|"event":"summary"')
    d.stop()
    lines = [json.loads(l) for l in d.stderr().splitlines()]
    ev = {l["event"]: l for l in lines}
    assert ev["cache_orphan"]["job_id"] == "old"
    assert 499 <= ev["cache_orphan"]["age_s"] <= 501
    assert ev["cache_orphan"]["level"] == "info"
    assert ev["db_cleaned"]["running"] == 0
    assert ev["db_stats"]["stats"] == {}
    assert ev["stop"]["msg"] == "🛑 Cleanup system stopped"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", l["ts"]) for l in lines)

    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_LANG="en")
    log = d.wait_for("System clean")
    assert "🚀 3-Minute Cleanup System started..." in log
    assert "⏱️ Configuration: jobs > 3min will be cleaned every 60min" in log


def test_bad_configuration_exits_2_with_one_line(env):
    p = env.run("run", LIMPEZA_RUNNING_TTL="3 minutes")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1
    assert "LIMPEZA_RUNNING_TTL" in p.stderr and "'3 minutes'" in p.stderr
    assert "expected a duration" in p.stderr
    p = env.run("once", "--queued-ttl", "x")
    assert p.returncode == 2 and "(from the command line)" in p.stderr
    p = env.run("once", DATABASE_URL="postgres://app:hunter2@db/x?sslmode=require",
                LIMPEZA_TABLE="scans;drop")
    assert p.returncode == 2 and "LIMPEZA_TABLE" in p.stderr
    p = env.run("once", DATABASE_URL="mongodb://app:hunter2@db/x")
    assert p.returncode == 2 and "hunter2" not in p.stderr
    assert "invalid DATABASE_URL (not shown: it may hold a password)" in p.stderr
    for args in (["frobnicate"], ["--frob"], ["run", "--force"], ["once", "--json"],
                 ["once", "extra"]):
        p = env.run(*args)
        assert p.returncode == 2, args
        assert p.stderr.startswith("limpeza: ") and p.stderr.count("\n") == 1, p.stderr


def test_help_and_version(env):
    p = env.run("--help")
    assert p.returncode == 0
    assert "limpeza once [--force] [--dry-run]" in p.stdout
    assert "--running-ttl=DURATION" in p.stdout and "LIMPEZA_RUNNING_TTL" in p.stdout
    p = env.run("--version")
    assert p.returncode == 0 and re.fullmatch(r"limpeza \d+\.\d+\.\d+\n", p.stdout)


def test_options_beat_environment(env):
    env.write_cache({"r": {"status": "running", "start_time": time.time() - 100}})
    p = env.run("once", "--running-ttl=90s", LIMPEZA_RUNNING_TTL="10m")
    assert "Job órfão no cache limpo: r" in p.stderr


def test_password_never_printed(env):
    url = "postgresql://app:hunter2@127.0.0.1:9/x"
    for args in (["once"], ["check"], ["stats"], ["stats", "--json"]):
        p = env.run(*args, DATABASE_URL=url)
        assert "hunter2" not in p.stdout + p.stderr, args


def test_no_secret_in_usage_errors_bad_values_or_other_urls(env):
    """Whatever an operator mistypes, and whatever other URL carries a
    secret, none of it is printed: a misspelt option's value, a stray
    argument, a database URL refused at start-up (even one nobody can
    parse), a health URL's password, a webhook's token path."""
    leaks = ("SecretXY", "cr3tXY", "HealthPw9", "T0SECRET", "B0TOKEN")
    url = "postgresql://app:SecretXY@127.0.0.1:9/x"
    runs = [
        env.run("once", "--databse-url=" + url),
        env.run("once", url),
        env.run("check", "--database-url", url, "extra-" + url),
    ]
    for bad in (" " + url, "postgresql:/app:SecretXY@h/db", "app:SecretXY@h/db",
                "sqlite://app:SecretXY@h/db", "host=h passwd=SecretXY",
                "postgresql://app:pa/SecretXY@127.0.0.1:9/x",
                "postgresql://app:p@SecretXY@127.0.0.1:9/x",
                # a connection string as the database name: libpq sends it
                # as a name and the server quotes it back in its error
                "host=127.0.0.1 port=9 dbname=postgresql://u:SecretXY@h/db",
                "postgresql://a@127.0.0.1:9/x?dbname=postgresql://u:SecretXY@h/db",
                "postgresql://a@127.0.0.1:9/x?dbname=user%3Du%20password%3DSecretXY"):
        p = env.run("once", DATABASE_URL=bad)
        assert p.returncode == 2 and "invalid DATABASE_URL (not shown" in p.stderr, p.stderr
        runs.append(p)
    hook = "https://hooks.example/services/T0SECRET/B0TOKEN"
    for args in (["check", "--health"], ["once"], ["stats", "--health"]):
        runs.append(env.run(*args, DATABASE_URL=None, LIMPEZA_ALERT_WEBHOOK=hook,
                            LIMPEZA_HEALTH_URL="http://admin:HealthPw9@127.0.0.1:9/api/health"))
    p = runs[-3]
    # a webhook or a token-as-user URL put where a command goes (a stray
    # space in ExecStart=), with or without a command before it
    for args in ([hook], ["check", hook], ["check", "--alert-webhook=", hook],
                 ["once", "https://0123T0SECRET@o1.ingest.example.com/42"]):
        q = env.run(*args, DATABASE_URL=None)
        assert q.returncode == 2 and "(not shown" in q.stderr, q.stderr
        runs.append(q)
    assert "LIMPEZA_HEALTH_URL=http://***@127.0.0.1:9/api/health" in p.stdout
    assert "LIMPEZA_ALERT_WEBHOOK=https://hooks.example/..." in p.stdout
    assert "FAIL: health URL http://***@127.0.0.1:9/api/health" in p.stdout
    for p in runs:
        out = p.stdout + p.stderr + env.log_text()
        assert not any(s in out for s in leaks), out[-2000:]
    assert "unknown option '--databse-url=...'" in runs[0].stderr
    assert "unexpected argument '(not shown: it may hold a secret)'" in runs[1].stderr
