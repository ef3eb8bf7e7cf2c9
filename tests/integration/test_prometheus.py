"""A live /metrics against Prometheus's own tools and the shipped alerting rules.

The rules' unit tests are `make prom-test` (tests/prometheus/); this checks
the daemon's side: promtool's linter finds nothing in a real scrape, and
every metric the rules use is one the daemon shows.
"""

import os
import re
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, SLOW, utc
from pgcluster import free_port
from test_observability import scrape

RULES = os.path.join(ROOT, "etc", "prometheus", "limpeza-rules.yml")


def sample_names(text):
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_live_scrape_lints_clean_and_shows_what_the_rules_use(env, health, daemons):
    # A cycle that reaps (a stale row), fails a step (a cache file that is
    # not JSON) and hears the API: every family is shown but limpeza_leader
    # (PostgreSQL's leader election only; printed as limpeza_store_up is).
    env.store.add("db-run", "running", 900)
    env.store.add("db-q", "queued", 900)
    env.write_cache('{"c": {"status": "running"')
    health.set_json({"status": "healthy", "jobs_active": 2})
    port = free_port()
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_ERROR_BACKOFF="200ms",
                LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port, LIMPEZA_HEALTH_URL=health.url)
    d.wait_for("Ciclo 3 ")  # cycles 1 and 2 are over, metrics included
    status, text = scrape(port)
    assert status == 200
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60 * SLOW)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", ""), \
        "promtool check metrics (exit %d): %s\non:\n%s" % (p.returncode, p.stdout + p.stderr, text)

    # Every limpeza_* metric the alerting rules use is in that scrape.
    with open(RULES) as f:
        rules = f.read()
    used = set(re.findall(r"\blimpeza_[a-z_]+\b", rules))
    assert used, "no limpeza metric found in %s" % RULES
    names = sample_names(text)
    assert used <= names, "used by the rules but not shown: %s" % sorted(used - names)

    # And the scrape had every family, so the linter saw them all.
    assert {"limpeza_jobs_reaped_total", "limpeza_cycles_total",
            "limpeza_step_failures_total", "limpeza_cycle_duration_seconds_bucket",
            "limpeza_cycle_duration_seconds_sum", "limpeza_cycle_duration_seconds_count",
            "limpeza_last_success_timestamp_seconds", "limpeza_api_jobs_active",
            "limpeza_store_up", "limpeza_build_info"} <= names, names



# Two status words that share their first 20 bytes, each with the characters
# a label value must escape that a setting may hold (backslash, double
# quote: a line feed is refused in a setting), and one that is not ASCII.
RUNNING = 'em "andamento" \\ agora ç R'
QUEUED = 'em "andamento" \\ agora ç Q'


def test_label_values_are_escaped_and_no_two_states_share_a_series(env, health, daemons):
    # A forced cleanup ends one running and one queued cache job: the same
    # store and reason, so only the state tells the two series apart.
    now = time.time()
    env.write_cache({"c-run": {"status": RUNNING, "start_time": now},
                     "c-q": {"status": QUEUED, "created_at": now}})
    health.set_json({"status": "healthy", "jobs_active": 9})
    port = free_port()
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port,
                LIMPEZA_HEALTH_URL=health.url, LIMPEZA_FORCE_THRESHOLD="1",
                LIMPEZA_FORCE_CACHE="active", LIMPEZA_RUNNING_STATUS=RUNNING,
                LIMPEZA_QUEUED_STATUS=QUEUED)
    d.wait_for("Ciclo 3 ")  # cycles 1 and 2 are over, metrics included
    status, text = scrape(port)
    assert status == 200
    # Prometheus's own parser (promtool) reads the scrape ...
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60 * SLOW)
    assert p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower(), \
        "promtool check metrics (exit %d): %s\non:\n%s" % (p.returncode, p.stdout + p.stderr, text)
    # ... and so does prometheus_client's, which gives back each word whole.
    reaped = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "limpeza_jobs_reaped_total":
                key = (s.labels["store"], s.labels["state"], s.labels["reason"])
                assert key not in reaped, "two series with the labels %r:\n%s" % (key, text)
                reaped[key] = s.value
    assert reaped.get(("cache", RUNNING, "forced")) == 1, text
    assert reaped.get(("cache", QUEUED, "forced")) == 1, text


def test_a_state_that_is_not_utf8_is_shown_as_the_log_shows_it(env, daemons):
    # A status word may hold any bytes (an environment value): a stale row
    # in it is reaped, and its label is valid UTF-8, the byte as \xNN.
    word = b"em \xff andamento \\ agora"
    with env.store.connect() as db:
        db.execute("INSERT INTO scans (username, job_id, status, created_at, updated_at)"
                   " VALUES ('u', 'r1', CAST(? AS TEXT), ?, ?)",
                   (word, utc(-900), utc(-900)))
    port = free_port()
    d = daemons(env, LIMPEZA_INTERVAL="200ms", LIMPEZA_METRICS_ADDR="127.0.0.1:%d" % port,
                LIMPEZA_RUNNING_STATUS=os.fsdecode(word))
    d.wait_for("Ciclo 3 ")
    status, text = scrape(port)
    assert status == 200
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60 * SLOW)
    assert p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower(), \
        "promtool check metrics (exit %d): %s\non:\n%s" % (p.returncode, p.stdout + p.stderr, text)
    states = [s.labels["state"] for fam in text_string_to_metric_families(text)
              for s in fam.samples if s.name == "limpeza_jobs_reaped_total"]
    assert states == ["em \\xff andamento \\ agora"], text
