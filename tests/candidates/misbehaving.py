"""Candidates that misbehave, one way each (tests/test_hardening.py)."""

import time

import numpy as np


def correct(logits, target):
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)


def raises(logits, target):
    raise ValueError("boom")


def returns_none(logits, target):
    return None


def returns_str(logits, target):
    return "gradient"


def wrong_shape(logits, target):
    return correct(logits, target)[:, :-1]


def transposed(logits, target):
    return correct(logits, target).T


def non_finite(logits, target):
    g = correct(logits, target)
    g[0, 1] = np.inf
    return g


def prints(logits, target):
    print("debug: computing the gradient")
    return correct(logits, target)


def writes_target(logits, target):
    g = correct(logits, target)
    target[:] = 0
    return g


def writes_logits(logits, target):
    """Writes the gradient into its input, as in-place kernels do: allowed (a fresh copy)."""
    logits[...] = correct(logits, target)
    return logits


def slow(logits, target):
    time.sleep(3)
    return correct(logits, target)


NOT_CALLABLE = 3


def off_by_1e6(logits, target):
    """Right but for a relative error of 1e-6: caught by the derived float64 tolerance."""
    return correct(logits, target) * (1 + 1e-6)


def wrong_denominator(logits, target):
    """The mean's classic slip: divides by C instead of N."""
    return correct(logits, target) * len(target) / logits.shape[1]
