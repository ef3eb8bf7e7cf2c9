"""Operations: the systemd unit, the installer, the operators' scripts, logrotate, man page."""

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, ROOT, cannot_set_up

UNIT = os.path.join(ROOT, "etc", "desfollow-limpeza-3min.service")
SCRIPTS = ["configurar_limpeza_3_minutos.sh", "testar_limpeza_3_minutos.sh",
           "limpar_jobs_rapido.sh", "scripts/deps.sh", "scripts/demo.sh", "scripts/probe.sh",
           "scripts/trixie.sh", ".ci/run"]


def render_unit(tmp_path, text=None):
    """The unit as the installer writes it, pointing at the built binary."""
    text = text if text is not None else open(UNIT).read()
    text = (text.replace("@SBINDIR@", os.path.dirname(BIN))
            .replace("@USER@", "root").replace("@GROUP@", "root"))
    path = tmp_path / "desfollow-limpeza-3min.service"
    path.write_text(text)
    return str(path)


def exposure(unit):
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    return float(m.group(1))


def test_unit_verifies(tmp_path):
    unit = render_unit(tmp_path)
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_unit_is_hardened(tmp_path):
    assert exposure(render_unit(tmp_path)) <= 2.5


def test_original_unit_would_fail_the_hardening_check(tmp_path):
    """The check can fail: the seed's unit rates as exposed."""
    original = """[Unit]
Description=Desfollow cleanup
After=network.target
[Service]
Type=simple
ExecStart=@SBINDIR@/limpeza run
Restart=always
PrivateTmp=true
[Install]
WantedBy=multi-user.target
"""
    assert exposure(render_unit(tmp_path, original)) > 8


def test_unit_shares_tmp_and_is_notify():
    text = open(UNIT).read()
    settings = dict(l.split("=", 1) for l in text.splitlines()
                    if "=" in l and not l.startswith("#"))
    assert settings["Type"] == "notify"
    assert settings["PrivateTmp"] == "false"
    assert settings["Restart"] == "always" and settings["RestartSec"] == "5"
    assert int(settings["WatchdogSec"]) >= 60
    assert "ExecReload" in settings and "-/tmp" in settings["ReadWritePaths"]
    # SIGTERM finishes the current step; a database step that hangs gives
    # up after the store's client timeout: systemd must wait longer.
    with open(os.path.join(ROOT, "src", "store_pg.c")) as f:
        client_s = int(re.search(r"#define CLIENT_TIMEOUT_MS \((\d+) \* MS_PER_S\)",
                                 f.read()).group(1))
    assert int(settings["TimeoutStopSec"]) > client_s + 10


