"""A hand-written numpy cross-entropy backward: mean reduction, ignore_index, label smoothing.

    softcheck check scripts/examples/numpy_ce.py:grad --ignore-index -100 --label-smoothing 0.1
"""

import numpy as np


def grad(logits, target, ignore_index=-100, label_smoothing=0.0):
    z = logits.astype(np.float64)
    n, c = z.shape
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    valid = target != ignore_index
    onehot = np.zeros_like(p)
    onehot[np.flatnonzero(valid), target[valid]] = 1.0
    q = (1 - label_smoothing) * onehot + label_smoothing / c
    g = (p - q) * valid[:, None] / max(int(valid.sum()), 1)
    return g.astype(logits.dtype)


def grad_wrong(logits, target, ignore_index=-100, label_smoothing=0.0):
    """The classic slip: divides by the batch size, not by the non-ignored count."""
    return grad(logits, target, ignore_index, label_smoothing) * (
        np.sum(target != ignore_index) / len(target))
