"""The cache-file reaper against real files (SPEC §1.1, §6 rules 1-3)."""

import fcntl
import json
import os
import re
import stat
import subprocess
import signal
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest

from conftest import BIN, ROOT, SANITIZED, SLOW

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


@pytest.mark.parametrize("bad,line,col", [
    ("", 1, 1),
    ('{"a": {"status": "running", "start_time": 1}, "b": {"sta', 1, 57),
    ('{"a": {"status": "running", "start_time": 1}}\n{"x"', 2, 1),
    ('[{"status": "running", "start_time": 1}]', 1, 1),
    ('"just a string"', 1, 1),
    ('  null', 1, 3),
    ('{"a": {"status": "running", "start_time": 1},}', 1, 46),
    ('{"a": nan}', 1, 7),
])
def test_malformed_file_left_untouched(env, bad, line, col):
    """SPEC §6.3, §8.2: never write over what could not be parsed; the log
    says where (a valid value that is not an object: where it starts)."""
    with open(env.cache, "w") as f:
        f.write(bad)
    before = os.stat(env.cache)
    p = once(env)
    assert p.returncode == 1
    with open(env.cache) as f:
        assert f.read() == bad
    assert os.stat(env.cache).st_ino == before.st_ino
    assert "❌ Cache inválido, mantido intacto" in p.stderr
    assert "(linha %d, coluna %d)" % (line, col) in p.stderr, p.stderr
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
    now = NOW()
    fresh = '{"status": "running", "start_time": %.2f, "count": 1}' % (now - 5)
    new_q = '{"status": "queued"}'
    env.write_cache('{"old": {"status": "running", "start_time": %.2f, "count": 2}, '
                    '"fresh": %s, "q": {"status": "queued", "created_at": %.2f}, '
                    '"new-q": %s}' % (now - 999, fresh, now - 999, new_q))
    p = once(env, LIMPEZA_CACHE_ACTION="mark")
    assert p.returncode == 0, p.stderr
    text = env.read_cache()
    jobs = json.loads(text)
    assert jobs["old"]["status"] == "error"
    assert jobs["old"]["error"] == "Job órfão - mais de 3 minutos"
    assert jobs["old"]["count"] == 2
    assert jobs["q"] == {"status": "error", "created_at": jobs["q"]["created_at"],
                         "error": "Job queued expirado - mais de 2 minutos"}
    # fresh active jobs stay as they were, byte for byte
    assert list(jobs) == ["old", "fresh", "q", "new-q"]
    assert '"fresh": ' + fresh in text
    assert '"new-q": ' + new_q in text
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
        f.write('{"old": {"status": "running", "start_time": 1000000000}}')
    if kind == "symlink":
        os.symlink(target, env.cache)
    elif kind == "directory":
        os.mkdir(env.cache)
    else:
        os.mkfifo(env.cache)
    before = os.lstat(env.cache) if kind != "symlink" else None
    p = once(env, timeout=10)
    assert p.returncode == 1
    assert "❌ Erro no cache" in p.stderr
    after = os.lstat(env.cache)
    if kind == "symlink":
        assert os.readlink(env.cache) == target
    elif kind == "directory":
        assert stat.S_ISDIR(after.st_mode) and os.listdir(env.cache) == []
    else:
        assert stat.S_ISFIFO(after.st_mode)
    if before is not None:
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(os.listdir(env.tmp)) == ["desfollow_jobs.json", "jobs.db", "log", "real.json"]
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
/* Plays a writer that rewrites the cache right after limpeza has written
   its temporary file and before it renames it: in place, as the API does,
   or (RACE_MODE=replace) by renaming a new file over it; RACE_MODE=always
   in place at every try. */
