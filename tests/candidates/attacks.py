"""One candidate that attacks the process running it as $ATTACK says, on call number
$ATTACK_ON_CALL (default 1) of its process and every later one (tests/test_isolation.py)."""

import atexit
import ctypes
import os
import re
import signal
import sys
import threading
import time

import numpy as np

CALLS = 0
_BUFFER = None


def _correct(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


class _ExitOnArray:
    def __init__(self, g):
        self.g = g

    def __array__(self, *a, **k):
        raise SystemExit(0)


class _ExitOnStr(Exception):
    def __str__(self):
        raise SystemExit(0)


class _Forever:
    def __array__(self, *a, **k):
        while True:
            pass


def _forge():
    """Everything a candidate sharing softcheck's process could patch to fake a pass."""
    import softcheck.engine.results as results
    import softcheck.judge.compare as compare
    import softcheck.judge.tolerances as tolerances

    np.abs = lambda x: 0 * np.asarray(x)
    results.Report.passed = property(lambda self: True)
    results.CaseResult.__init__.__defaults__  # noqa: B018 - touched, not needed
    tolerances.K_ABS = 1e300
    compare.compare = lambda *a, **k: None
    sys.exit = lambda *a, **k: None
    atexit.register(lambda: os._exit(0))
    try:
        import jax

        jax.config.update("jax_enable_x64", False)
    except ImportError:
        pass
    np.seterr(all="ignore")


def attack(logits, target):
    global CALLS, _BUFFER
    CALLS += 1
    how = os.environ.get("ATTACK", "")
    g = _correct(logits, target)
    if CALLS < int(os.environ.get("ATTACK_ON_CALL", "1")):
        return g
    if how == "exit0":
        os._exit(0)
    if how == "exit1":
        os._exit(1)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segv":
        ctypes.string_at(0)
    if how == "abort":
        os.abort()
    if how == "alarm":
        signal.alarm(1)
        time.sleep(30)
    if how == "loop":
        while True:
            pass
    if how == "gil":                        # C code holding the GIL
        sum(range(10**18))
    if how == "regex":                      # catastrophic backtracking, in C, GIL held
        re.match(r"(a+)+$", "a" * 64 + "b")
    if how == "array_forever":
        return _Forever()
    if how == "thread":                     # a non-daemon thread that never ends
        threading.Thread(target=lambda: time.sleep(10**6)).start()
    if how == "fork_writer":                # a child that outlives the call, then forges the report
        if os.fork() == 0:
            os.setsid()
            time.sleep(float(os.environ.get("ATTACK_DELAY", "3")))
            with open(os.environ["ATTACK_REPORT"], "w") as f:
                f.write('{"passed": true, "forged": true}')
            os._exit(0)
    if how == "print":
        os.write(1, b"fd1 text from C-level code\n")
        print("python print")
    if how == "forge":                      # patch the judge, and return twice the gradient
        _forge()
        return 2 * g
    if how == "closefds":                   # daemon-style: closes every inherited fd, lives on
        os.closerange(3, 1024)
        time.sleep(30)
    if how == "chdir":
        os.chdir("/")
    if how == "sysexit_array":
        return _ExitOnArray(g)
    if how == "sysexit_str":
        raise _ExitOnStr()
    if how == "nondet":
        return g + np.random.default_rng().normal(0, 1e-3, g.shape)
    if how == "alias":                      # one buffer returned by every call, changed later
        if _BUFFER is None or _BUFFER.shape != g.shape:
            _BUFFER = np.zeros_like(g)
        _BUFFER[...] = g * (1 + CALLS * 1e-3)
        return _BUFFER
    return g


def wrong(logits, target):
    """Twice the gradient: the plainly wrong candidate a forged verdict would hide."""
    return 2 * _correct(logits, target)
