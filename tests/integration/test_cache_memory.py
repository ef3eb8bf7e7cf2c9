"""A cache pass's peak memory, whatever the file holds (issue 23 item 4).

A pass stays within twice the file's size plus 8 MiB for files of tiny
members, deep nesting and huge strings; a file of more members than
limpeza's limit (100,000) is refused with one line and left as it is,
before its members cost more. The peak is the kernel's accounting of the
limpeza process (GNU time's wait4, ru_maxrss): a memory figure, not a
timing, so it is asserted.
"""

import os
import re
import subprocess
import tempfile

import pytest

from conftest import BIN, ROOT, SANITIZED, SLOW

MiB = 1024 * 1024
LIMIT = 100000  # src/cache.c CACHE_MAX_MEMBERS, README "The cache file"
REFUSED = "more than 100000 members, limpeza's limit (see limpeza(8)): the file is left as it is"

# ASan's shadow memory and quarantine are no part of limpeza's own peak.
rss_bound = pytest.mark.skipif(SANITIZED, reason="the peak of the release build is bounded")


def once(env, *args):
    """(exit status, stderr, peak RSS in bytes) of one `limpeza once` on env's
    cache file alone (no database, no health URL)."""
    fd, out = tempfile.mkstemp()
    os.close(fd)
    try:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out, BIN, "once", *args],
                           env=env.env(DATABASE_URL=None, LIMPEZA_LOG_FILE=""),
                           capture_output=True, text=True, timeout=120 * SLOW)
        with open(out) as f:
            peak = int(f.read().split()[-1]) * 1024
    finally:
        os.unlink(out)
    return p.returncode, p.stderr, peak


def write(env, text):
    with open(env.cache, "w") as f:
        f.write(text)
    return os.path.getsize(env.cache)


def members(n, value="0", key=lambda i: "k"):
    return "{" + ",".join('"%s":%s' % (key(i), value) for i in range(n)) + "}"


def test_millions_of_tiny_members_are_refused_untouched_within_the_bound(env):
    # The file: 2 million "k":0 members (12 MB) took 328 MB.
    size = write(env, members(2000000))
    with open(env.cache, "rb") as f:
        before = f.read()
    # A forced cleanup (LIMPEZA_FORCE_CACHE=all) would replace it by {}.
    for args in (("--force",), (), ("--dry-run",)):
        rc, err, peak = once(env, *args)
        with open(env.cache, "rb") as f:
            assert f.read() == before, "the refused file was changed (%s)" % (args,)
        assert rc == 1, err
        assert REFUSED in err, err
        assert "Sistema limpo" not in err and "falha em: cache" in err, err
        if not SANITIZED:
            assert peak <= 2 * size + 8 * MiB, \
                "peak %.1f MiB for a %.1f MiB file (%s)" % (peak / MiB, size / MiB, args)


def test_the_limit_is_exact(env):
    # LIMIT members of stale jobs are cleaned; one more and nothing is.
    job = '{"status": "queued", "created_at": 1000000000}'
    write(env, members(LIMIT, job, key=str))
    rc, err, _ = once(env)
    assert rc == 0 and REFUSED not in err, err
    assert env.read_cache() == "{}"
    text = members(LIMIT + 1, job, key=str)
    write(env, text)
    rc, err, _ = once(env)
    assert rc == 1 and REFUSED in err, err
    assert env.read_cache() == text


@rss_bound
def test_deep_nesting_stays_within_twice_the_file_plus_8_mib(env):
    # 400 members each nested as deep as limpeza reads (10,000 levels), and
    # one stale job it must still find among them.
    deep = "[" * 9990 + "]" * 9990
    text = members(400, deep, key=lambda i: "d%d" % i)
    text = text[:-1] + ',"old":{"status":"running","start_time":1000000000,"d":%s}}' % deep
    size = write(env, text)
    rc, err, peak = once(env)
    assert rc == 0, err
    assert '"old"' not in env.read_cache()
    assert peak <= 2 * size + 8 * MiB, "peak %.1f MiB for a %.1f MiB file" % (
        peak / MiB, size / MiB)


@rss_bound
@pytest.mark.parametrize("where", ["value", "key", "escaped key"])
def test_huge_strings_stay_within_twice_the_file_plus_8_mib(env, where):
    # One string of 40 MB (a value, a key, or a key of \u escapes), and a
    # stale job after it that the pass must reach.
    if where == "value":
        big = '"big":{"status":"done","all":"%s"}' % ("x" * 40000000)
    elif where == "key":
        big = '"%s":0' % ("k" * 40000000)
    else:
        big = '"%s":0' % ("\\u00e7" * 7000000)
    size = write(env, '{%s,"old":{"status":"running","start_time":1000000000}}' % big)
    rc, err, peak = once(env)
    assert rc == 0, err
    assert peak <= 2 * size + 8 * MiB, "peak %.1f MiB for a %.1f MiB file" % (
        peak / MiB, size / MiB)
    with open(env.cache) as f:
        assert '"old"' not in f.read()


UNIT = os.path.join(ROOT, "etc", "desfollow-limpeza-3min.service")
LARGEST_FILE = 200 * 1000 * 1000  # README: MemoryMax=512M holds a 200 MB cache file


@rss_bound
def test_the_units_memory_max_holds_a_pass_over_the_largest_documented_file(env):
    # What a pass keeps per member is dearest for active jobs without a
    # time (remembered since first sight): LIMIT of them, the most a file
    # may hold, measured; the rest of the bound is twice the file's size.
    size = write(env, members(LIMIT, '{"status":"queued"}', key=str))
    rc, err, peak = once(env, "--dry-run")
    assert rc == 0 and REFUSED not in err, err
    with open(UNIT) as f:
        values = re.findall(r"^MemoryMax=(\d+)([KMG]?)$", f.read(), re.M)
    assert len(values) == 1, "the unit sets no MemoryMax= (or more than one)"
    n, unit = values[0]
    memory_max = int(n) * {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}[unit]
    assert memory_max >= 2 * LARGEST_FILE + 8 * MiB + (peak - size), \
        "MemoryMax=%s%s: a pass over %d members took %.1f MiB" % (n, unit, LIMIT, peak / MiB)
