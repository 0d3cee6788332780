"""Shipped-bug catalogue kernels in numpy only (softcheck hands them numpy arrays): a fused
linear cross-entropy and a loss function (tests/test_shipped_bugs.py)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "examples"))
import numpy_flce  # noqa: E402


def flce_243(x, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0,
             softcap=None, reduction="mean", grad_output=1.0):
    """Liger #243: the fused path silently drops label_smoothing (numpy_flce at EPS = 0)."""
    return numpy_flce.flce(x, weight, target, bias, ignore_index, 0.0, softcap, reduction,
                           grad_output)


def mean_loss(logits, target):
    """A loss, not a gradient: checked without --convention loss it returns a scalar."""
    z = np.asarray(logits, np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return float(np.mean(lse - z[np.arange(len(z)), target]))