int fsync(int fd) {
	static int done;
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	const char *path = getenv("RACE_FILE");
	const char *mode = getenv("RACE_MODE");
	if ((!done || (mode != NULL && strcmp(mode, "always") == 0)) && path) {
		char buf[65536], other[4200];
		/* replace: the old file is only read, never opened for
		   writing (so no lease taken at limpeza's read is broken) */
		FILE *f = fopen(path, mode != NULL && strcmp(mode, "replace") == 0
		    ? "r" : "r+");
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		if (mode != NULL && strcmp(mode, "replace") == 0) {
			fclose(f);
			snprintf(other, sizeof(other), "%s.new", path);
			f = fopen(other, "w");
		} else
			rewind(f);
		fprintf(f, "{\"late\": {\"status\": \"done\"}, %s", buf + 1);
		fclose(f);
		if (mode != NULL && strcmp(mode, "replace") == 0)
			rename(other, path);
		usleep(20000);
		done = 1;
	}
	return real(fd);
}
"""


@pytest.mark.parametrize("mode", ["in-place", "replace"])
def test_change_between_read_and_rename_is_retried(env, tmp_path, mode):
    """SPEC §6.2: a version written while limpeza worked is not overwritten,
    whether the writer rewrote the file or put a new one in its place."""
    src = tmp_path / "race.c"
    src.write_text(RACE_SHIM)
    so = str(tmp_path / "race.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src), "-ldl"], check=True)
    env.write_cache({"old": {"status": "running", "start_time": NOW() - 999},
                     "keep": {"status": "done"}})
    extra = {}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    p = once(env, LD_PRELOAD=so, RACE_FILE=env.cache, RACE_MODE=mode,
             LIMPEZA_LOG_LEVEL="debug", **extra)
    assert p.returncode == 0, p.stderr
    assert json.loads(env.read_cache()) == {"late": {"status": "done"},
                                            "keep": {"status": "done"}}
    assert "Cache alterado durante a limpeza, nova tentativa" in p.stderr
    assert [f for f in os.listdir(env.tmp) if ".limpeza-" in f] == []


def test_a_file_that_changes_at_every_try_is_a_failed_step(env, tmp_path):
    """A writer that rewrites the file at every one of limpeza's tries: the
    stale job is still there, so the step failed and the cycle says so
    (exit 1), never "Sistema limpo"."""
    src = tmp_path / "race.c"
    src.write_text(RACE_SHIM)
    so = str(tmp_path / "race.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src), "-ldl"], check=True)
    env.write_cache({"old": {"status": "running", "start_time": NOW() - 999}})
    extra = {}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    p = once(env, LD_PRELOAD=so, RACE_FILE=env.cache, RACE_MODE="always", **extra)
    assert p.returncode == 1, p.stderr
    assert "⚠️ Cache alterado a cada tentativa, limpeza adiada" in p.stderr
    assert p.stderr.rstrip().endswith("⚠️ Limpeza incompleta - falha em: cache")
    assert "Sistema limpo" not in p.stderr
    assert "old" in json.loads(env.read_cache())


COARSE_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/file.h>
/* Plays the API on a file system with coarse timestamps: right after
   limpeza has written its temporary file and before it swaps it in, the
   file is rewritten in place with the same size ("count": 10 becomes 11),
   and its times are set back to what they were, as a clock that has not
   ticked since the last write would leave them. With COARSE_HOLD the
   writer has the file open for writing from limpeza's lock on (so no
   lease is granted at the read), and closes it after its write. */
static int held = -1;

int flock(int fd, int op) {
	static int done;
	int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
	int r = real(fd, op);
	if (!done++ && getenv("COARSE_HOLD") != NULL)
		held = open(getenv("COARSE_FILE"), O_WRONLY);
	return r;
}

int fsync(int fd) {
	static int done;
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	const char *path = getenv("COARSE_FILE");
	if (!done++ && path) {
		char buf[65536], *p;
		struct stat st;
		struct timespec ts[2];
		FILE *f = fopen(path, "r+");
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		fstat(fileno(f), &st);
		p = strstr(buf, "\"count\": 10");
		p[strlen("\"count\": 1")] = '1';
		rewind(f);
		fwrite(buf, 1, n, f);
		fclose(f);
		ts[0] = st.st_atim;
		ts[1] = st.st_mtim;
		utimensat(AT_FDCWD, path, ts, 0);
		if (held != -1)
			close(held);
	}
	return real(fd);
}
"""


