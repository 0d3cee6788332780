"""Closed-form gradient (and Hessian-vector product) of the composed loss, numpy only.

No autodiff anywhere here: every formula is derived by hand below, independently of the
dense-target formulation in ``losses.py``, so that agreement between the two means something.

Derivation (one row; drop the row index i)
------------------------------------------
Softmax ``p = softmax(v)`` has Jacobian ``∂p_j/∂v_k = p_j(δ_jk − p_k)``, and
``∂lse/∂v = p``.  For any target vector ``m`` (non-negative, not necessarily normalized)::

    ce = −Σ_j m_j log p_j = −Σ_j m_j (v_j − lse) = (Σm)·lse − m·v
    ∂ce/∂v = (Σm)·p − m                                              (1)

which is ``p − y`` only when ``Σm = 1``.  The variants only change ``m``:

* plain, index target y:            m = e_y                       → p − e_y
* class weights:                    m = w_y e_y                   → w_y (p − e_y)
* label smoothing ε, "uniform":     m = w ⊙ ((1−ε) e_y + ε/C)
      Σm = (1−ε) w_y + (ε/C)·W, W = Σ_c w_c
      → (1−ε) w_y (p − e_y) + (ε/C)(W p − w)            (PyTorch's exact formula)
* label smoothing ε, "others":      m_y = (1−ε) w_y, m_c = ε/(C−1)·w_c (c ≠ y)
      → (1−ε) w_y (p − e_y) + ε/(C−1)·((W − w_y) p − w ⊙ (1 − e_y))
* probability targets q:            m = w ⊙ q', q' = (1−ε) q + ε/C        ("uniform")
                                              q' = (1−ε) q + ε/(C−1)(Σq − q) ("others")
      → (Σ_c w_c q'_c) p − w ⊙ q'
* z-loss COEF·lse²:                 ∂/∂v = 2·COEF·lse·p
* reduction: row gradients times α = g/D (ce) and β = g/n (z-loss) under mean, g under sum,
  g_i under none (g = upstream gradient); ignored rows are exactly zero; D = 0 → zero.
* softcap v = S·tanh(u/S):          ∂v/∂u = 1 − tanh²(u/S)           (chain factor)
* temperature and logit scale u = z·s/T:   ∂u/∂z = s/T  (below, T stands for T/s)
* --mean-over only changes the mean's D and n (loss.py): valid → D = n (the non-ignored
  count even with class weights: chainer, mygrad), batch → D = n = N (ignored rows counted),
  a number K → D = n = K (a global count, gradient accumulation); each row's gradient above
  is unchanged, only α = g/D and β = g/n are.

So ``∂L/∂z = (α·∂ce/∂v + β·2·COEF·lse·p) ⊙ (1 − t²) / T``, t = tanh(z/(T·S)).

Second order (per row): ``∂²ce/∂v² = (Σm)(diag p − p pᵀ)`` and
``∂²lse²/∂v² = 2(p pᵀ + lse (diag p − p pᵀ))``; through ``v = g(u)``, ``u = z/T``::

    H_z d = [g' ⊙ H_v (g' ⊙ d) + G_v ⊙ g'' ⊙ d] / T²,   g' = 1 − t², g'' = −2t(1 − t²)/S
"""

from __future__ import annotations

import numpy as np

from ..spec import Inputs


