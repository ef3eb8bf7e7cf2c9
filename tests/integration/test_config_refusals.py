"""Settings refused at start-up (issue 23): a status word that is a finished
job's, and a setting's value in an env file that is not UTF-8."""

import os

import pytest


@pytest.mark.parametrize("name", ["LIMPEZA_RUNNING_STATUS", "LIMPEZA_QUEUED_STATUS",
                                  "LIMPEZA_ERROR_STATUS"])
def test_done_is_no_status_to_reap_by(env, name):
    """LIMPEZA_RUNNING_STATUS=done would end every finished row older than
    the TTL: every command stops with exit 2 and one line, and no row or
    cache job is touched."""
    env.store.add("finished", "done", 900)
    env.write_cache({"finished": {"status": "done", "start_time": 1}})
    before = env.read_cache()
    for args in (["once"], ["check"], ["stats"], ["run"]):
        p = env.run(*args, **{name: "done"})
        assert p.returncode == 2, (args, p.stderr)
        assert ("invalid %s 'done': 'done' is the status of a job that finished well; "
                "expected a different status\n" % name) in p.stderr, p.stderr
    assert env.store.statuses() == {"finished": "done"}
    assert env.read_cache() == before


@pytest.mark.parametrize("name,value,why", [
    ("LIMPEZA_RUNNING_STATUS", "done ", "without leading or trailing spaces"),
    ("LIMPEZA_QUEUED_STATUS", "running ", "without leading or trailing spaces"),
    ("LIMPEZA_QUEUED_STATUS", " queued", "without leading or trailing spaces"),
    ("LIMPEZA_RUNNING_STATUS", "DONE", "'done' is the status of a job that finished well"),
    ("LIMPEZA_QUEUED_STATUS", "Running", "LIMPEZA_RUNNING_STATUS is 'running' too"),
])
def test_a_status_word_equal_under_the_columns_rules_is_refused(env, name, value, why):
    """A char(n) status column ignores trailing spaces and a
    case-insensitive collation ignores case: 'done ' or 'DONE' as the
    running status would end every finished row there, 'running ' as the
    queued status a live running job (an outside review saw both on
    char(20)). Refused at start-up like the words themselves."""
    env.store.add("finished", "done", 900)
    env.store.add("live", "running", 30)
    for args in (["once"], ["check"]):
        p = env.run(*args, **{name: value})
        assert p.returncode == 2, (args, p.stderr)
        assert "invalid %s '%s'" % (name, value) in p.stderr and why in p.stderr, p.stderr
    assert env.store.statuses() == {"finished": "done", "live": "running"}


def test_env_file_value_not_utf8_is_refused(env):
    """A DATABASE_URL in the API's env file written in Latin-1 was dropped,
    so the database step was skipped as "not set". Now limpeza stops
    (exit 2), naming the file, the line and the setting, not the value;
    the same file in UTF-8 connects."""
    path = os.path.join(env.tmp, "backend.env")
    with open(path, "wb") as f:
        f.write(b"# Configura\xe7\xf5es\nSECRET_KEY=x\nDATABASE_URL=sqlite:///"
                + env.tmp.encode() + b"/jobs-s\xe3o.db\n")
    for args in (["once"], ["check"], ["stats"], ["run"]):
        p = env.run(*args, DATABASE_URL=None, LIMPEZA_ENV_FILES=path)
        assert p.returncode == 2, (args, p.stderr)
        assert ("env file %s, line 3: the value of DATABASE_URL is not UTF-8 text "
                "(not shown); write it in UTF-8\n" % path) in p.stderr, p.stderr
        assert "jobs-s" not in p.stderr
    p = env.run("check", "--env-file", path, DATABASE_URL=None, LIMPEZA_ENV_FILES="")
    assert p.returncode == 2 and "line 3: the value of DATABASE_URL" in p.stderr, p.stderr
    url = env.store.url.replace("jobs.db", "jobs-são.db")
    with open(path, "wb") as f:
        f.write(("# Configurações\nDATABASE_URL=%s\n" % url).encode())
    p = env.run("check", DATABASE_URL=None, LIMPEZA_ENV_FILES=path)
    assert "DATABASE_URL=%s\n" % url in p.stdout, p.stdout + p.stderr