@pytest.mark.parametrize("hold", [False, True], ids=["lease-from-the-read", "open-at-the-read"])
def test_same_size_rewrite_within_one_clock_tick_is_not_overwritten(env, tmp_path, hold):
    """Issue 22, item 4: on a file system with 1 s timestamps a same-size
    rewrite within the same second leaves inode, size and mtime as they
    were (an API progress update from "count": 10 to 11). The shim makes
    one between limpeza's read and its swap and sets the times back. The
    lease taken at the read sees the writer's open(); where none could be
    had at the read (the writer had the file open), the bytes compared
    under the swap's lease see the change. Either way the pass is retried
    and the update kept."""
    src = tmp_path / "coarse.c"
    src.write_text(COARSE_SHIM)
    so = str(tmp_path / "coarse.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src), "-ldl"], check=True)
    now = NOW()
    env.write_cache({"old": {"status": "running", "start_time": now - 999},
                     "progress": {"status": "running", "start_time": now - 30, "count": 10}})
    past = now - 100
    os.utime(env.cache, (past, past))
    extra = {}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    if hold:
        extra["COARSE_HOLD"] = "1"
    p = once(env, LD_PRELOAD=so, COARSE_FILE=env.cache, LIMPEZA_LOG_LEVEL="debug", **extra)
    assert p.returncode == 0, p.stderr
    assert json.loads(env.read_cache()) == {
        "progress": {"status": "running", "start_time": now - 30, "count": 11}}
    assert "Cache alterado durante a limpeza, nova tentativa" in p.stderr
    assert [f for f in os.listdir(env.tmp) if ".limpeza-" in f] == []


def test_a_leftover_that_is_not_limpezas_own_is_kept(env):
    """Issue 22, item 2: a temporary file left by a killed run is removed
    only if it provably holds limpeza's own bytes (its name carries the
    hashes of the version read and the version written). One that holds
    anything else, here one named as an older limpeza named them and one
    whose bytes match neither hash of its name, may hold a writer's job:
    it is kept as NAME.limpeza-recovered-<time>-<random>, byte for byte,
    and the log names it; a later pass leaves it alone. One being written
    when limpeza died (.new, never swapped in) is removed."""
    env.write_cache({"stale": {"status": "queued", "created_at": 1e9},
                     "keep": {"status": "done"}})
    base = os.path.basename(env.cache)
    named = {
        ".%s.limpeza-Ab12Cd" % base: '{"api": {"status": "done"}}',
        ".%s.limpeza-Ef34Gh.%s" % (base, "0123456789abcdef" * 4): '{"api2": 1}',
        ".%s.limpeza-Ij56Kl.new" % base: '{"half',
    }
    for n, text in named.items():
        with open(os.path.join(env.tmp, n), "w") as f:
            f.write(text)
    p = once(env)
    assert p.returncode == 0, p.stderr
    files = os.listdir(env.tmp)
    assert [f for f in files if f.startswith(".%s.limpeza-" % base)] == [], files
    recovered = sorted(f for f in files if f.startswith("%s.limpeza-recovered-" % base))
    assert len(recovered) == 2, files
    got = {}
    for f in recovered:
        assert re.fullmatch(re.escape(base) + r"\.limpeza-recovered-\d{8}T\d{6}Z-(Ab12Cd|Ef34Gh)",
                            f), f
        with open(os.path.join(env.tmp, f)) as fh:
            got[f[-6:]] = fh.read()
        assert f in p.stderr and "junte ao cache à mão" in p.stderr, p.stderr
    assert got == {"Ab12Cd": '{"api": {"status": "done"}}', "Ef34Gh": '{"api2": 1}'}
    assert "removido: %s" % os.path.join(env.tmp, ".%s.limpeza-Ij56Kl.new" % base) in p.stderr
    assert json.loads(env.read_cache()) == {"keep": {"status": "done"}}
    env.write_cache({"stale": {"status": "queued", "created_at": 1e9}})
    p = once(env)
    assert p.returncode == 0, p.stderr
    assert sorted(f for f in os.listdir(env.tmp) if ".limpeza-" in f) == recovered


HALF_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The API starts rewriting the file (open(w) truncates it) just after
   limpeza noted its version and before limpeza reads it, and finishes
   30 ms later: limpeza reads half a file that had rested for long. */
ssize_t
read(int fd, void *buf, size_t n)
{
	static int done;
	ssize_t (*real)(int, void *, size_t) =
	    (ssize_t (*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
	const char *path = getenv("HALF_FILE"), *text = getenv("HALF_TEXT");
	char link[64], target[4096];
	ssize_t tl;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	tl = readlink(link, target, sizeof(target) - 1);
	if (tl > 0)
		target[tl] = '\0';
	/* only the cache file's first read, not the zone file's or others */
	if (!done && path != NULL && text != NULL && tl > 0 &&
	    strcmp(target, path) == 0) {
		int w = open(path, O_WRONLY | O_TRUNC);
		size_t half = strlen(text) / 2;

		done = 1;
		if (write(w, text, half) < 0)
			_exit(99);
		if (fork() == 0) {
			struct timespec t = { 0, 30L * 1000 * 1000 };

			nanosleep(&t, NULL);
			if (write(w, text + half, strlen(text) - half) < 0)
				_exit(99);
			_exit(0);
		}
		close(w);
	}
	return real(fd, buf, n);
}
"""


def test_a_rested_file_caught_being_rewritten_is_read_again(env, tmp_path):
    """The API rewrites a file that had not changed for minutes, and limpeza
    reads it half-written: the version it noted moved, so it waits and
    reads the whole new version, not logging a broken file."""
    src = tmp_path / "half.c"
    src.write_text(HALF_SHIM)
    so = str(tmp_path / "half.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src), "-ldl"], check=True)
    env.write_cache({"keep": {"status": "done"}})
    os.utime(env.cache, (time.time() - 600, time.time() - 600))
    new = json.dumps({"old": {"status": "queued", "created_at": 1e9},
                      "keep": {"status": "done"}, "pad": "x" * 4000})
    extra = {}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    p = once(env, LD_PRELOAD=so, HALF_FILE=env.cache, HALF_TEXT=new, **extra)
    assert p.returncode == 0, p.stderr
    assert "Cache inválido" not in p.stderr
    assert "Job queued expirado no cache: old" in p.stderr
    assert json.loads(env.read_cache()) == {"keep": {"status": "done"}, "pad": "x" * 4000}


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
                json.dump(dict(big, **{"old%d" % i: {"status": "queued", "created_at": 1e9}}), f)
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


SWAP_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Plays an API that replaces the cache file (json.dump to a new file and
   rename, or any writer that makes a new inode) while limpeza reads it:
   the first read() of the cache file while SWAP_FROM exists renames
   SWAP_FROM over it first, so limpeza reads on in the old version. */
ssize_t
read(int fd, void *buf, size_t n)
{
	static ssize_t (*real)(int, void *, size_t);
	const char *from = getenv("SWAP_FROM"), *to = getenv("SWAP_TO");
	char link[64], target[4096];
	ssize_t len;

	if (real == NULL)
		real = (ssize_t (*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
	if (from != NULL && to != NULL && access(from, F_OK) == 0) {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		len = readlink(link, target, sizeof(target) - 1);
		if (len > 0) {
			target[len] = '\0';
			if (strcmp(target, to) == 0)
				rename(from, to);
		}
	}
	return real(fd, buf, n);
}
"""


def preload(tmp_path, name, source):
    src = tmp_path / (name + ".c")
    src.write_text(source)
    so = str(tmp_path / (name + ".so"))
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src), "-ldl"], check=True)
    extra = {"LD_PRELOAD": so}
    if SANITIZED:
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    return extra


