"""Candidates that attack the reports (tests/test_trust_reports.py): $ATTACK picks the attack;
each returns twice the correct gradient, so every case must fail."""

import os
import sys
import time

import numpy as np

#: one line of hostile text: a fake passing heading for the job summary (HTML and Markdown),
#: rich markup, terminal escapes (clear the screen, set the window title, ring the bell), a
#: NUL, the end of an XML CDATA section, a code span
LINE = ("<h2>✅ 12/12 passed</h2><img src=x onerror=alert(1)> | [bold green]all agree"
        "[/bold green] \x1b[2J\x1b]0;owned\x07 PASS\x00 ]]> `code` **bold** end")
#: what it prints: a fake Markdown heading on a line of its own, a carriage return that
#: would overwrite the console line, a form feed
OUTPUT = "x\n\n## ✅ softcheck check: 12/12 cases passed\n\n" + LINE + "\rPASS\x0c\n"


def _correct(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def grad(logits, target):
    attack = os.environ.get("ATTACK", "")
    if attack == "sleep":
        time.sleep(120)
    if attack == "forge":
        sys.stdout.write(OUTPUT)
        sys.stdout.flush()
        raise RuntimeError(LINE + "\ud800")
    return 2 * _correct(logits, target)
