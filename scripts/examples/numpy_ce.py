"""A hand-written numpy cross-entropy backward: mean reduction, ignore_index, label smoothing.

    softcheck check scripts/examples/numpy_ce.py:grad --ignore-index -100 --label-smoothing 0.1
"""

import numpy as np


def grad(logits, target, ignore_index=-100, label_smoothing=0.0):
    n, c = logits.shape
    valid = target != ignore_index
    count = max(int(valid.sum()), 1)
    out = np.empty(logits.shape, logits.dtype)
    off = label_smoothing / c                  # q = (1 − ε)·onehot + ε/C off the target
    on = (1 - label_smoothing) * 1.0 + off     # and at it
    step = max(1, (1 << 20) // max(c, 1))      # rows at a time: float64 for one block only
    for i in range(0, n, step):
        p = logits[i:i + step].astype(np.float64)
        p -= p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        v = valid[i:i + step]
        rows, t = np.flatnonzero(v), target[i:i + step][v]
        pt = p[rows, t]
        if off:
            p -= off
        p[rows, t] = pt - on                   # p − q, in place
        p *= v[:, None]
        p /= count
        out[i:i + step] = p
    return out


def grad_wrong(logits, target, ignore_index=-100, label_smoothing=0.0):
    """The classic slip: divides by the batch size, not by the non-ignored count."""
    return grad(logits, target, ignore_index, label_smoothing) * (
        np.sum(target != ignore_index) / len(target))
