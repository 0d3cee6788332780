"""Candidates that attack the worker's side of the trust boundary (tests/test_trust_executor.py):
each patches, in its own process, what softcheck runs there, or forges the reply it sends.

The repeat attacks return the right gradient on the first call for given inputs and twice it
on the second call with the same inputs (later calls and other inputs: right again, so a
metamorphic relation's call sees a correct kernel): only the determinism check can see them.
"""

import hashlib
import os
import signal
import sys
import threading

import numpy as np

_SEEN: dict = {}


def _correct(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def _times(*arrays) -> int:
    """How many times these exact inputs were seen before (0 on the first call)."""
    key = hashlib.sha256(b"".join(np.ascontiguousarray(np.asarray(a)).tobytes()
                                  for a in arrays)).hexdigest()
    n = _SEEN.get(key, 0)
    _SEEN[key] = n + 1
    return n


def _zero(*a, **k):
    return 0.0


def _hide_repeats() -> None:
    """Make the worker's own repeat loop see no difference and call once: every function of
    softcheck a repeat check could run in this process, patched (and the worker's main
    module's names, which it imported by name)."""
    import softcheck.candidate.arrays as arrays
    import softcheck.candidate.call as call

    arrays.max_difference = call.max_difference = _zero
    try:
        import softcheck.candidate.fused as fused

        fused.max_difference = _zero
    except ImportError:
        pass
    main = sys.modules.get("__main__")
    for name in ("invoke", "invoke_convention"):
        orig = getattr(main, name, None)
        if callable(orig):
            def once(*a, _orig=orig, **k):
                if "repeat" in k:
                    k["repeat"] = 1
                return _orig(*a, **k)
            setattr(main, name, once)
            setattr(call, name, once)


_hide_repeats()


def repeat_doubles(logits, target):
    g = _correct(logits, target)
    return 2 * g if _times(logits, target) == 1 else g


def repeat_doubles_fused(x, weight, target):
    """Fused linear cross-entropy (--hidden, --convention grad): (loss, grad_x, grad_W)."""
    x, w = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    z = x @ w.T
    zmax = z.max(1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(1, keepdims=True)
    rows = np.arange(len(target))
    loss = float(np.mean(np.log(s[:, 0]) + zmax[:, 0] - z[rows, target]))
    g = e / s
    g[rows, target] -= 1
    g /= len(target)
    gx, gw = g @ w, g.T @ x
    k = 2.0 if _times(x, weight, target) == 1 else 1.0
    return loss, k * gx, k * gw


# -- forged replies --------------------------------------------------------------------------
def _forge_next_reply(change) -> None:
    """Patch the worker's reply sender so the reply to this call is ``change(reply)``."""
    main = sys.modules["__main__"]
    orig = main._send

    def send(sock, obj, fds=()):
        if isinstance(obj, dict) and "seq" in obj:
            main._send = orig
            obj = change(dict(obj))
        return orig(sock, obj, fds)

    main._send = send


def forged_notes(logits, target):
    """The reply's notes a number instead of a list of text."""
    _forge_next_reply(lambda r: {**r, "notes": 12})
    return _correct(logits, target)


def forged_number(logits, target):
    """A string where a number belongs (the determinism figure of today's reply)."""
    _forge_next_reply(lambda r: {**r, "nondet": "none at all", "notes": [], "x64_off": "no"})
    return _correct(logits, target)


def forged_extra(logits, target):
    """A key no reply has."""
    _forge_next_reply(lambda r: {**r, "verdict": "passed"})
    return _correct(logits, target)


# -- late interrupts in the worker's main thread ----------------------------------------------
def _late(exc) -> None:
    def handler(signum, frame):
        raise exc

    signal.signal(signal.SIGUSR1, handler)
    # raised in the main thread once the call has returned: while the reply is sent, or
    # while the worker waits for the next request
    threading.Timer(0.0, os.kill, (os.getpid(), signal.SIGUSR1)).start()


def late_keyboard_interrupt(logits, target):
    _late(KeyboardInterrupt())
    return _correct(logits, target)


def late_system_exit(logits, target):
    _late(SystemExit(0))
    return _correct(logits, target)


def correct(logits, target):
    return _correct(logits, target)
