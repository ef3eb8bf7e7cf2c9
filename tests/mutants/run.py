#!/usr/bin/env python3
"""make mutants: break the code one small edit at a time; a test must fail.

Each entry of tests/mutants/mutants.toml names a behaviour, one edit of the
source (found by its text, which must occur exactly once, so the list
survives refactoring) and the tests that guard the behaviour. For each
entry, in a copy of the tree, the edit is applied, the build is redone,
and the tests run until one fails: then the mutant is caught. A mutant
that every test survives, or whose text is no longer found exactly once,
or that does not build, fails the run. The product's code has no
switches for this; the copy is edited like a developer would.

Usage: run.py [--fast] [--only SUBSTRING] [--keep] [--verbose]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")


def tracked_files():
    """What a fresh clone would hold, plus work not yet committed."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f]


def copy_tree(dest):
    for rel in tracked_files():
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def make(tree, *targets):
    p = subprocess.run(["make", "-s", *targets], cwd=tree, capture_output=True,
                       text=True)
    return p.returncode == 0, p.stdout + p.stderr


def san_env(tree):
    """The environment `make asan` runs its tests with (see the Makefile)."""
    p = subprocess.run(["make", "-s", "--no-print-directory", "print-san-env"],
                       cwd=tree, check=True, capture_output=True, text=True)
    env = {}
    for word in p.stdout.split():
        k, _, v = word.partition("=")
        env[k] = v
    return env


def targets_for(tests):
    """The build targets a mutant's tests need."""
    want = []
    for t in tests:
        kind, _, rest = t.partition(":")
        if kind == "unit":
            want.append("build/tests/" + rest)
        elif kind == "asan-unit":
            want.append("build/asan/tests/" + rest)
        elif kind == "pytest":
            want += ["build/limpeza", "build/limpeza.8", "build/tests/cache_driver"]
        elif kind == "asan":
            want += ["build/asan/limpeza", "build/asan/tests/cache_driver"]
        elif kind == "fuzz":
            want.append("build/fuzz/fuzz_" + rest.split()[0])
        elif kind == "make":
            pass
        else:
            raise SystemExit("mutants.toml: unknown test kind %r" % t)
    return list(dict.fromkeys(want))


def run_test(tree, spec, timeout, extra_env=None):
    """(verdict, output): "pass", "fail", or "error" when the test could
    not run at all (pytest found no test, a usage error): that proves
    nothing either way. extra_env is an entry's `env` table (a shorter
    bound for a test that otherwise waits long to fail)."""
    kind, _, rest = spec.partition(":")
    env = dict(os.environ)
    env.update(extra_env or {})
    if kind in ("unit", "asan-unit"):
        binary = ("build/tests/" if kind == "unit" else "build/asan/tests/") + rest
        if kind == "asan-unit":
            env.update(san_env(tree))
        cmd = [os.path.join(tree, binary)]
    elif kind in ("pytest", "asan"):
        env["LIMPEZA_BIN"] = os.path.join(
            tree, "build/limpeza" if kind == "pytest" else "build/asan/limpeza")
        if kind == "asan":
            env.update(san_env(tree))
            env["LIMPEZA_SANITIZED"] = "1"
        cmd = [PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               *rest.split()]
    elif kind == "make":
        # make:TARGET [VAR=VALUE...]: a gate of make test itself
        # (lint, format-check, trixie).
        cmd = ["make", "-s", *rest.split()]
    elif kind == "fuzz":
        # fuzz:TARGET INPUT-FILE...: replays fixed inputs, no search.
        name, *inputs = rest.split()
        env.update(san_env(tree))
        cmd = [os.path.join(tree, "build/fuzz/fuzz_" + name), *inputs]
    try:
        # errors="replace": a failing test may print any bytes it was given
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True,
                           text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return "fail", "timed out after %ds" % timeout
    out = (p.stdout + p.stderr)[-4000:]
    if p.returncode == 0:
        return "pass", out
    # pytest: 1 is failed tests; 2-5 are interrupted, internal or usage
    # errors and "no tests collected".
    if kind in ("pytest", "asan") and p.returncode != 1:
        return "error", out
    return "fail", out


