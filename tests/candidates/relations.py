"""Candidates for the relation tests: each correct but for one thing."""

import numpy as np

from softcheck.tools.mutants import correct


def tie_broken(logits, target):
    """Correct unless a row's logits are all equal (then it returns zeros)."""
    z = np.asarray(logits, np.float64)
    g = np.array(correct(logits, target))
    g[np.all(z == z[:, :1], -1)] = 0.0
    return g


def target_off(logits, target):
    """The target entry loses precision as p -> 1 (computes p_y - 1 as -(sum of the others))."""
    g = np.array(correct(logits, target))
    g[np.arange(len(target)), target] *= 1 + 1e-6
    return g


def batch_max_shift(logits, target):
    """Shifts by the batch's maximum instead of each row's own (a real framework's bug)."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max())
    p = e / e.sum(axis=1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)
