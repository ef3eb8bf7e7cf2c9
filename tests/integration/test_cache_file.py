"""The cache-file reaper against real files (SPEC §1.1, §6 rules 1-3)."""

import fcntl
import json
import os
import re
import stat
import subprocess
import threading
import time

import pytest

from conftest import BIN, ROOT, SANITIZED

NOW = time.time


def once(env, *args, **over):
    over.setdefault("DATABASE_URL", None)
    return env.run("once", *args, **over)


def test_reaps_stale_keeps_fresh_byte_for_byte(env):
    now = NOW()
    # Odd but valid formatting in kept jobs must survive untouched.
    fresh = ('{"status": "running", "start_time": %.2f, "profile_info": '
             '{"name": "Jo\\u00e3o", "bio": "a \\"quoted\\" }{ bio"}, "ratio": 1.10, '
             '"count": 0}' % (now - 30))
    done = '{"status":"done","all":[1,2,3],  "count":3,"big":12345678901234567890}'
    text = ('{"old-run": {"status": "running", "start_time": %d, "count": 0}, '
            '"fresh": %s, "old-q": {"status": "queued", "created_at": %d}, '
            '"new-q": {"status": "queued"}, "done": %s, '
            '"iso-old": {"status": "running", "start_time": "2020-01-01T00:00:00Z"}}'
            % (now - 400, fresh, now - 200, done))
    # jansson rejects integers past 64 bits; use a file it accepts.
    text = text.replace("12345678901234567890", "1234567890123456789")
    done = done.replace("12345678901234567890", "1234567890123456789")
    env.write_cache(text)
    p = once(env)
    assert p.returncode == 0, p.stderr
    out = env.read_cache()
    assert json.loads(out).keys() == {"fresh", "new-q", "done"}
    assert ('"fresh": ' + fresh) in out
    assert ('"done": ' + done) in out
    assert '"new-q": {"status": "queued"}' in out
    log = p.stderr
    assert re.search(r"🧹 Job órfão no cache limpo: old-run \(rodando há (399|40[0-5])s\)", log)
    assert "🧹 Job queued expirado no cache: old-q" in log
    assert "🧹 Job órfão no cache limpo: iso-old" in log
    assert "✅ Cache limpo: 3 jobs órfãos removidos" in log
    assert "✅ Limpeza executada: 3 jobs processados" in log
    # the same lines went to the log file
    assert "✅ Cache limpo: 3 jobs órfãos removidos" in env.log_text()


def test_nothing_to_reap_no_rewrite(env):
    now = NOW()
    text = env.write_cache({"a": {"status": "running", "start_time": now - 5},
                            "b": {"status": "done"}})
    before = os.stat(env.cache)
    time.sleep(0.05)
    p = once(env)
    assert p.returncode == 0, p.stderr
    after = os.stat(env.cache)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert env.read_cache() == text
    assert "✅ Sistema limpo - nenhum job órfão encontrado" in p.stderr


def test_job_without_time_survives_new_processes(env):
    """SPEC §8.1: a job without start_time is aged from first sight, not 1970."""
    text = env.write_cache({"new": {"status": "running", "count": 0},
                            "q": {"status": "queued"}})
    for _ in range(2):
        p = once(env, LIMPEZA_RUNNING_TTL="1s", LIMPEZA_QUEUED_TTL="1s")
        assert p.returncode == 0, p.stderr
        time.sleep(1.2)
    assert env.read_cache() == text


@pytest.mark.parametrize("bad", [
    "",
    '{"a": {"status": "running", "start_time": 1}, "b": {"sta',
    '{"a": {"status": "running", "start_time": 1}}\n{"x"',
    '[{"status": "running", "start_time": 1}]',
    '"just a string"',
    'null',
    '{"a": {"status": "running", "start_time": 1},}',
    '{"a": NaN}',
])
def test_malformed_file_left_untouched(env, bad):
    """SPEC §6.3, §8.2: never write over what could not be parsed."""
    with open(env.cache, "w") as f:
        f.write(bad)
    before = os.stat(env.cache)
    p = once(env)
    assert p.returncode == 1
    with open(env.cache) as f:
        assert f.read() == bad
    assert os.stat(env.cache).st_ino == before.st_ino
    assert "❌ Cache inválido, mantido intacto" in p.stderr
    if bad.startswith("{") and "\n" not in bad:
        assert "(linha 1, coluna " in p.stderr
    # the cycle still went on to the end, which names the failed step
    assert p.stderr.rstrip().endswith("⚠️ Limpeza incompleta - falha em: cache")
    assert "Sistema limpo" not in p.stderr