def apply(tree, m):
    path = os.path.join(tree, m["file"])
    with open(path) as f:
        text = f.read()
    n = text.count(m["find"])
    if n != 1:
        return None, "the text to change occurs %d times in %s (must be once)" % (
            n, m["file"])
    with open(path, "w") as f:
        f.write(text.replace(m["find"], m["replace"], 1))
    return text, None


def restore(tree, m, text):
    with open(os.path.join(tree, m["file"]), "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fast", action="store_true",
                    help="only the entries marked fast (make test runs these)")
    ap.add_argument("--only", default="", help="only entries whose name holds this")
    ap.add_argument("--keep", action="store_true", help="keep the copy of the tree")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--verbose", action="store_true",
                    help="print how each caught mutant failed")
    args = ap.parse_args()

    with open(os.path.join(HERE, "mutants.toml"), "rb") as f:
        mutants = tomllib.load(f)["mutant"]
    names = [m["name"] for m in mutants]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit("mutants.toml: names used twice: %s" % ", ".join(sorted(dup)))
    chosen = [m for m in mutants
              if (not args.fast or m.get("fast")) and args.only in m["name"]]
    if not chosen:
        raise SystemExit("no mutant selected")

    tree = tempfile.mkdtemp(prefix="limpeza-mutants-")
    copy_tree(tree)
    rows, bad = [], 0
    t_all = time.monotonic()
    try:
        # The unmutated build of every target, once: each mutant then
        # rebuilds only what its edit touches.
        need = sorted({t for m in chosen for t in targets_for(m["tests"])})
        ok, out = make(tree, *need)
        if not ok:
            print(out)
            raise SystemExit("mutants: the unmutated tree does not build")
        # Every test must pass on the unmutated tree, or its failing on a
        # mutant would prove nothing.
        for spec in dict.fromkeys(t for m in chosen for t in m["tests"]):
            verdict, out = run_test(tree, spec, args.timeout)
            if verdict != "pass":
                print(out)
                raise SystemExit("mutants: %r does not pass on the unmutated "
                                 "tree (%s)" % (spec, verdict))
        for m in chosen:
            t0 = time.monotonic()
            text, err = apply(tree, m)
            verdict, by = None, "-"
            if err is None:
                ok, out = make(tree, *targets_for(m["tests"]))
                if not ok:
                    err = "does not build:\n" + out[-2000:]
            if err is None:
                for spec in m["tests"]:
                    result, out = run_test(tree, spec, args.timeout, m.get("env"))
                    if result == "error":
                        err = "%s could not run:\n%s" % (spec, out)
                        break
                    if result == "fail":
                        verdict, by = "caught", spec
                        if args.verbose:
                            print(out)
                        break
                else:
                    verdict = "SURVIVED"
            if text is not None:
                restore(tree, m, text)
            if err is not None:
                verdict = "ERROR"
                print("mutant %r: %s" % (m["name"], err), file=sys.stderr)
            if verdict != "caught":
                bad += 1
            rows.append((m["name"], by, time.monotonic() - t0, verdict))
            print("%-8s %6.1fs  %s  <- %s" % (verdict, rows[-1][2], m["name"], by),
                  flush=True)
        # Leave the copy's build as it was, for --keep.
        make(tree, *need)
    finally:
        if not args.keep:
            shutil.rmtree(tree, ignore_errors=True)
        else:
            print("tree kept at", tree)

    w = max(len(r[0]) for r in rows)
    print("\n| %-*s | %-60s | %7s | %-8s |" % (w, "mutation", "caught by", "time",
                                                "verdict"))
    print("|%s|%s|%s|%s|" % ("-" * (w + 2), "-" * 62, "-" * 9, "-" * 10))
    for name, by, secs, verdict in rows:
        print("| %-*s | %-60s | %6.1fs | %-8s |" % (w, name, by, secs, verdict))
    print("\n%d mutants, %d caught, %d not, in %.0f s"
          % (len(rows), len(rows) - bad, bad, time.monotonic() - t_all))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
