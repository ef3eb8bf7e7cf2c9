"""A build that is not tied to one Debian release: the libraries limpeza loads
are those the build linked against, every curl option it relies on is checked,
minimum versions are checked at build time, SQLite's at run time."""

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import BIN, ROOT, SANITIZED, SLOW
from test_observability import Webhook


def copy_tree(dest, *parts):
    for part in parts:
        src = os.path.join(ROOT, part)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, part))
        else:
            os.makedirs(os.path.dirname(os.path.join(dest, part)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, part))


def library_path(soname):
    """Where the dynamic linker finds soname, by ldconfig's own cache."""
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)$", line)
        if m and m.group(1) == soname and "x86-64" in m.group(2):
            return m.group(3)
    raise AssertionError("ldconfig does not know %s" % soname)


def probe_define(name):
    with open(os.path.join(ROOT, "build", "probe.h")) as f:
        return re.search(r'^#define %s "([^"]+)"$' % name, f.read(), re.M).group(1)


def mapped_libcurl(pid):
    """The libcurl files mapped, by soname: libcurl.so.4.8.0 -> libcurl.so.4."""
    with open("/proc/%d/maps" % pid) as f:
        return sorted({re.sub(r"(\.so\.\d+).*", r"\1", os.path.basename(l.split()[-1]))
                       for l in f if "/libcurl" in l})


