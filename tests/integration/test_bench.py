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
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--skip-cache", "--skip-month",
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


@pytest.mark.skipif(SANITIZED, reason="the bench measures the release build")
def test_month_of_scans_prints_its_table():
    """`make bench-month` on two short days: the API's writes beside the real
    daemon, and the old cleaner's file built directly; every row and the
    verdict are printed (no figure judged), and limpeza's retention did
    remove finished jobs from the API's file while it ran."""
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--month", "--days", "2",
         "--scans-per-day", "12", "--day-seconds", "5", "--month-reps", "1"],
        capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout
    for day in (1, 2):
        assert re.search(r"^\| %d \| old cleaner \| [\d.]+ [kM]B \| [\d.]+ ms \| [\d.]+ ms \|$"
                         % day, text, re.M), text
        assert re.search(r"^\| %d \| limpeza \| [\d.]+ [kM]B \| [\d.]+ ms \| [\d.]+ ms \|$"
                         % day, text, re.M), text
    assert re.search(r"^\| 2 \| old ÷ limpeza \| \d+× \| \d+× \| \d+× \|$", text, re.M), text
    assert re.search(r"the API's poll on day 2 costs [\d.]+× its day-1 cost "
                     r"\(target ≤ 1\.5×\): (met|\*\*not met\*\*)", text), text
    m = re.search(r"72 real set_job writes.* (\d+) finished jobs removed in (\d+) passes, "
                  r"(\d+) jobs left at the end; \d+ passes found the file half-written.*, 0 other error lines", text)
    assert m and int(m.group(1)) > 0, text