def test_truncated_multiline_reports_line_and_column(env):
    text = '{\n  "a": {"status": "running",\n  "start_time": 1,\n  "x": [1, 2'
    env.write_cache(text)
    p = once(env)
    assert p.returncode == 1
    assert env.read_cache() == text
    assert "(linha 4, coluna" in p.stderr


def test_mode_and_owner_kept(env):
    env.write_cache({"old": {"status": "queued", "created_at": NOW() - 999},
                     "keep": {"status": "done"}})
    os.chmod(env.cache, 0o604)
    if os.geteuid() == 0:
        os.chown(env.cache, 65534, 65534)
    p = once(env)
    assert p.returncode == 0, p.stderr
    st = os.stat(env.cache)
    assert stat.S_IMODE(st.st_mode) == 0o604
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert json.loads(env.read_cache()) == {"keep": {"status": "done"}}
    # no temporary file left next to it
    assert sorted(os.listdir(env.tmp)) == ["desfollow_jobs.json", "jobs.db", "log"]


def test_mark_mode(env):
    env.write_cache({"old": {"status": "running", "start_time": NOW() - 999, "count": 2},
                     "q": {"status": "queued", "created_at": NOW() - 999}})
    p = once(env, LIMPEZA_CACHE_ACTION="mark")
    assert p.returncode == 0, p.stderr
    jobs = json.loads(env.read_cache())
    assert jobs["old"]["status"] == "error"
    assert jobs["old"]["error"] == "Job órfão - mais de 3 minutos"
    assert jobs["old"]["count"] == 2
    assert jobs["q"] == {"status": "error", "created_at": jobs["q"]["created_at"],
                         "error": "Job queued expirado - mais de 2 minutos"}
    assert "✅ Cache limpo: 2 jobs órfãos marcados como erro" in p.stderr