def test_loads_the_libcurl_the_build_linked(env, health, daemons, tmp_path):
    """A build whose linker picks libcurl-gnutls (as on a host that has only
    that flavour) loads libcurl-gnutls.so.4 and answers the health check."""
    gnutls = library_path("libcurl-gnutls.so.4")
    libdir = tmp_path / "lib"
    libdir.mkdir()
    os.symlink(gnutls, libdir / "libcurl.so")
    tree = str(tmp_path / "tree")
    copy_tree(tree, "Makefile", "src", "scripts", "man")
    p = subprocess.run(["make", "-s", "build/limpeza"], cwd=tree, capture_output=True,
                       text=True, env=dict(os.environ, LDFLAGS="-L%s" % libdir),
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    health.set_json({"status": "healthy", "jobs_active": 2})
    errpath = str(tmp_path / "stderr.txt")
    with open(errpath, "wb") as err:
        p = subprocess.Popen([os.path.join(tree, "build", "limpeza"), "run"],
                             env=env.env(LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=health.url),
                             stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 10 * SLOW
        while "📊 API Health: 2 jobs ativos" not in open(errpath).read():
            assert time.monotonic() < deadline and p.poll() is None, open(errpath).read()
            time.sleep(0.05)
        assert mapped_libcurl(p.pid) == ["libcurl-gnutls.so.4"]
    finally:
        p.terminate()
        assert p.wait(10 * SLOW) == 0
    # and the ordinary build loads the ordinary one
    d = daemons(env, LIMPEZA_INTERVAL="1h", LIMPEZA_HEALTH_URL=health.url)
    d.wait_for("📊 API Health: 2 jobs ativos")
    assert mapped_libcurl(d.p.pid) == [probe_define("CURL_SONAME")]


@pytest.fixture
def old_curl(tmp_path):
    """A directory with a libcurl that lacks CURLOPT_PROTOCOLS_STR, under the
    soname limpeza loads."""
    soname = probe_define("CURL_SONAME")
    lib = tmp_path / "oldcurl"
    lib.mkdir()
    p = subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-I", os.path.join(ROOT, "build"),
                        '-DREAL_CURL="%s"' % library_path(soname), "-o", str(lib / soname),
                        os.path.join(ROOT, "tests", "fixtures", "old_curl.c"), "-ldl"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return str(lib)


def test_an_older_libcurl_fails_loudly(env, health, old_curl):
    """Without CURLOPT_PROTOCOLS_STR the protocol restriction cannot be set:
    no request is made, and the log says why."""
    health.set_json({"status": "healthy", "jobs_active": 99})
    env.write_cache({"c": {"status": "running"}})
    p = env.run("once", LIMPEZA_HEALTH_URL=health.url, LD_LIBRARY_PATH=old_curl)
    assert p.returncode == 1
    assert ("❌ Erro ao consultar API Health: libcurl refused CURLOPT_PROTOCOLS_STR: "
            "An unknown option was passed in to libcurl (libcurl 7.85 or later is needed)"
            in p.stderr), p.stderr
    assert health.hits == 0
    assert "MUITOS JOBS" not in p.stderr and "c" in env.read_cache()
    # the alert path checks its options too
    p = env.run("once", "--force", LIMPEZA_ALERT_WEBHOOK=health.url, LD_LIBRARY_PATH=old_curl)
    assert ("⚠️ Alerta não entregue: libcurl refused CURLOPT_PROTOCOLS_STR" in p.stderr), p.stderr
    assert health.hits == 0


def test_minimum_versions_are_checked_at_build_time(tmp_path):
    """A library older than limpeza needs stops the build with one clear line."""
    pc = tmp_path / "pc"
    pc.mkdir()
    (pc / "jansson.pc").write_text("Name: jansson\nDescription: too old\nVersion: 2.13\n"
                                   "Libs: -ljansson\nCflags:\n")
    tree = str(tmp_path / "tree")
    copy_tree(tree, "Makefile", "src", "scripts")
    p = subprocess.run(["make", "-s", "build/obj/config.o"], cwd=tree, capture_output=True,
                       text=True, env=dict(os.environ, PKG_CONFIG_PATH=str(pc)), timeout=300)
    assert p.returncode != 0
    assert ("limpeza: jansson 2.13 is too old: 2.14 or later is needed (json_object_getn)"
            in p.stderr), p.stdout + p.stderr
    assert not os.path.exists(os.path.join(tree, "build", "obj", "config.o"))


def test_an_older_sqlite_is_refused_at_run_time(env, tmp_path):
    """SQLite before 3.35 has no RETURNING: `check` says so, and a cycle's
    database step fails with that reason instead of half-working."""
    so = str(tmp_path / "old_sqlite.so")
    p = subprocess.run(["cc", "-shared", "-fPIC", "-o", so,
                        os.path.join(ROOT, "tests", "fixtures", "old_sqlite.c")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    over = {"LD_PRELOAD": so}
    if SANITIZED:  # ASan wants its runtime first; the preload comes before it
        over["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    env.store.add("stale", "running", 999)
    p = env.run("check", **over)
    assert p.returncode == 1
    assert ("FAIL: database: SQLite 3.34.1 is too old: 3.35.0 or later is needed (RETURNING)"
            in p.stdout), p.stdout
    p = env.run("once", **over)
    assert p.returncode == 1
    assert "❌ Erro no banco (sqlite): SQLite 3.34.1 is too old" in p.stderr
    assert env.store.statuses() == {"stale": "running"}
    # the real library is new enough
    p = env.run("check")
    assert p.returncode == 0 and "SQLite 3." in p.stdout


M32 = os.path.join(ROOT, "build", "m32", "limpeza")


def m32_command():
    """How to run the 32-bit build here: directly where the kernel execs
    i386 binaries, else through Debian's qemu-i386 (qemu-user), which runs
    it against the same i386 libraries. Never skipped: a machine that can
    do neither fails this test with the reason."""
    try:
        p = subprocess.run([M32, "--version"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            return [M32]
    except OSError as e:
        if e.errno != errno.ENOEXEC:
            raise
    qemu = shutil.which("qemu-i386")
    assert qemu, ("this kernel cannot exec i386 binaries and qemu-i386 is missing "
                  "(scripts/deps.sh test installs qemu-user)")
    p = subprocess.run([qemu, M32, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, "qemu-i386 cannot run the 32-bit build: " + p.stderr
    return [qemu, M32]


@pytest.mark.skipif(SANITIZED, reason="the 32-bit build is not the sanitized one")
def test_32_bit_build_sends_alerts_and_stats(env, health):
    """json_pack's formats match their arguments' types: on a 32-bit target a
    json_int_t passed for `i` shifts every later argument (the alert's body
    then has no message and limpeza stops: out of memory). The 32-bit build
    runs the alert path and `stats --json`."""
    p = subprocess.run(["make", "-s", "m32"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(M32, "rb") as f:
        assert f.read(5) == b"\x7fELF\x01"  # ELFCLASS32
    m32 = m32_command()
    hook = Webhook()
    try:
        env.store.add("db-run", "running", 900)
        env.write_cache({"c": {"status": "running"}, "d": {"status": "done"}})
        health.set_json({"status": "healthy", "jobs_active": 9})
        p = subprocess.run(m32 + ["once"], env=env.env(LIMPEZA_HEALTH_URL=health.url,
                                                      LIMPEZA_ALERT_WEBHOOK=hook.url),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert hook.wait(1) == ["forced_cleanup"], p.stderr
        a = hook.alerts[0][1]
        assert a["count"] == 2 and "9 active jobs" in a["message"]
        assert a["host"] == socket.gethostname() and a["time"].endswith("Z")

        env.store.add("db-new", "running", 0)
        env.write_cache({"c2": {"status": "queued"}})
        p = subprocess.run(m32 + ["stats", "--json", "--health"],
                           env=env.env(LIMPEZA_HEALTH_URL=health.url),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)
        assert st["database"]["active"] == 1 and st["database"]["store"] == "sqlite"
        assert st["database"]["by_status_24h"] == {"error": 1, "running": 1}
        assert st["cache"]["active"] == 1 and st["cache"]["stale"] == 0
        assert st["api"]["jobs_active"] == 9
    finally:
        hook.server.shutdown()
        hook.server.server_close()
