"""Candidates that attack the process running them, one way each (tests/test_worker.py).

``dies`` and ``slow`` pick their behaviour from ``logits[0, 0]`` so that one worker can be
killed by one call and serve the next; paths come from $SOFTCHECK_TEST_DIR.
"""

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

CALLS = 0


def correct(logits, target, **kw):
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)


def dtype_name(logits, target):
    """The gradient, plus proof of what arrived: prints the dtype names (its files are
    read-only in the sandbox)."""
    print(f"{logits.dtype.name} {logits.flags.writeable} {target.dtype.name}")
    return correct(logits.astype(np.float32), target).astype(logits.dtype)


def prints(logits, target):
    print("python stdout")
    print("python stderr", file=sys.stderr)
    os.write(1, b"fd1 write\n")
    os.write(2, b"fd2 write\n")
    subprocess.run(["echo", "child process"], check=True)
    ctypes.CDLL(None).puts(b"C puts")
    return correct(logits, target)


def prints_a_lot(logits, target):
    os.write(1, b"x" * 10000)
    return correct(logits, target)


def dies(logits, target):
    how = int(logits[0, 0])
    if how == 1:
        os._exit(0)
    if how == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if how == 3:
        ctypes.string_at(0)
    if how == 4:
        os.abort()
    if how == 5:
        signal.alarm(1)
        time.sleep(30)
    return correct(logits, target)


class _Forever:
    def __array__(self, *a, **k):
        while True:
            pass


def slow(logits, target):
    how = int(logits[0, 0])
    if how == 1:
        while True:
            pass
    if how == 2:
        sum(range(10**18))
    if how == 3:
        return _Forever()
    if how == 4:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass
    return correct(logits, target)


class _ExitOnArray:
    def __array__(self, *a, **k):
        raise SystemExit(0)


class _ExitOnStr(Exception):
    def __str__(self):
        raise SystemExit(0)


def exits(logits, target):
    how = int(logits[0, 0])
    if how == 1:
        raise SystemExit(0)
    if how == 2:
        return _ExitOnArray()
    if how == 3:
        raise _ExitOnStr()
    if how == 4:
        raise KeyboardInterrupt
    return correct(logits, target)


def escapes(logits, target):
    """A thread that never ends, a setsid'd child and a double-forked grandchild that sleep 60 s
    then write a file; their pids (as the candidate sees them: inside its PID namespace) are
    printed."""
    d = os.environ["SOFTCHECK_TEST_DIR"]
    threading.Thread(target=lambda: time.sleep(10**6)).start()
    r, w = os.pipe()
    if os.fork() == 0:                      # child: new session, sleeps
        os.setsid()
        if os.fork() == 0:                  # grandchild: orphaned when its parent exits
            os.write(w, f"{os.getpid()} ".encode())
            time.sleep(60)
            open(os.path.join(d, "escaped-grandchild"), "w").close()
            os._exit(0)
        if os.fork() == 0:
            os.write(w, f"{os.getpid()} ".encode())
            time.sleep(60)
            open(os.path.join(d, "escaped-child"), "w").close()
            os._exit(0)
        os._exit(0)                          # the intermediate exits: both reparent upwards
    os.close(w)
    pids = b""
    while len(pids.split()) < 2:
        pids += os.read(r, 100)
    print("pids", pids.decode())
    return correct(logits, target)


def meddles(logits, target):
    """Tampers with everything a shared process would share."""
    import softcheck.candidate

    np.abs = lambda x: 0 * x
    np.seterr(all="raise")
    os.chdir("/")
    softcheck.candidate.call.to_array = lambda out, shape: np.zeros(shape)
    d = os.environ["SOFTCHECK_TEST_DIR"]
    atexit.register(lambda: open(os.path.join(d, "atexit-ran"), "w").close())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return correct(logits, target)


_RNG = np.random.default_rng()


def noisy(logits, target):
    return correct(logits, target) + _RNG.normal(size=logits.shape) * 1e-9


_BUFFER = {}


def same_buffer(logits, target):
    g = correct(logits, target)
    buf = _BUFFER.setdefault(g.shape, np.empty_like(g))
    buf[...] = g + len(_BUFFER.setdefault("n", [])) * 1e-3
    _BUFFER["n"].append(1)
    return buf


def third_call_raises(logits, target):
    global CALLS
    CALLS += 1
    if CALLS == 3:
        raise RuntimeError("third call")
    return correct(logits, target)


def mutates_target(logits, target):
    g = correct(logits, target)
    logits[...] = 0
    target[0] = (target[0] + 1) % logits.shape[1]
    return g


def writes_logits(logits, target):
    g = correct(logits, target)
    logits[...] = 0
    return g


def jax_float32_x64_off(logits, target):
    import jax

    jax.config.update("jax_enable_x64", False)
    return correct(logits, target).astype(np.float32)


def jax_float32_x64_on(logits, target):
    import jax  # noqa: F401  (imported, x64 left as the worker set it)

    return correct(logits, target).astype(np.float32)


def signature(logits, target, weight=None, reduction="mean"):
    return correct(logits, target)
