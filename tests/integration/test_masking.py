"""HTTP URLs' secrets (issue 23): the health URL's and the webhook's user and
password, however they are spelt, and the webhook's path, are shown by no
command, no log line and no error line; a URL that libcurl reads otherwise
than it is written is refused at start-up with a line that says how to
write it."""

import base64
import re
from urllib.parse import unquote

import pytest

# (user, password as written in the URL); None: no password, the token is
# the user name (the Sentry DSN shape)
USERINFO = [
    ("apiUserQ7", "s3cr%3Fet-Qz"),  # '?'
    ("hookUserQ7", "tok%23en123-Qz"),  # '#'
    ("apiUserQ7", "pa%2Fss%40wd-Qz"),  # '/' and '@'
    ("0123456789abcdefSECRET", None),
]
HOOK_PATH = "/hooks/T0PATHSECRET/B0PATHTOKEN"


def userinfo(user, pw):
    return user if pw is None else "%s:%s" % (user, pw)


def forbidden_words(user, pw):
    words = {user}
    if pw is not None:
        words |= {pw, unquote(pw)}
        words |= {w for w in re.split(r"[^A-Za-z0-9]+", unquote(pw)) if len(w) >= 4}
    return words | {"T0PATHSECRET", "B0PATHTOKEN"}


@pytest.mark.parametrize("user,pw", USERINFO, ids=["question", "hash", "slash-at", "token-user"])
def test_http_userinfo_never_shown(env, health, daemons, user, pw):
    """libcurl sends the user and password as its parser reads them (the
    server sees them in the Authorization header), and no command's output,
    no log line and no error line shows any of it, nor the webhook's path."""
    auths = []
    answer = health.answer

    def recording(h):
        auths.append(h.headers.get("Authorization"))
        answer(h)

    health.answer = recording
    port = health.server.server_address[1]
    hurl = "http://%s@127.0.0.1:%d/api/health" % (userinfo(user, pw), port)
    hook = "http://%s@127.0.0.1:%d%s" % (userinfo(user, pw), port, HOOK_PATH)
    down = "http://%s@127.0.0.1:1/api/health" % userinfo(user, pw)
    words = forbidden_words(user, pw)
    outputs = []

    def run(*args, **over):
        p = env.run(*args, DATABASE_URL=None, **over)
        outputs.append((args, p.stdout + p.stderr))
        return p

    health.set_json({"status": "healthy", "jobs_active": 0})
    env.write_cache({"old": {"status": "running", "start_time": 1}})
    urls = dict(LIMPEZA_HEALTH_URL=hurl, LIMPEZA_ALERT_WEBHOOK=hook)
    p = run("check", **urls)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "LIMPEZA_HEALTH_URL=http://***@127.0.0.1:%d/api/health\n" % port in p.stdout
    assert "LIMPEZA_ALERT_WEBHOOK=http://***@127.0.0.1:%d/...\n" % port in p.stdout
    for args in (["check", "--health"], ["stats"], ["stats", "--json"],
                 ["stats", "--health"], ["once"], ["once", "--dry-run"]):
        p = run(*args, **urls)
        assert p.returncode == 0, (args, p.stdout + p.stderr)
    # what libcurl sent is what its parser read: the decoded user:password
    want = "Basic " + base64.b64encode(
        ("%s:%s" % (user, unquote(pw) if pw is not None else "")).encode()).decode()
    assert auths and set(auths) == {want}, auths
    # a forced cleanup posts an alert to the webhook (the double refuses
    # the POST): the error line shows no secret
    health.set_json({"status": "healthy", "jobs_active": 99})
    p = run("once", "--force", **urls)
    assert "Alerta" in p.stderr, p.stderr
    # a health URL that cannot be reached: the error lines
    p = run("check", "--health", LIMPEZA_HEALTH_URL=down, LIMPEZA_ALERT_WEBHOOK=hook)
    assert p.returncode == 1
    assert "FAIL: health URL http://***@127.0.0.1:1/api/health" in p.stdout, p.stdout
    p = run("once", LIMPEZA_HEALTH_URL=down, LIMPEZA_ALERT_WEBHOOK=hook)
    assert "Erro ao consultar API Health" in p.stderr, p.stderr
    # the daemon's start-up line and its cycles
    d = daemons(env, DATABASE_URL=None, LIMPEZA_INTERVAL="200ms", **urls)
    text = d.wait_for("Ciclo 2 ")
    assert "| Health: http://***@127.0.0.1:%d/api/health" % port in text, text[-2000:]
    assert d.stop() == 0
    outputs.append(("run", d.stderr()))
    outputs.append(("log file", env.log_text()))
    for what, text in outputs:
        for w in words:
            assert w not in text, (what, w, text[-3000:])


@pytest.mark.parametrize("url", [
    "http://user:s3cr?et@127.0.0.1:1/api/health",
    "http://user:s3cr#et@127.0.0.1:1/api/health",
    "http://user:s3cr/et@127.0.0.1:1/api/health",
    "http://user:12/s3cret@127.0.0.1:1/api/health",
    "http://user:s3c@ret@127.0.0.1:1/api/health",
    "https://s3cr?et@o1.ingest.example.com/42",
], ids=["question", "hash", "slash", "port-slash", "at", "token-user"])
def test_http_url_read_otherwise_refused(env, url):
    """A '?', '#', '/' or '@' left raw in a user or password: libcurl would
    send part of it as the host, port, path or query. Every command stops
    with exit 2 and one line saying how to write it, and shows only the
    scheme, for the health URL and the webhook alike."""
    scheme = url.split(":", 1)[0]
    for name in ("LIMPEZA_HEALTH_URL", "LIMPEZA_ALERT_WEBHOOK"):
        for args in (["check"], ["stats"], ["once"], ["run"]):
            p = env.run(*args, DATABASE_URL=None, **{name: url})
            out = p.stdout + p.stderr + env.log_text()
            assert p.returncode == 2, (args, out)
            assert "invalid %s '%s://***' (from the environment): expected a URL " \
                "libcurl reads as written" % (name, scheme) in p.stderr, p.stderr
            assert "percent-encoded (%40, %2F, %3F, %23, %3A)" in p.stderr
            for part in ("s3c", "et@", "12/", "ret@"):
                assert part not in out, (args, part, out)
