"""A split cross-entropy kernel as quack ships it: ``fwd -> (loss, lse)`` per row and a
separate ``bwd(logits, target, dloss, lse) -> dlogits`` (numpy; reduction ``none``).

    softcheck check scripts/examples/split_kernel.py:fwd --convention split \\
        --backward scripts/examples/split_kernel.py:bwd --reduction none --ignore-index -100

``fwd_lse_off`` carries a seeded bug: the lse it returns lacks the max shift's constant
(log Σ exp(z − max) instead of max + log Σ exp(z − max)); its loss is right.
"""

import numpy as np


def _lse(logits):
    z = np.asarray(logits, np.float64 if logits.dtype == np.float64 else np.float32)
    m = np.max(z, -1, keepdims=True)
    return m, np.log(np.sum(np.exp(z - m), -1))


def fwd(logits, target, ignore_index=-100):
    m, s = _lse(logits)
    lse = m[:, 0] + s
    valid = target != ignore_index
    y = np.where(valid, target, 0)
    zy = np.take_along_axis(logits, y[:, None], -1)[:, 0].astype(lse.dtype)
    return np.where(valid, lse - zy, 0.0).astype(lse.dtype), lse


def fwd_lse_off(logits, target, ignore_index=-100):
    loss, lse = fwd(logits, target, ignore_index)
    return loss, _lse(logits)[1]


def bwd(logits, target, dloss, lse, ignore_index=-100):
    z = np.asarray(logits, lse.dtype)
    p = np.exp(z - lse[:, None])
    valid = target != ignore_index
    p[np.flatnonzero(valid), target[valid]] -= 1
    return (p * (dloss * valid)[:, None]).astype(logits.dtype)
