"""Seeded inputs of a fused linear cross-entropy case: hidden states, LM-head weight, bias."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..spec import FusedInputs
from .cases import Case
from .config import numpy_dtype
from .inputs import _rng, sequences, upstream_gradient, weight_array, weight_dtype

#: the confident regime: the target logit of an aligned row (p_y ≈ 1 − V·e^-CONFIDENT_LOGIT)
CONFIDENT_LOGIT = 30.0
#: the masked regime: this share of rows is ignored
IGNORED_SHARE = 0.2


def fused_shape(case: Case) -> tuple[int, int] | None:
    """(B, T) with --shape btv (B = 2 when N is even), else None."""
    return sequences(case.batch) if case.shape == "btv" else None


def make_fused_inputs(case: Case, *, upstream: str = "auto") -> FusedInputs:
    """Draw x (N, H), W (V, H), bias, targets from the seed; round to the case dtype.

    Logits z = x·Wᵀ (+ b) have standard deviation ~2 (as the plain suite's normal regime).
    ``upstream`` as ``suite.inputs.make_inputs``.
    """
    user = getattr(case, "inputs", None)            # the user's arrays (suite/user.py)
    if user is not None:
        return user if upstream != "one" else dataclasses.replace(
            user, grad_output=np.ones_like(user.grad_output))
    s = case.spec
    n, v, h = case.batch, case.classes, case.hidden
    rng = _rng(case, "fused")
    dt = numpy_dtype(case.dtype)
    ii = s.ignore_index
    choices = np.array([k for k in range(v) if k != ii] if ii is not None and 0 <= ii < v
                       else np.arange(v))
    y = choices[rng.integers(0, len(choices), n)]
    w = rng.standard_normal((v, h)) * (2.0 / np.sqrt(h))
    x = rng.standard_normal((n, h))
    if case.regime == "confident":           # a few rows aligned with their target's row of W
        rows = rng.choice(n, max(1, n // 4), replace=False)
        wy = w[y[rows]]
        x[rows] = wy * (CONFIDENT_LOGIT / np.sum(wy * wy, -1, keepdims=True)) \
            + 0.05 * x[rows]
    bias = rng.standard_normal(v) * 0.5 if case.bias else None
    ignored = np.zeros(n, bool)
    frac = getattr(case, "ignored_fraction", None)        # --ignored-fraction: exactly F·N
    if ii is not None and (frac is not None or case.regime == "masked"):
        k = int(round(frac * n)) if frac is not None else max(1, int(round(IGNORED_SHARE * n)))
        ignored[rng.choice(n, k, replace=False)] = True
    labels = np.where(ignored, ii if ii is not None else 0, y).astype(np.int64)
    shape = fused_shape(case)
    target, raw = labels, None
    if case.shift:                            # position t predicts label t+1 of its sequence
        b, t = shape or (1, n)
        lab = labels.reshape(b, t)
        target = np.concatenate([lab[:, 1:], np.full((b, 1), ii)], 1).reshape(-1)
        raw = labels
    weight = weight_array(s.weight, v, case.seed, weight_dtype(case))
    go = upstream_gradient(rng, s.reduction, upstream, n, dt)
    return FusedInputs(x.astype(dt), w.astype(dt), None if bias is None else bias.astype(dt),
                       target.astype(np.int64), weight, go, s, shape, raw)