CYCLE_END = r"(✅ (Sistema limpo|Limpeza executada)|⚠️ Limpeza incompleta)"


def test_file_replaced_during_a_pass_is_read_next_cycle(env, daemons, tmp_path):
    """The "unchanged, nothing due" shortcut records the version the pass
    read, not what the path names after it: a version the API wrote during
    the pass is read by the next cycle, and its orphan reaped (20 of 20)."""
    new = env.cache + ".api"
    env.write_cache({"done": {"status": "done"}})
    d = daemons(env, DATABASE_URL=None, LIMPEZA_INTERVAL="1h", SWAP_FROM=new,
                SWAP_TO=env.cache, **preload(tmp_path, "swap", SWAP_SHIM))
    d.wait_for(CYCLE_END)
    cycles = 1
    for run in range(20):
        # a version with nothing due; while the pass reads it, the API
        # puts one with an orphan in its place
        env.write_cache({"done": {"status": "done"}, "run": run})
        with open(new, "w") as f:
            json.dump({"done": {"status": "done"}, "run": run,
                       "orphan-%d" % run: {"status": "running", "start_time": NOW() - 600}}, f)
        d.signal(signal.SIGUSR1)
        cycles += 1
        d.wait_for(CYCLE_END, count=cycles)
        assert not os.path.exists(new), "the pass did not read the file"
        d.signal(signal.SIGUSR1)
        cycles += 1
        log = d.wait_for(CYCLE_END, count=cycles)
        assert "Job órfão no cache limpo: orphan-%d " % run in log, "run %d" % run
        assert json.loads(env.read_cache()) == {"done": {"status": "done"}, "run": run}


