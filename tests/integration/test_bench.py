"""`make bench` keeps working: its database and daemon parts on a small table.

No figure is judged here (the bench prints them; timing belongs there, not
in tests): this only shows that every row is still measured and printed.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SANITIZED


@pytest.mark.skipif(SANITIZED, reason="the bench measures the release build")
def test_bench_prints_every_database_and_daemon_row():
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--skip-cache",
         "--rows", "20000", "--stale", "3000", "--cycles", "3"],
        capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    text = "\n".join(table)
    for label in ("no index", "indexes from limpeza check"):
        assert "DB step, 20000 rows, 3000 stale, %s: one `once` process" % label in text
        assert "DB step, 20000 rows, 3000 stale, %s: daemon cycle" % label in text
        assert "next cycle, nothing to reap (stats included), %s: daemon cycle" % label in text
    assert re.search(r"reaping alone, 3000 stale, .*\| \d+\.\d+ s \| \d+\.\d+ s \|", text)
    # limpeza's own statement was found in the server's log and re-run
    m = re.search(r"reaping statements alone, 3000 stale.*per 1,000 rows: "
                  r"(\d+\.\d) ms against (\d+\.\d) ms", text)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, text
    assert re.search(r"longest batch held its row locks \d+ ms", text)
    assert re.search(r"idle daemon after 3 cycles .*\| RSS \d+\.\d+ MiB, Private_Dirty "
                     r"\d+\.\d+ MiB \| RSS", text)