def test_scripts_pass_shellcheck():
    p = subprocess.run(["shellcheck", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_logrotate_file_parses(tmp_path):
    conf = tmp_path / "limpeza.conf"
    conf.write_text(open(os.path.join(ROOT, "etc", "desfollow-limpeza.logrotate")).read()
                    .replace("/var/log/desfollow", str(tmp_path)))
    (tmp_path / "limpeza_3min.log").write_text("x\n")
    p = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "error" not in p.stderr.lower(), p.stderr


def test_man_page_lists_every_setting():
    man = open(os.path.join(ROOT, "build", "limpeza.8")).read()
    help_text = subprocess.run([BIN, "--help"], capture_output=True, text=True).stdout
    names = re.findall(r"\((LIMPEZA_[A-Z_]+|DATABASE_URL);", help_text)
    assert len(names) >= 30
    for n in names:
        assert n in man, n
    p = subprocess.run(["man", "-l", "-P", "cat", os.path.join(ROOT, "build", "limpeza.8")],
                       capture_output=True, text=True, env=dict(os.environ, MANWIDTH="100"))
    assert p.returncode == 0 and "LIMPEZA_RUNNING_TTL" in p.stdout


def snapshot(root):
    """Every file under root with its content hash, mode and mtime."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(d, name)
            st = os.lstat(path)
            digest = ""
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = (digest, st.st_mode,
                                                st.st_mtime_ns if digest else 0)
    return out


def installer(*args, **env):
    e = dict(os.environ, LIMPEZA_HEALTH_URL="", LIMPEZA_ENV_FILES="", **env)
    return subprocess.run([os.path.join(ROOT, "configurar_limpeza_3_minutos.sh"), *args],
                          capture_output=True, text=True, env=e, timeout=600)


def test_installer_staged_idempotent_and_uninstalls(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    cache = str(tmp_path / "cache.json")
    p = installer("--root", root, "--no-start", LIMPEZA_CACHE_FILE=cache)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "check passed" in p.stdout
    unit = os.path.join(root, "etc/systemd/system/desfollow-limpeza-3min.service")
    text = open(unit).read()
    exec_start, env_file = re.search(r"^ExecStart=(\S+) run --env-file (\S+)$",
                                     text, re.M).groups()
    # every file where the unit and the other files expect it
    assert os.access(root + exec_start, os.X_OK)
    assert exec_start == "/usr/local/sbin/limpeza"
    assert os.path.isfile(os.path.join(root, "usr/local/share/man/man8/limpeza.8"))
    assert os.path.isfile(root + env_file)
    assert oct(os.stat(root + env_file).st_mode & 0o777) == "0o600"
    logrotate = open(os.path.join(root, "etc/logrotate.d/desfollow-limpeza")).read()
    log_path = logrotate.split("{")[0].split()[-1]
    assert os.path.isdir(root + os.path.dirname(log_path))
    assert "desfollow-limpeza-3min.service" in logrotate
    assert re.search(r"^User=\S+$", text, re.M) and not re.search(r"@[A-Z]+@", text)
    assert subprocess.run([root + exec_start, "--version"], capture_output=True).returncode == 0

    before = snapshot(root)
    time.sleep(0.02)
    p = installer("--root", root, "--no-start", LIMPEZA_CACHE_FILE=cache)
    assert p.returncode == 0, p.stderr
    assert not re.search(r"^  (installed|created) ", p.stdout, re.M), p.stdout
    assert snapshot(root) == before

    p = installer("--uninstall", "--root", root)
    assert p.returncode == 0, p.stderr
    left = [f for f, (digest, _, _) in snapshot(root).items() if digest]
    assert left == []


def test_installer_refuses_non_root(tmp_path):
    if os.geteuid() != 0:
        cannot_set_up("needs root to become another user")
    p = subprocess.run(["runuser", "-u", "nobody", "--",
                        os.path.join(ROOT, "configurar_limpeza_3_minutos.sh")],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "must be run as root" in p.stderr


def test_installer_gives_the_service_user_its_settings_file(tmp_path):
    """The service runs as the cache file's owner and reads its settings
    file itself (--env-file): the installer makes that user the file's
    owner (mode 600, it may hold the password) and runs `limpeza check` as
    that user, so what only root could read is caught at install time."""
    if os.geteuid() != 0:
        cannot_set_up("needs root to stage an install for another user")
    base = tempfile.mkdtemp(prefix="limpeza-inst-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "root")
        os.mkdir(root)
        shared = os.path.join(base, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        p = installer("--root", root, "--no-start", "--user", "nobody",
                      LIMPEZA_CACHE_FILE=os.path.join(shared, "jobs.json"),
                      LIMPEZA_LOG_FILE="")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "check passed" in p.stdout, p.stdout + p.stderr
        st = os.stat(os.path.join(root, "etc/default/desfollow-limpeza"))
        assert st.st_uid == pwd.getpwnam("nobody").pw_uid
        assert oct(st.st_mode & 0o777) == "0o600"
    finally:
        shutil.rmtree(base)


def run_testar(env, health, *args):
    return subprocess.run(
        [os.path.join(ROOT, "testar_limpeza_3_minutos.sh"), "--no-service",
         "--health-url", health.url, "--duration", "1", "--every", "1",
         "--log", env.log, "--cache", env.cache, *args],
        capture_output=True, text=True, timeout=60)


def test_testar_script_passes_and_fails(env, health):
    os.makedirs(os.path.dirname(env.log))
    with open(env.log, "w") as f:
        f.write("2024-01-15 14:30:15 - INFO - ✅ Sistema limpo\n")
    env.write_cache({"a": {"status": "running"}, "b": {"status": "done"}})
    health.set_json({"status": "healthy", "jobs_active": 2})
    p = run_testar(env, health)
    assert p.returncode == 0, p.stdout
    assert p.stdout.rstrip().endswith("RESULTADO: PASS")
    assert "jobs_active=2" in p.stdout and "2 jobs: 1 running, 0 queued" in p.stdout

    health.set_json({"status": "healthy", "jobs_active": 7})
    p = run_testar(env, health)
    assert p.returncode == 0 and "attention" in p.stdout

    health.set_json({"status": "healthy", "jobs_active": 11})
    p = run_testar(env, health)
    assert p.returncode == 1 and p.stdout.rstrip().endswith("RESULTADO: FAIL")

    health.set_json({"status": "healthy", "jobs_active": 1})
    env.write_cache('{"a": {"sta')
    p = run_testar(env, health)
    assert p.returncode == 1 and "invalid" in p.stdout

    env.write_cache({})
    old = time.time() - 3600
    os.utime(env.log, (old, old))
    p = run_testar(env, health)
    assert p.returncode == 1 and "last written" in p.stdout


def test_limpar_script_forces_a_cleanup(env, health, tmp_path):
    env.store.add("live", "running", 5)
    env.write_cache({"c": {"status": "running"}, "d": {"status": "done"}})
    health.set_json({"status": "healthy", "jobs_active": 1})
    p = subprocess.run([os.path.join(ROOT, "limpar_jobs_rapido.sh"), "--bin", BIN,
                        "--health-url", health.url, "--env-file", str(tmp_path / "none")],
                       capture_output=True, text=True, env=env.env(), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count('"jobs_active": 1') == 2
    assert "🚨 Limpeza forçada: 3 jobs terminados" in p.stderr
    assert env.store.statuses() == {"live": "error"}
    assert env.read_cache() == "{}"


def test_make_install_installs_the_man_page(tmp_path):
    dest = str(tmp_path / "dest")
    p = subprocess.run(["make", "-s", "install", "DESTDIR=" + dest, "PREFIX=/usr/local"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    page = os.path.join(dest, "usr/local/share/man/man8/limpeza.8")
    with open(page) as f, open(os.path.join(ROOT, "build", "limpeza.8")) as g:
        assert f.read() == g.read()
    assert os.access(os.path.join(dest, "usr/local/sbin/limpeza"), os.X_OK)
    p = subprocess.run(["make", "-s", "uninstall", "DESTDIR=" + dest, "PREFIX=/usr/local"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and not os.path.exists(page)


def test_readme_and_man_page_are_the_contract_inside_the_repository():
    """They name no path outside the repository: no ../, no other tree."""
    for name in ("README.md", "man/limpeza.8.in"):
        text = open(os.path.join(ROOT, name)).read()
        assert "../" not in text and "shared/SPEC" not in text, name
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "the contract" in readme and "limpeza(8)" in readme


def test_debian_packages_are_named_once():
    """scripts/deps.sh holds the package lists; the other scripts call it."""
    deps = open(os.path.join(ROOT, "scripts", "deps.sh")).read()
    names = set()
    for var in ("build_pkgs", "test_pkgs"):
        names |= set(re.search(r'^%s="([^"]+)"$' % var, deps, re.M).group(1).split())
    # Names that differ between releases, as each release spells them.
    releases = re.findall(r"^\S+\) (pg=.*) ;;$", deps, re.M)
    assert len(releases) == 2
    for release in releases:
        values = dict(a.split("=") for a in release.split())
        names |= {re.sub(r"\$(\w+)", lambda m: values[m.group(1)], n) for n in names}
    names = {n for n in names if "$" not in n}
    assert {"postgresql-15", "postgresql-17"} <= names
    assert len(names) > 10
    for script in SCRIPTS + ["Makefile"]:
        if script == "scripts/deps.sh":
            continue
        text = open(os.path.join(ROOT, script)).read()
        assert "apt-get install" not in text, script
        words = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", text))
        assert not (words & names - {"python3", "systemd", "openssl", "time", "valgrind",
                                     "logrotate", "sqlite3", "clang", "shellcheck",
                                     "cppcheck", "clang-tidy", "clang-format",
                                     "pkg-config", "mmdebstrap", "curl",
                                     "prometheus"}), script  # etc/prometheus/
    assert "scripts/deps.sh" in open(os.path.join(ROOT, "configurar_limpeza_3_minutos.sh")).read()
