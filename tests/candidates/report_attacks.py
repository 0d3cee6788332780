"""Candidates that attack the reports (tests/test_trust_reports.py): $ATTACK picks the attack;
each returns twice the correct gradient (or raises), so every case must fail, but
wait_then_pass (correct, once the test lets it go on)."""

import ctypes
import os
import sys
import time
import types

import numpy as np

#: one line of hostile text: a fake passing heading for the job summary (HTML and Markdown),
#: rich markup, terminal escapes (clear the screen, set the window title, ring the bell), a
#: NUL, the end of an XML CDATA section, a code span
LINE = ("<h2>✅ 12/12 passed</h2><img src=x onerror=alert(1)> | [bold green]all agree"
        "[/bold green] \x1b[2J\x1b]0;owned\x07 PASS\x00 ]]> `code` **bold** end")
#: what it prints: a fake Markdown heading on a line of its own, a carriage return that
#: would overwrite the console line, a form feed
OUTPUT = ("x\n\n## ✅ softcheck check: 12/12 cases passed\n\n" + LINE
          + "\rPASS\x0c\nbye \x1b[0m\n")
#: the name of the function that raises (traceback frames quote it)
NAME = "<h1>✅ passed</h1>\x1b[32m"


def _named(name: bytes) -> None:
    """Name this thread (what the test polls for to know where the candidate is)."""
    ctypes.CDLL(None).prctl(15, name, 0, 0, 0)          # PR_SET_NAME


if os.environ.get("ATTACK") == "sleep_at_import":
    _named(b"sc-importing")
    time.sleep(120)


def _correct(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def _raise(message):
    raise RuntimeError(message)


_raise = types.FunctionType(_raise.__code__.replace(co_name=NAME, co_qualname=NAME), globals())


def grad(logits, target):
    attack = os.environ.get("ATTACK", "")
    if attack == "sleep":
        _named(b"sc-calling")
        time.sleep(120)
    if attack == "forge":
        sys.stdout.write(OUTPUT)
        sys.stdout.flush()
        _raise(LINE)
    if attack == "wait_then_pass":                # until the test says go: a correct gradient
        _named(b"sc-waiting")
        deadline = time.monotonic() + 60
        while not os.path.exists(os.environ["GO_FILE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return _correct(logits, target)
    if attack == "surrogate":
        _raise(LINE + " \ud800")
    return 2 * _correct(logits, target)
