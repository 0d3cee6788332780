"""Fused linear cross-entropy kernels of the shipped-bug catalogue (numpy only, so softcheck
hands them numpy arrays; tests/test_shipped_bugs.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "examples"))
import numpy_flce  # noqa: E402


def flce_243(x, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0,
             softcap=None, reduction="mean", grad_output=1.0):
    """Liger #243: the fused path silently drops label_smoothing (numpy_flce at EPS = 0)."""
    return numpy_flce.flce(x, weight, target, bias, ignore_index, 0.0, softcap, reduction,
                           grad_output)