def test_zone_less_iso_time_is_local_time(env):
    """SPEC §1.1: an ISO time without a zone is the host's local time, as
    Python's datetime.now().isoformat() writes it."""
    tz = "America/Sao_Paulo"
    py = ("from datetime import datetime, timedelta; n = datetime.now(); "
          "print(n.isoformat()); print((n - timedelta(minutes=4)).isoformat())")
    now_iso, old_iso = subprocess.run([sys.executable, "-c", py], env={"TZ": tz},
                                      capture_output=True, text=True,
                                      check=True).stdout.split()
    env.write_cache({"now": {"status": "running", "start_time": now_iso},
                     "4min": {"status": "running", "start_time": old_iso}})
    p = once(env, TZ=tz)
    assert p.returncode == 0, p.stderr
    assert json.loads(env.read_cache()) == {"now": {"status": "running", "start_time": now_iso}}
    assert re.search(r"Job órfão no cache limpo: 4min \(rodando há 24[0-5]s\)", p.stderr), p.stderr


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))


def test_early_bad_value_costs_no_more_memory_than_a_clean_pass(env, daemons, tmp_path):
    """A 28 MB cache with a bad value in its first job: refused at that
    value, with no more memory than a clean pass of the same file takes
    (the window does not grow to the rest of the file)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from gen_cache import generate
    clean = str(tmp_path / "clean.json")
    generate(clean, 28, 0)
    with open(clean, "rb") as f:
        data = f.read()
    assert len(data) > 25 * 1024 * 1024
    bad = data.replace(b'"count": ', b'"count": nan, "x": ', 1)
    assert bad.index(b"nan") < 100000
    peaks = {}
    for name, text in (("clean", data), ("bad", bad)):
        with open(env.cache, "wb") as f:
            f.write(text)
        os.utime(env.cache, (time.time() - 60, time.time() - 60))
        d = daemons(env, DATABASE_URL=None, LIMPEZA_INTERVAL="1h")
        d.wait_for("Sistema limpo" if name == "clean" else "Ciclo 1 com falhas", timeout=30)
        peaks[name] = vm_hwm(d.p.pid)
        assert d.stop() == 0
        with open(env.cache, "rb") as f:
            assert f.read() == text
    assert "(linha 1, coluna" in d.stderr()
    assert peaks["bad"] <= peaks["clean"], peaks


ODD = [
    # (what, text, the job that must be gone afterwards or None)
    ("NaN time", '{"o": {"status": "running", "start_time": 1e9}, "n": {"status": "running", "start_time": NaN}}', "o"),
    ("NaN status", '{"o": {"status": "running", "start_time": 1e9}, "n": {"status": NaN}}', "o"),
    ("Infinity everywhere", '{"o": {"status": "running", "start_time": 1e9, "x": Infinity}, "n": {"status": "queued", "created_at": -Infinity, "start_time": Infinity}}', "o"),
    ("huge numbers", '{"o": {"status": "running", "start_time": 1e9, "n": 1e999}, "q": {"status": "queued", "created_at": %s}}' % ("9" * 4000), "o"),
    ("lone surrogates", '{"\\ud83d": {"status": "running", "start_time": 1e9}, "s": {"status": "\\udc00", "start_time": "\\ud83d"}}', "\ud83d"),
    ("escaped status and NUL key", '{"\\u0000": {"st\\u0061tus": "run\\u006eing", "start_time": 1e9}, "k": {"status": "done"}}', "\u0000"),
    ("error member after status", '{"o": {"status": "running", "start_time": 1e9, "error": NaN}, "k": 1}', "o"),
    ("deep value", '{"o": {"status": "running", "start_time": 1e9, "d": %s1%s}}' % ("[" * 500, "]" * 500), "o"),
    ("too deep", '{"o": {"status": "running", "start_time": 1e9, "d": %s1%s}}' % ("[" * 12000, "]" * 12000), None),
    ("integer past Python's limit", '{"o": {"status": "running", "start_time": %s}}' % ("1" * 4301), None),
    ("raw NUL after a number", '{"o": {"status": "running", "start_time": 1e9\x00}}', None),
    ("not UTF-8", '{"o": {"status": "running", "start_time": 1e9, "n": "\udcff"}}', None),
    ("a string", '"running"', None),
    ("empty", "", None),
]


@pytest.mark.parametrize("action", ["remove", "mark"])
def test_no_file_stops_the_daemon(env, daemons, action):
    """SPEC §6.4: whatever the cache file holds, the daemon goes on; what
    Python can read is cleaned, what it cannot is left byte for byte."""
    env.write_cache({})
    d = daemons(env, DATABASE_URL=None, LIMPEZA_INTERVAL="1h", LIMPEZA_CACHE_ACTION=action)
    d.wait_for(CYCLE_END)
    for n, (what, text, gone) in enumerate(ODD):
        data = text.encode("utf-8", "surrogateescape")
        with open(env.cache, "wb") as f:
            f.write(data)
        os.utime(env.cache, (time.time() - 60, time.time() - 60))
        d.signal(signal.SIGUSR1)
        d.wait_for(CYCLE_END, count=n + 2)
        assert d.p.poll() is None, "%s: the daemon exited:\n%s" % (what, d.stderr()[-2000:])
        with open(env.cache, "rb") as f:
            out = f.read()
        if gone is None:
            assert out == data, what
            continue
        jobs = json.loads(out)
        if action == "remove":
            assert gone not in jobs and len(jobs) == len(json.loads(data)) - 1, what
        else:
            assert jobs[gone]["status"] == "error" and "error" in jobs[gone], what
    assert d.stop() == 0


@pytest.mark.parametrize("length", [174, 175, 235])
def test_a_cache_file_name_limpeza_cannot_write_beside_is_refused(env, length):
    """limpeza writes the new version beside the file, under a name 81
    bytes longer (NAME_MAX is 255). A longer name could be read and
    checked but never rewritten: every stale job would stay while `check`
    passed. The longest name that works is used to the end; one byte more
    is refused at start-up, by every command, naming the setting, and the
    file is left as it is."""
    path = os.path.join(env.tmp, "j" * (length - 5) + ".json")
    text = json.dumps({"stale": {"status": "queued", "created_at": 1e9},
                       "keep": {"status": "done"}})
    with open(path, "w") as f:
        f.write(text)
    for cmd in ("check", "once"):
        p = env.run(cmd, DATABASE_URL=None, LIMPEZA_CACHE_FILE=path)
        if length <= 174:
            assert p.returncode == 0, p.stderr
            continue
        assert p.returncode != 0
        line = [x for x in p.stderr.splitlines() if "LIMPEZA_CACHE_FILE" in x]
        assert len(line) == 1, p.stderr
        assert "at most 174 bytes" in line[0], line[0]
        with open(path) as f:
            assert f.read() == text
    if length <= 174:
        with open(path) as f:
            assert json.load(f) == {"keep": {"status": "done"}}
        assert [n for n in os.listdir(env.tmp) if ".limpeza-" in n] == []
