"""Gradient and Hessian-vector product kernels for the --order 2 tests (index targets, mean)."""

import numpy as np


def _softmax(logits):
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def grad(logits, target):
    p = _softmax(logits)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)


def hvp(logits, target, v):
    """(diag p − p pᵀ) v per row, over the batch size."""
    p = _softmax(logits)
    return (p * v - p * np.sum(p * v, 1, keepdims=True)) / len(target)


def hvp_diagonal_only(logits, target, v):
    """The Hessian's diagonal only: drops the −p pᵀ term."""
    p = _softmax(logits)
    return p * (1 - p) * v / len(target)