def test_dry_run_changes_nothing(env):
    text = env.write_cache({"old": {"status": "running", "start_time": NOW() - 999}})
    p = once(env, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert env.read_cache() == text
    assert "🧪 Simulação (dry-run): nada será alterado" in p.stderr
    assert "🧪 Job órfão seria limpo do cache: old" in p.stderr


def test_missing_file_is_not_an_error(env):
    p = once(env)
    assert p.returncode == 0, p.stderr
    assert not os.path.exists(env.cache)


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_odd_file_types_left_alone(env, kind):
    target = os.path.join(env.tmp, "real.json")
    with open(target, "w") as f:
        f.write('{"old": {"status": "running", "start_time": 1000}}')
    if kind == "symlink":
        os.symlink(target, env.cache)
    elif kind == "directory":
        os.mkdir(env.cache)
    else:
        os.mkfifo(env.cache)
    p = once(env, timeout=10)
    assert p.returncode == 1
    assert "❌ Erro no cache" in p.stderr
    if kind == "symlink":
        assert os.path.islink(env.cache)
    with open(target) as f:
        assert "old" in f.read()


def test_waits_for_a_cooperating_writers_lock(env):
    """SPEC §6.2: limpeza takes the flock; a writer holding it goes first."""
    env.write_cache({"old": {"status": "running", "start_time": NOW() - 999}})
    fd = os.open(env.cache, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    p = subprocess.Popen([BIN, "once"], env=env.env(DATABASE_URL=None),
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    # While we hold the lock the cooperating writer adds a job in place.
    with open(env.cache, "r+") as f:
        data = json.load(f)
        data["added"] = {"status": "done"}
        f.seek(0)
        f.truncate()
        json.dump(data, f)
    assert p.poll() is None  # still waiting for the lock
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert json.loads(env.read_cache()) == {"added": {"status": "done"}}


def test_relocks_when_path_was_replaced(env):
    """After the lock, the path must still name the locked inode."""
    env.write_cache({"x": {"status": "done"}})
    fd = os.open(env.cache, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    p = subprocess.Popen([BIN, "once"], env=env.env(DATABASE_URL=None),
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    # A cooperating writer replaces the file by rename while limpeza waits.
    tmp = env.cache + ".new"
    with open(tmp, "w") as f:
        json.dump({"x": {"status": "done"},
                   "old": {"status": "queued", "created_at": NOW() - 999}}, f)
    os.rename(tmp, env.cache)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert json.loads(env.read_cache()) == {"x": {"status": "done"}}
    assert "Job queued expirado no cache: old" in err


def test_gives_up_on_a_lock_held_too_long(env):
    text = env.write_cache({"old": {"status": "running", "start_time": NOW() - 999}})
    fd = os.open(env.cache, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = once(env)
    finally:
        os.close(fd)
    assert p.returncode == 1
    assert "locked by another process" in p.stderr
    assert env.read_cache() == text


RACE_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Plays an API that rewrites the cache in place right after limpeza has
   written its temporary file and before it renames it. */
int fsync(int fd) {
	static int done;
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	const char *path = getenv("RACE_FILE");
	if (!done && path) {
		char buf[65536];
		FILE *f = fopen(path, "r+");
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		rewind(f);
		fprintf(f, "{\"late\": {\"status\": \"done\"}, %s", buf + 1);
		fclose(f);
		usleep(20000);
		done = 1;
	}
	return real(fd);
}
"""


def test_change_between_read_and_rename_is_retried(env, tmp_path):
    """SPEC §6.2: a version written while limpeza worked is not overwritten."""
    src = tmp_path / "race.c"
    src.write_text(RACE_SHIM)
    so = str(tmp_path / "race.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src), "-ldl"], check=True)
    env.write_cache({"old": {"status": "running", "start_time": NOW() - 999},
                     "keep": {"status": "done"}})
    extra = {}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    p = once(env, LD_PRELOAD=so, RACE_FILE=env.cache, LIMPEZA_LOG_LEVEL="debug", **extra)
    assert p.returncode == 0, p.stderr
    assert json.loads(env.read_cache()) == {"late": {"status": "done"},
                                            "keep": {"status": "done"}}
    assert "Cache alterado durante a limpeza, nova tentativa" in p.stderr
    assert [f for f in os.listdir(env.tmp) if ".limpeza-" in f] == []


def test_readers_never_see_a_partial_file(env):
    """Rewrites are atomic: a reader racing them always parses the file."""
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            try:
                with open(env.cache) as f:
                    json.load(f)
            except json.JSONDecodeError as e:
                bad.append(str(e))
            except FileNotFoundError:
                bad.append("missing")

    big = {"done-%d" % i: {"status": "done", "all": list(range(50))} for i in range(300)}
    t = threading.Thread(target=reader)
    env.write_cache(dict(big, old={"status": "running", "start_time": NOW() - 999}))
    t.start()
    try:
        for i in range(15):
            with open(env.cache + ".w", "w") as f:
                json.dump(dict(big, **{"old%d" % i: {"status": "queued", "created_at": 5e8}}), f)
            os.rename(env.cache + ".w", env.cache)
            p = once(env)
            assert p.returncode == 0, p.stderr
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert json.loads(env.read_cache()) == big


NO_COPY_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sys/types.h>

/* A file system without copy_file_range() between these files. */
ssize_t
copy_file_range(int in, off_t *a, int out, off_t *b, size_t n, unsigned f)
{
	(void)in; (void)a; (void)out; (void)b; (void)n; (void)f;
	errno = EXDEV;
	return -1;
}
"""


def test_kept_jobs_copied_with_or_without_copy_file_range(env, tmp_path):
    """Kept jobs go from the old file to the new one by copy_file_range(), or
    through limpeza's window where the file system cannot: the same bytes,
    on a file larger than the window, with orphans scattered through it."""
    src = tmp_path / "nocopy.c"
    src.write_text(NO_COPY_SHIM)
    so = str(tmp_path / "nocopy.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src)], check=True)
    now = NOW()
    parts, want = [], []
    for i in range(3000):
        if i % 97 == 5 and i < 1500:  # then a run of kept jobs past the window
            job = '{"status": "running", "start_time": %d}' % (now - 999)
        else:
            job = '{"status": "done", "all": ["%s"], "n": %d}' % ("x" * 1500, i)
            want.append('"j%d": %s' % (i, job))
        parts.append('"j%d": %s' % (i, job))
    text = "{" + ", ".join(parts) + "}"
    assert len(text) > 4 * 1024 * 1024
    extra = {}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    for preload in ({}, {"LD_PRELOAD": so}):
        env.write_cache(text)
        p = once(env, **preload, **(extra if preload else {}))
        assert p.returncode == 0, p.stderr
        assert "✅ Cache limpo: 16 jobs órfãos removidos" in p.stderr
        got, expected = env.read_cache(), "{" + ", ".join(want) + "}"
        # not `got == expected` in the assert: pytest would diff megabytes
        same = got == expected
        assert same, "first difference at byte %d of %d" % (
            next((i for i, (x, y) in enumerate(zip(got, expected)) if x != y),
                 min(len(got), len(expected))), len(expected))