def compute_dtype(dtype) -> type:
    """float64 stays float64; everything narrower is computed in float32, then rounded.

    That is what fused kernels do for 16-bit inputs (fp32 math, output in the input dtype).
    """
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Max-shifted softmax in float64 (also used by the diagnosis and the mutants)."""
    z = np.asarray(z, np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        e = np.exp(z - np.max(z, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


def _exp(inputs: Inputs, cd):
    """The forward up to the sum of exponentials: z, t (softcap's tanh or None), the
    transformed logits v, e = exp(v − max), the rows' sums tot and maxima mx (N, 1)."""
    spec = inputs.spec
    z = np.asarray(inputs.logits, dtype=cd)
    u = z / cd(spec.divisor) if spec.divisor != 1 else z      # z / 1 is z: a pass saved
    t = None
    if spec.softcap:
        s = cd(spec.softcap)
        t = np.tanh(u / s)
        v = s * t
    else:
        v = u
    mx = np.max(v, axis=-1, keepdims=True)
    e = np.exp(v - mx)
    tot = np.sum(e, axis=-1, keepdims=True)
    return z, t, v, e, tot, mx


def _forward(inputs: Inputs, cd):
    z, t, _, e, tot, mx = _exp(inputs, cd)
    e /= tot                                    # p, in place (the same numbers as e / tot)
    lse = (mx + np.log(tot))[:, 0]
    return z, t, e, lse


def mean_totals(inputs: Inputs, cd=np.float64, wy=None) -> tuple[float, float]:
    """The mean's denominators (D, n) of index-target ``inputs``: D = Σ w[y] over the valid
    rows (n with --mean-over valid), n the valid count; --mean-over batch or a number
    replaces both (``_grad_v``).  A block of rows is judged with its batch's (stream.py)."""
    spec = inputs.spec
    valid = inputs.valid
    if wy is None:
        c = inputs.logits.shape[1]
        w = np.ones(c, cd) if inputs.weight is None else np.asarray(inputs.weight, cd)
        wy = (w[np.where(valid, inputs.target, 0)] * valid).astype(cd)[:, None]
    denom, count = float(np.sum(wy)), float(np.sum(valid))
    if spec.mean_over == "valid":
        denom = count
    if spec.mean_over == "batch" or isinstance(spec.mean_over, int):
        denom = count = float(len(valid) if spec.mean_over == "batch" else spec.mean_over)
    return denom, count


def row_factors(inputs: Inputs, cd, totals=None):
    """The per-row part of (1): α, β (the reduction's factors for cross-entropy and z-loss,
    × the upstream gradient), the target mass Σm, and for index targets the target's weight
    w_y (N, 1) (None for probability targets, whose m is dense: returned as ``m``)."""
    spec = inputs.spec
    n, c = inputs.logits.shape
    w = np.ones(c, cd) if inputs.weight is None else np.asarray(inputs.weight, cd)
    eps = cd(spec.label_smoothing)
    uniform = spec.smoothing_convention == "uniform"
    valid = inputs.valid
    big_w = np.sum(w)
    wy = m = None
    if spec.hard:
        y = np.where(valid, inputs.target, 0)
        wy = (w[y] * valid).astype(cd)[:, None]
        mass = (1 - eps) * wy[:, 0]
        if eps and uniform:
            mass = mass + eps / c * big_w
        elif eps and c > 1:
            mass = mass + eps / (c - 1) * (big_w - wy[:, 0])
        denom, count = mean_totals(inputs, cd, wy)
    else:
        q = np.asarray(inputs.target, cd)
        if uniform:
            qs = (1 - eps) * q + eps / c
        elif c > 1:
            qs = (1 - eps) * q + (eps / (c - 1)) * (np.sum(q, -1, keepdims=True) - q)
        else:
            qs = (1 - eps) * q
        m = w * qs
        mass = np.sum(m, -1)
        denom = count = float(n)
    if spec.mean_over == "batch" or isinstance(spec.mean_over, int):
        denom = count = float(n if spec.mean_over == "batch" else spec.mean_over)
    if totals is not None:                  # a block of rows: the whole batch's
        denom, count = (float(x) for x in totals)
    go = np.broadcast_to(np.asarray(inputs.grad_output, np.float64), (n,))
    if spec.reduction == "mean":
        alpha = go / denom if denom > 0 else np.zeros(n)
        beta = go / count if count > 0 else np.zeros(n)
    else:
        alpha = beta = go
    beta = beta * valid
    return alpha, beta, mass, wy, m


def _grad_v(inputs: Inputs, cd, p, lse, totals=None, consume: bool = False):
    """∂L/∂v (before the softcap and temperature chain factors) from (1), with the per-row
    scales α, β and the target mass Σm (used by the Hessian).  ``totals``: the mean's
    denominators (D, n) of the whole batch when ``inputs`` is a block of its rows;
    ``consume``: ``p`` may be overwritten (the same numbers, one full-size array fewer).

    Index targets subtract at the target entries instead of building e_y: p − e_y is p
    exactly off the target, so the numbers are those of the dense formula."""
    spec = inputs.spec
    n, c = p.shape
    w = np.ones(c, cd) if inputs.weight is None else np.asarray(inputs.weight, cd)
    eps = cd(spec.label_smoothing)
    uniform = spec.smoothing_convention == "uniform"
    valid = inputs.valid
    alpha, beta, mass, wy, m = row_factors(inputs, cd, totals)
    if spec.hard:
        rows, y = np.arange(n), np.where(valid, inputs.target, 0)
        keep = eps or spec.z_loss
        g = p.copy() if keep or not consume else p           # p − e_y
        g[rows, y] -= 1
        factor = (1 - eps) * wy
        if not np.all(factor == 1):            # g·1 is g (NaN and ±inf too): a pass saved
            g *= factor
        if eps and uniform:
            g += (eps / c) * (np.sum(w) * p - w)
        elif eps and c > 1:
            off = np.broadcast_to(w, (n, c)).copy()             # w ⊙ (1 − e_y)
            off[rows, y] = 0
            g += (eps / (c - 1)) * ((np.sum(w) - wy) * p - off)
        if not valid.all():
            g *= valid[:, None]
    else:
        g = mass[:, None] * p - m
    gv = g
    gv *= alpha.astype(cd)[:, None]
    if spec.z_loss:
        gv += beta.astype(cd)[:, None] * (2 * cd(spec.z_loss)) * lse[:, None] * p
    return gv, alpha, beta, mass


def gradient(inputs: Inputs, *, native: bool = False, totals=None) -> np.ndarray:
    """∂L/∂logits (times the upstream gradient), in the dtype of ``inputs.logits``: computed
    in float32 for 16-bit dtypes (as fused kernels do), or with ``native`` in the dtype itself
    (every intermediate rounded to it, as a framework's plain bf16/f16 ops do).  Memoized on
    ``inputs`` (read-only result).  ``totals``: the batch's mean denominators (D, n) when
    ``inputs`` is a block of its rows (engine/stream.py)."""
    key = ("analytic.gradient", native, None if totals is None else tuple(totals))
    return inputs.memo(key, lambda: _gradient(inputs, native, totals))


def _gradient(inputs: Inputs, native: bool, totals=None) -> np.ndarray:
    cd = np.dtype(inputs.logits.dtype).type if native else compute_dtype(inputs.logits.dtype)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        _, t, p, lse = _forward(inputs, cd)
        g = _grad_v(inputs, cd, p, lse, totals, consume=True)[0]
        if t is not None:
            g *= 1 - t * t
        if inputs.spec.divisor != 1:
            g /= cd(inputs.spec.divisor)
    return g.astype(inputs.logits.dtype, copy=False)


def hvp(inputs: Inputs, direction: np.ndarray) -> np.ndarray:
    """Hessian of the loss w.r.t. the logits times ``direction`` (N, C), in float64."""
    spec = inputs.spec
    d = np.asarray(direction, np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        _, t, p, lse = _forward(inputs, np.float64)
        gv, alpha, beta, mass = _grad_v(inputs, np.float64, p, lse)
        valid = inputs.valid
        coef = spec.z_loss
        a_row = (alpha * mass + 2 * beta * coef * lse) * valid   # multiplies diag p − p pᵀ
        b_row = 2 * beta * coef                                  # multiplies p pᵀ
        if t is not None:
            g1 = 1 - t * t
            g2 = -2 * t * g1 / spec.softcap
        else:
            g1, g2 = np.ones_like(p), np.zeros_like(p)
        x = g1 * d
        px = np.sum(p * x, -1, keepdims=True)
        hx = a_row[:, None] * (p * x - p * px) + b_row[:, None] * p * px
        out = g1 * hx + gv * g2 * d
    return out / spec.divisor**2
