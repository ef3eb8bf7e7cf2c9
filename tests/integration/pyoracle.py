"""Python as the oracle for the cache file: how the API reads it, and SPEC §1.1.

Nothing here is limpeza's logic: the file is read the way the API's
load_jobs() reads it (open(path, 'r') + json.load), member spans come from
Python's own JSON scanner, and a job's fate follows SPEC §1.1's rules as
written there.
"""

import io
import json
import math
import re
from datetime import datetime
from json import decoder as _decoder

RUNNING_TTL, QUEUED_TTL = 180.0, 120.0
MESSAGES = {  # log.c's default Portuguese messages, as SPEC §1.2 words them
    "running": "Job órfão - mais de 3 minutos",
    "queued": "Job queued expirado - mais de 2 minutos",
    "forced": "Limpeza forçada - excesso de jobs ativos",
}

_D = json.JSONDecoder()
_WS = " \t\n\r"


def load(data):
    """What the API's load_jobs() gets from these bytes: ('dict', obj),
    ('other', obj) for valid JSON that is not an object, or ('invalid', why).
    The API opens the file in text mode (UTF-8, universal newlines)."""
    try:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digits
        return "invalid", str(e)
    return ("dict" if isinstance(obj, dict) else "other"), obj


def canonical(obj):
    """A text that is equal for equal JSON values: NaN equals NaN here,
    key order does not count."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True)


def _skip(text, i):
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def members(text):
    """The members of the JSON object in text, by Python's own scanner, as
    (key, raw key text, raw value text) in file order, duplicates included."""
    i = _skip(text, 0)
    if text[i] != "{":
        raise ValueError("not an object")
    i = _skip(text, i + 1)
    out = []
    if text[i] == "}":
        return out
    while True:
        ks = i
        key, i = _decoder.scanstring(text, i + 1)
        ke = i
        i = _skip(text, i)
        if text[i] != ":":
            raise ValueError("':' expected at %d" % i)
        i = _skip(text, i + 1)
        vs = i
        _, i = _D.raw_decode(text, i)
        out.append((key, text[ks:ke], text[vs:i]))
        i = _skip(text, i)
        if text[i] == "}":
            return out
        if text[i] != ",":
            raise ValueError("',' expected at %d" % i)
        i = _skip(text, i + 1)


_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?\Z")


def job_time(v):
    """SPEC §1.1: epoch seconds (int or float) or an ISO-8601 string, one
    without a zone in local time (in the hour a summer time ends, the later
    of the two instants: never older than it is); None when missing or
    invalid (before 2001-09-09, i.e. 1e9 s, not finite, past year 5000)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        try:
            t = float(v)
        except OverflowError:
            return None
    elif isinstance(v, str):
        if _DECIMAL.match(v):
            t = float(v)
        else:
            try:
                d = datetime.fromisoformat(v)
            except ValueError:
                return None
            if d.tzinfo is None:  # naive: the host's local time
                t = max(d.replace(fold=0).timestamp(), d.replace(fold=1).timestamp())
            else:
                t = d.timestamp()
    else:
        return None
    if not math.isfinite(t) or t < 1e9 or t > 1e11:
        return None
    return t


def fate(job, now, force=False):
    """'keep', 'running', 'queued' or 'forced' for one member's value, by
    SPEC §1.1 (a job without a usable time is new to a fresh limpeza: kept)."""
    if not isinstance(job, dict):
        return "keep"
    status = job.get("status")
    if status not in ("running", "queued"):
        return "keep"
    if force:
        return "forced"
    t = job_time(job.get("start_time"))
    if t is None and status == "queued":
        t = job_time(job.get("created_at"))
    if t is None:
        return "keep"
    ttl = RUNNING_TTL if status == "running" else QUEUED_TTL
    return status if now - t > ttl else "keep"
