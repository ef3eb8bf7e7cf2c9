"""The cache file as the API writes it: Python's json dialect (SPEC §1.1).

Python is the oracle: it writes the files (json.dump, every indent,
separators and ensure_ascii), it says which bytes are valid (the API's own
read path, pyoracle.load), its scanner finds each member's bytes, and
SPEC §1.1's rules, written out in pyoracle.fate, say which jobs are stale.
"""

import json
import os
import random
import re
import subprocess
import tempfile
import time
from datetime import datetime, timezone

import pytest

import pyoracle
from conftest import BIN, ROOT, SANITIZED

NOW = time.time

SPECIALS = {
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
    "2**200": 2 ** 200,
    "lone surrogate": "\ud83d",
}
FORMS = {
    "default": {},
    "ensure_ascii=False, indent=2": {"ensure_ascii": False, "indent": 2},
}


def dump_like_the_api(path, jobs, **opts):
    """save_jobs(): open(path, 'w') + json.dump."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jobs, f, **opts)
    with open(path, "rb") as f:
        return f.read()


def check_marked(raw_in, raw_out, message):
    """A marked job: status and error set, every other member byte for byte."""
    job = json.loads(raw_out)
    assert job["status"] == "error" and job["error"] == message
    rest = lambda raw: [(rk, rv) for k, rk, rv in pyoracle.members(raw)
                        if k not in ("status", "error")]
    assert rest(raw_out) == rest(raw_in)


@pytest.mark.parametrize("action", ["remove", "mark"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("special", SPECIALS)
def test_json_dump_specials_are_cleaned(env, special, form, action):
    """Acceptance: a file json.dump wrote with one of Python's special values
    in it (in kept jobs, in the stale job, as a time) is cleaned: the stale
    job reaped, every other job byte for byte, the result loads in Python."""
    value, opts = SPECIALS[special], dict(FORMS[form])
    if special == "lone surrogate" and not opts.get("ensure_ascii", True):
        # json.dump(ensure_ascii=False) cannot write a lone surrogate to a
        # UTF-8 file: the API itself fails there, so the file never exists.
        with pytest.raises(UnicodeEncodeError):
            dump_like_the_api(env.cache, {"x": value}, **opts)
        opts["ensure_ascii"] = True
    now = NOW()
    jobs = {
        "done-1": {"status": "done", "all": ["ghost_1", value], "count": 2,
                   "profile_info": {"username": "João 😀", "followers": value}},
        "stale": {"status": "running", "start_time": now - 999,
                  "profile_info": {"username": "ação", "ratio": value}, "count": 0},
        "fresh": {"status": "running", "start_time": now - 5, "x": value},
        "no-time": {"status": "running", "start_time": value},
        "queued": {"status": "queued", "created_at": value},
        "done-2": {"status": "done", "n": value},
    }
    data = dump_like_the_api(env.cache, jobs, **opts)
    p = env.run("once", DATABASE_URL=None, LIMPEZA_CACHE_ACTION=action)
    assert p.returncode == 0, p.stderr
    assert "Job órfão no cache limpo: stale" in p.stderr
    with open(env.cache, "rb") as f:
        out = f.read()
    kind, got = pyoracle.load(out)
    assert kind == "dict", got
    want = {k: v for k, v in jobs.items() if k != "stale" or action == "mark"}
    if action == "mark":
        want["stale"] = dict(jobs["stale"], status="error",
                             error=pyoracle.MESSAGES["running"])
    assert pyoracle.canonical(got) == pyoracle.canonical(want)
    before = {k: rv for k, _, rv in pyoracle.members(data.decode())}
    after = {k: rv for k, _, rv in pyoracle.members(out.decode())}
    assert set(after) == set(want)
    for k in want:
        if k == "stale":
            check_marked(before[k], after[k], pyoracle.MESSAGES["running"])
        else:
            assert after[k] == before[k], k


# ---------------------------------------------------------------------------
# The differential test: many documents, limpeza and Python must agree.

WORDS = ["ghost", "João", "ação", "日本語", "😀", "\ud83d", "a\udfffb", "\u0000",
         "tab\there", "quote\"back\\slash/", "", "x" * 40, "\u2028", "\x7f"]
STATUSES = ["running", "running", "running", "queued", "queued", "done", "done",
            "error", "paused", "Running", "running ", 5, None, ["running"], "@@RAW@@"]


def rand_word(rng):
    return rng.choice(WORDS) if rng.random() < 0.5 else "user%d" % rng.randrange(10 ** 6)


def rand_scalar(rng):
    return rng.choice([
        lambda: rng.randrange(-1000, 1000), lambda: 2 ** rng.randrange(60, 300),
        lambda: -(2 ** 200), lambda: 10 ** 4299, lambda: rng.uniform(-1e6, 1e6),
        lambda: 5e-324, lambda: 1e300, lambda: -0.0, lambda: float("nan"),
        lambda: float("inf"), lambda: float("-inf"), lambda: True, lambda: False,
        lambda: None, lambda: rand_word(rng), lambda: "@@RAW@@"])()


def rand_value(rng, depth=0):
    r = rng.random()
    if depth > 4 or r < 0.55:
        return rand_scalar(rng)
    if r < 0.75:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if r < 0.78:  # a deep one, written in below (json.dump's indent is slow at depth)
        return "@@DEEP@@"
    return {rand_word(rng): rand_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def iso(rng, t):
    """t as one of the ISO-8601 forms APIs write; the naive ones are local."""
    form = rng.randrange(6)
    sep = rng.choice("T ")
    if form == 0:  # datetime.now().isoformat()
        return datetime.fromtimestamp(t).isoformat(sep=sep)
    if form == 1:
        return datetime.fromtimestamp(t).isoformat(sep=sep, timespec="seconds")
    if form == 2:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if form == 3:
        return datetime.fromtimestamp(t, timezone.utc).isoformat(sep=sep)
    d = datetime.fromtimestamp(t, timezone.utc).astimezone()
    s = d.isoformat(sep=sep, timespec="seconds")
    return s[:-3] + s[-2:] if form == 4 else s  # +HHMM or +HH:MM


def rand_time(rng, now):
    stale, fresh = now - rng.uniform(400, 90000), now - rng.uniform(0, 30)
    return rng.choice([
        lambda: stale, lambda: int(stale), lambda: fresh, lambda: int(fresh),
        lambda: now + 500, lambda: iso(rng, stale), lambda: iso(rng, fresh),
        lambda: "2020-01-01", lambda: "%d" % stale, lambda: "%.3f" % fresh,
        lambda: float("nan"), lambda: float("inf"), lambda: float("-inf"),
        lambda: 2 ** 200, lambda: 0, lambda: -5, lambda: None, lambda: True,
        lambda: "", lambda: "soon", lambda: "\ud83d", lambda: [stale],
        lambda: {"t": stale}, lambda: 1e12, lambda: "@@RAW@@"])()


def rand_job(rng, now):
    if rng.random() < 0.06:
        return rand_value(rng)
    fields = []
    if rng.random() < 0.92:
        fields.append(("status", rng.choice(STATUSES)))
    for name in ("start_time", "created_at"):
        if rng.random() < 0.6:
            fields.append((name, rand_time(rng, now)))
    if rng.random() < 0.15:
        fields.append(("error", rand_value(rng)))
    for _ in range(rng.randrange(4)):
        fields.append((rng.choice(["profile_info", "all", "count", rand_word(rng)]),
                       rand_value(rng)))
    rng.shuffle(fields)
    return dict(fields)


def rand_key(rng):
    r = rng.random()
    if r < 0.8:
        return "%032x" % rng.getrandbits(128)
    return rand_word(rng) + str(rng.randrange(3))


def escaped(key):
    """The same key with its first character as a \\u escape."""
    if not key or ord(key[0]) >= 0x10000:
        return json.dumps(key)
    return '"\\u%04x' % ord(key[0]) + json.dumps(key[1:])[1:]


RAW_LITERALS = ["1e400", "-1E+400", "1.0e-400", "-0", "0.000", "123456789012345678901234567890",
                "1" + "0" * 4299, "-" + "9" * 4300, '"run\\u006eing"', '"\\ud83d\\ude00"',
                '"\\uD83D"', '"\\/"', "NaN", "-Infinity", '"\\u0000"']


def rand_doc(rng, now):
    """(bytes, how they were made): a document as the API writes it, often
    then damaged."""
    n = rng.randrange(9)
    pairs = [(rand_key(rng), rand_job(rng, now)) for _ in range(n)]
    opts = {"indent": rng.choice([None, None, 0, 1, 2, 4, "\t"]),
            "ensure_ascii": rng.random() < 0.6}
    if rng.random() < 0.5:
        opts["separators"] = rng.choice([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t")])
    how = "dump"
    if pairs and rng.random() < 0.15:
        # duplicate keys (json.dump cannot write them): the last one counts
        how = "duplicates"
        k, _ = rng.choice(pairs)
        pairs.insert(rng.randrange(len(pairs) + 1), (k, rand_job(rng, now)))
        parts = [(escaped(k) if rng.random() < 0.3 else json.dumps(k, ensure_ascii=opts["ensure_ascii"]))
                 + ": " + json.dumps(v, **opts) for k, v in pairs]
        text = "{" + ", ".join(parts) + "}"
    else:
        text = json.dumps(dict(pairs), **opts)
    while "\"@@RAW@@\"" in text:
        text = text.replace("\"@@RAW@@\"", rng.choice(RAW_LITERALS), 1)
    while "\"@@DEEP@@\"" in text:
        d = rng.randrange(20, 600)
        deep = "".join(rng.choice(['[', '{"d": ']) for _ in range(d))
        deep += rng.choice(RAW_LITERALS[:6]) + "".join("]" if c == "[" else "}"
                                                       for c in reversed(deep) if c in "[{")
        text = text.replace("\"@@DEEP@@\"", deep, 1)
    if rng.random() < 0.1:
        text = rng.choice(["", " ", "\n", "\t\r\n"]) + text + rng.choice(["", "\n", " \r\n"])
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # ensure_ascii=False with a lone surrogate:
        data = text.encode("utf-8", "surrogatepass")  # what the API cannot write
        how = "surrogates in UTF-8"
    if rng.random() < 0.4:
        data, how = damage(rng, data)
    return data, how


STRAY = [b"\x00", b"\x01", b"}", b"]", b"[", b",", b":", b'"', b"\\", b"x", b"\xff", b"\xc3",
         b" ", b"\n", b"N", b"0", b"-", b"\x7f", b"\xed\xa0\x80", b"\xc0\x80",
         b"\xf4\x90\x80\x80", b"\xef\xbb\xbf"]
BAD_ESCAPES = [b"\\x41", b"\\u12G4", b"\\U0041", b"\\'", b"\\ ", b"\\u12\"", b"\\a", b"\\\n"]


def damage(rng, data):
    op = rng.randrange(13)
    pos = rng.randrange(len(data) + 1)
    if op == 0:
        return data[:pos], "truncated"
    if op == 1:
        return data[:pos] + rng.choice(STRAY) + data[pos:], "stray byte"
    if op == 2 and data:
        return data[:pos] + data[pos + 1:], "byte deleted"
    if op == 3:
        esc = [i for i in range(len(data)) if data[i:i + 1] == b"\\"]
        if esc:
            i = rng.choice(esc)
            return data[:i] + rng.choice(BAD_ESCAPES) + data[i + 2:], "bad escape"
        q = data.find(b'"')
        if q != -1:
            return data[:q + 1] + rng.choice(BAD_ESCAPES) + data[q + 1:], "bad escape"
    if op == 4:
        q = data.find(b'"')
        if q != -1:
            return data[:q + 1] + rng.choice([b"\x01", b"\x1f", b"\t", b"\n", b"\x00"]) + \
                data[q + 1:], "control character in a string"
    if op == 5:
        return b"\xef\xbb\xbf" + data, "BOM"
    if op == 6:
        e = data.rfind(b"}")
        if e > 0:
            return data[:e] + b"," + data[e:], "trailing comma"
    if op == 7:
        for a, b in ((b"NaN", rng.choice([b"nan", b"-NaN", b"NaNa"])),
                     (b"Infinity", rng.choice([b"+Infinity", b"infinity", b"Infinit"])),
                     (b"true", b"True"), (b"null", b"nul")):
            if a in data:
                return data.replace(a, b, 1), "bad literal"
    if op == 8:
        e = data.rfind(b"}")
        if e > 0:
            lit = rng.choice([b"1" + b"0" * 4300, b"-" + b"9" * 4301, b"01", b"1.", b".5",
                              b"1e", b"0x10", b"+1", b"1_000"])
            sep = b", " if data[:e].strip() not in (b"{", b"") else b""
            return data[:e] + sep + b'"lit": ' + lit + data[e:], "bad number"
    if op == 9:
        d = rng.choice([400, 1500, 5000, 9990, 12000])
        return b'{"deep": ' + b"[" * d + b"]" * d + b"}", "nesting %d" % d
    if op == 10:
        return rng.choice([b"[]", b'[{"a": 1}]', b'"text"', b"12", b"null", b"NaN", b"true",
                           b"", b"  \n", b"{}", b"[1,]", b"{'a': 1}", b"{} {}",
                           b'{"a": 1} // comment', b"\xef\xbb\xbf{}"]), "top level"
    if op == 11:
        return data + rng.choice([b"x", b"}", b" {}", b"\x00"]), "trailing garbage"
    if op == 12 and data:
        return data[:pos] + data[pos:pos + 1] * 2 + data[pos + 1:], "byte doubled"
    return data, "dump"


def driver_path():
    if os.environ.get("LIMPEZA_CACHE_DRIVER"):
        return os.environ["LIMPEZA_CACHE_DRIVER"]
    sub = os.path.join("asan", "tests") if SANITIZED else "tests"
    return os.path.join(ROOT, "build", sub, "cache_driver")


class Driver:
    """build/tests/cache_driver: the product's cache pass, one document at a time."""

    def __init__(self, workdir):
        path = driver_path()
        assert os.path.exists(path), "%s missing: make %s" % (path, os.path.relpath(path, ROOT))
        self.cache = os.path.join(workdir, "desfollow_jobs.json")
        environ = {k: v for k, v in os.environ.items()
                   if k in ("PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}
        environ.update({"LIMPEZA_ENV_FILES": "", "LIMPEZA_LOG_FILE": "",
                        "LIMPEZA_HEALTH_URL": "", "LIMPEZA_CACHE_FILE": self.cache,
                        "LIMPEZA_FORCE_CACHE": "active", "LIMPEZA_LANG": "pt",
                        "TZ": os.environ.get("TZ", "UTC")})
        self.p = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=environ)

    def run(self, data, action, force, window):
        self.p.stdin.write(b"%s %d %d %d\n" % (action.encode(), force, window, len(data)))
        self.p.stdin.write(data)
        self.p.stdin.flush()
        head = self.p.stdout.readline().split()
        assert len(head) == 7, "driver died: %r" % (head,)
        rc, rewritten, running, queued, forced, outlen, loglen = map(int, head)
        out = self.p.stdout.read(outlen)
        log = self.p.stdout.read(loglen).decode("utf-8", "replace")
        events = [json.loads(line)["event"] for line in log.splitlines() if line.strip()]
        return rc, rewritten, (running, queued, forced), out, events

    def close(self):
        self.p.stdin.close()
        assert self.p.wait(30) == 0


def expected(obj, action, force, now):
    """The jobs Python must read back, and the counts: SPEC §1.1 on the
    dict Python made of the input (so the last of duplicate keys counts)."""
    want, counts, fates = {}, [0, 0, 0], {}
    for k, v in obj.items():
        f = pyoracle.fate(v, now, force)
        fates[k] = f
        if f == "keep":
            want[k] = v
            continue
        counts[["running", "queued", "forced"].index(f)] += 1
        if action == "m":
            want[k] = dict(v, status="error", error=pyoracle.MESSAGES[f])
    return want, tuple(counts), fates


def check_one(drv, data, how, rng):
    action = rng.choice("rm")
    force = 1 if rng.random() < 0.05 else 0
    window = rng.choice([1, 2, 3, 7, 64, 4096]) if rng.random() < 0.2 else 0
    kind, obj = pyoracle.load(data)
    rc, rewritten, counts, out, events = drv.run(data, action, force, window)
    now = NOW()
    what = "%s doc (%s), action %s, force %d, window %d: %r" % (
        kind, how, action, force, window, data[:300])
    nesting = re.fullmatch(r"nesting (\d+)", how)
    if kind == "invalid" and "recursion" in obj and int(nesting.group(1)) <= MAX_DEPTH:
        # Deeper than this Python reads (3.11: about 990 levels), not than
        # the limit limpeza takes (3.12's, for the API's newer Python): read,
        # and with no job in it, left as it is.
        assert rc == 0 and rewritten == 0 and out == data, what + "\n" + str(events)
        return "dict"
    if kind == "invalid":
        assert rc == -1 and "cache_invalid" in events, what + "\n" + str(events)
        assert out == data, what
        return kind
    if kind == "other":
        assert rc == -1 and "cache_not_object" in events, what + "\n" + str(events)
        assert out == data, what
        return kind
    assert rc == 0, "%s\nPython: %r\nlimpeza: %s" % (what, obj, events)
    want, want_counts, fates = expected(obj, action, force, now)
    assert counts == want_counts, "%s\n%s != %s; fates %s" % (what, counts, want_counts, fates)
    okind, got = pyoracle.load(out)
    assert okind == "dict", "%s\nPython cannot read the output: %s\n%r" % (what, got, out[:500])
    assert pyoracle.canonical(got) == pyoracle.canonical(want), "%s\nout %r" % (what, out[:500])
    if sum(counts) == 0:
        assert rewritten == 0 and out == data, what
        return kind
    assert rewritten == 1, what
    # Byte for byte: every member left is the last of its key in the input,
    # in the same order, with the same bytes (marked jobs: all but status
    # and error).
    text_in, text_out = data.decode(), out.decode()
    ins = pyoracle.members(text_in)
    last = {k: i for i, (k, _, _) in enumerate(ins)}
    left = [m for i, m in enumerate(ins) if last[m[0]] == i and
            (fates[m[0]] == "keep" or action == "m")]
    outs = pyoracle.members(text_out)
    assert [rk for _, rk, _ in outs] == [rk for _, rk, _ in left], what
    for (k, _, rv_in), (_, _, rv_out) in zip(left, outs):
        if fates[k] == "keep":
            assert rv_out == rv_in, "%s\nmember %r: %r became %r" % (what, k, rv_in, rv_out)
        else:
            check_marked(rv_in, rv_out, pyoracle.MESSAGES[fates[k]])
    return kind


DOCS = int(os.environ.get("DIALECT_DOCS", "12000"))
with open(os.path.join(ROOT, "src", "jsonscan.h")) as _f:
    MAX_DEPTH = int(re.search(r"#define JSONSCAN_MAX_DEPTH (\d+)", _f.read()).group(1))


def test_agrees_with_python_on_generated_documents(tmp_path):
    """Acceptance: 0 disagreements with Python's json in 10,000+ documents
    (as written by json.dump in every form, and damaged), in under a
    minute: the same accept/reject, rejected and non-object files left byte
    for byte, accepted ones read back by Python as exactly the input minus
    the reaped jobs (marked ones in mark mode), kept members byte for byte."""
    work = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    workdir = tempfile.mkdtemp(prefix="limpeza-dialect-", dir=work)
    rng = random.Random(int(os.environ.get("DIALECT_SEED", "13")))
    drv = Driver(workdir)
    seen = {"dict": 0, "other": 0, "invalid": 0}
    t0 = time.monotonic()
    try:
        for _ in range(DOCS):
            data, how = rand_doc(rng, NOW())
            seen[check_one(drv, data, how, rng)] += 1
    finally:
        drv.close()
        for f in os.listdir(workdir):
            os.unlink(os.path.join(workdir, f))
        os.rmdir(workdir)
    took = time.monotonic() - t0
    print("dialect: %d documents in %.1f s: %s" % (DOCS, took, seen))
    assert DOCS >= 10000 or "DIALECT_DOCS" in os.environ
    # every kind is well represented, or the generator lost its way
    assert seen["dict"] >= DOCS // 3 and seen["invalid"] >= DOCS // 5 and \
        seen["other"] >= DOCS // 100, seen
