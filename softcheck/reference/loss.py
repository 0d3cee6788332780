"""The one reference loss: softmax cross-entropy with every option, written once.

The same function body runs on ``numpy`` (finite differences, also with complex inputs for
the complex step) and on ``jax.numpy`` (autodiff), so the references share one definition.

The composed definition, for logits ``z`` of shape (N, C)::

    u   = z·s / T                                 logit scale s, temperature T (> 0)
    v   = S·tanh(u / S)        if a softcap S     (Gemma-style, after the temperature)
    lse = log Σ_c exp(v_c)     (max-shifted)      p = exp(v − lse), log p = v − lse
    q0  = onehot(y), zero rows where y == ignore_index   (index targets)
        = the given (N, C) matrix                        (onehot / probs targets)
    q   = (1 − ε)·q0 + ε/C                 on contributing rows   (smoothing "uniform", PyTorch)
        = (1 − ε)·q0 + ε/(C−1)·(Σq0 − q0)                          (smoothing "others", fairseq)
    ce_i = −Σ_c w_c q_ic log p_ic          (w = class weights, ones if none)
    zl_i = COEF · lse_i²                   (z-loss: not class-weighted)

    reduction "none": l_i = valid_i·(ce_i + zl_i)
    reduction "sum":  Σ_i l_i
    reduction "mean": Σ_i valid_i·ce_i / D + Σ_i valid_i·zl_i / n
        D = Σ_valid w[y_i] (index targets; n without weights) or N (probability targets)
        n = number of contributing rows (N for probability targets)
        --mean-over valid: D = n; batch: D = n = N (ignored rows counted); a number K: D = n = K
        D = 0 (every row ignored): loss NaN, gradient 0, as PyTorch.

This is ``torch.nn.functional.cross_entropy`` exactly wherever torch has the option
(tested in ``tests/test_torch_parity.py``); z-loss under mean divides by n as Liger-Kernel and
flash-attention do.

The scalar that is differentiated is ``Σ_i rows_i`` with ``rows_i = valid_i·(α_i ce_i + β_i zl_i)``:
α = β = g/D, g/n under mean, α = β = g under sum, α_i = β_i = g_i under none, where g is the
upstream gradient (``grad_output``).  Rows are independent, which the finite differences use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from ..spec import Inputs, LossSpec

#: --mean-over as a number (one compiled JAX function for all): a whole number → 3 (n_items)
MEAN_CODES = {"weight": 0, "valid": 1, "batch": 2}

#: stands for "no ignore_index": no class index can equal it.
NO_IGNORE = np.int64(-(2**62))


def _identity(x):
    return x


def params(inputs: Inputs, totals=None) -> dict:
    """The option values as arrays (so one compiled JAX function serves every option value);
    ``totals`` (D, n): the whole batch's mean denominators for a block of its rows."""
    spec = inputs.spec
    n, c = inputs.logits.shape
    w = inputs.weight64
    extra = {} if totals is None else {"denom": np.float64(totals[0]),
                                       "count": np.float64(totals[1])}
    return extra | {
        "weight": np.ones(c) if w is None else w,
        "ignore_index": NO_IGNORE if spec.ignore_index is None else np.int64(spec.ignore_index),
        "eps": np.float64(spec.label_smoothing),
        "others": np.bool_(spec.smoothing_convention == "others"),
        "temperature": np.float64(spec.divisor),
        "mean_over": np.int64(MEAN_CODES.get(spec.mean_over, 3)),
        "n_items": np.float64(spec.mean_over if isinstance(spec.mean_over, int) else 1),
        "cap": np.float64(spec.softcap or 0.0),
        "z_loss": np.float64(spec.z_loss),
        "mean": np.bool_(spec.reduction == "mean"),
        "go": np.broadcast_to(np.asarray(inputs.grad_output, np.float64), (n,)).copy(),
    }


def _divide(xp, z, t):
    """z / t; for complex z part by part, because XLA promotes complex / real to a complex
    division in which (−inf + 0j)/(t + 0j) is NaN (−inf·0)."""
    if xp.iscomplexobj(z):
        return xp.real(z) / t + 1j * (xp.imag(z) / t)
    return z / t


ALL_FEATURES = (True, True, True)


def features(prm: dict) -> tuple[bool, bool, bool]:
    """Which of softcap, temperature, z-loss are in use (from concrete option values): the
    finite differences compile a kernel without the unused ones (a tanh per element is as dear
    as the exp).  Leaving one in with its neutral value gives the same numbers."""
    return (bool(prm["cap"] > 0), bool(prm["temperature"] != 1.0), bool(prm["z_loss"] != 0.0))


class TargetTerms(NamedTuple):
    """What does not depend on the logits (``target_terms``); arrays of numpy or jax.numpy."""

    m: Any          # (N, C) weighted smoothed target
    nz: Any         # (N, C) where m is non-zero (0·log 0 = 0 elsewhere)
    msum: Any       # (N,) Σ_c m
    valid: Any      # (N,) 1.0 for rows that count, 0.0 for ignored rows
    denom: Any      # the mean's denominator for cross-entropy (Σ w[y] over valid rows)
    count: Any      # the mean's denominator for z-loss (number of valid rows)
    alpha: Any      # the reduction's row factor for cross-entropy (× grad_output)
    beta: Any       # the reduction's row factor for z-loss (× grad_output)


def sparse_targets(inputs: Inputs, prm) -> bool:
    """Index targets without smoothing: one non-zero target weight per row (a gather)."""
    return bool(inputs.spec.hard and prm["eps"] == 0.0)


def target_terms(xp, target, prm, hard: bool, c: int, sparse: bool = False) -> TargetTerms:
    """Everything that does not depend on the logits: the weighted smoothed target m (and
    where it is non-zero), the row mask, and the row factors α, β of the reduction.

    ``sparse`` (index targets without smoothing, ``sparse_targets``): m has
    one non-zero per row, w_y, so m and nz are None and Σm = w_y on valid rows: the numbers
    of the dense matrix (w·1 at the target, exact zeros elsewhere), without it."""
    nb = np.float64(target.shape[0])
    if hard and sparse:
        valid = target != prm["ignore_index"]
        vf = valid.astype(np.float64)
        msum = xp.where(valid, prm["weight"][xp.clip(target, 0, c - 1)], 0.0)
        m = nz = None
        wq0 = msum                          # Σ_c w·q0 per row
    else:
        if hard:
            valid = target != prm["ignore_index"]
            q0 = ((xp.arange(c) == target[:, None]) & valid[:, None]).astype(np.float64)
        else:
            valid = xp.ones(target.shape[0], dtype=bool)
            q0 = target
        vf = valid.astype(np.float64)
        eps = prm["eps"]
        uniform = (1 - eps) * q0 + (eps / c) * vf[:, None]
        if c > 1:
            others = (1 - eps) * q0 + (eps / (c - 1)) * (xp.sum(q0, -1, keepdims=True) - q0)
        else:
            others = (1 - eps) * q0
        q = xp.where(prm["others"], others, uniform)
        m = prm["weight"] * q
        nz, msum = m != 0, xp.sum(m, -1)
        wq0 = xp.sum(prm["weight"] * q0, -1) if hard else None
    if "denom" in prm:      # a block of rows of a larger batch: the batch's final totals
        denom, count = prm["denom"], prm["count"]
    else:
        if hard:
            denom = xp.sum(vf * wq0)
            count = xp.sum(vf)
        else:
            denom = count = nb
        mode = prm["mean_over"]
        denom = xp.where(mode == 0, denom, xp.where(mode == 1, count,
                                                     xp.where(mode == 2, nb, prm["n_items"])))
        count = xp.where(mode <= 1, count, xp.where(mode == 2, nb, prm["n_items"]))
    go = prm["go"]
    alpha = xp.where(prm["mean"], go / xp.where(denom > 0, denom, 1.0), go)
    beta = xp.where(prm["mean"], go / xp.where(count > 0, count, 1.0), go)
    return TargetTerms(m, nz, msum, vf, denom, count, alpha, beta)


def transform(xp, z, prm, feats=ALL_FEATURES):
    """Logits → v: temperature, then soft-capping (each only where in use)."""
    has_cap, has_t, _ = feats
    u = _divide(xp, z, prm["temperature"]) if has_t else z
    if has_cap:
        use = prm["cap"] > 0
        cap = xp.where(use, prm["cap"], 1.0)
        # tanh(±inf) = ±1, but complex tanh(-inf + 0j) is NaN: cap the finite part only.
        finite = xp.isfinite(xp.real(u))
        capped = xp.where(finite, cap * xp.tanh(xp.where(finite, u, 0.0) / cap),
                          cap * xp.sign(xp.real(u)))
        return xp.where(use, capped, u)
    return u


def logit_terms(xp, z, m, nz, msum, prm, stop_gradient=_identity, feats=ALL_FEATURES,
                shift=None, index=None):
    """Per-row cross-entropy ``−Σ m (v − lse)`` and z-loss of logits ``z`` (any leading
    axes) against ``m``.

    ``shift`` (default: each row's max) is the constant of the max shift: ``c + log Σ
    exp(v − c) = log Σ exp(v)`` for any c, also for the complex step (v with an imaginary
    perturbation).  The finite differences pass the unperturbed rows' max: the same c on both
    sides of a difference, and no max pass per evaluation.  ``index`` (N,): m has its only
    non-zero at these classes (index targets without smoothing), so Σ m v is a gather, as in
    PyTorch's nll_loss.
    """
    v = transform(xp, z, prm, feats)
    if shift is None:
        shift = stop_gradient(xp.max(xp.real(v), axis=-1, keepdims=True))
    lse = shift[..., 0] + xp.log(xp.sum(xp.exp(v - shift), axis=-1))
    # 0·log 0 = 0: classes with no target mass may have p = 0 (−inf logits).
    if index is None:
        ce = -xp.sum(m * xp.where(nz, v - lse[..., None], 0.0), axis=-1)
    else:
        vy = xp.take_along_axis(v, xp.broadcast_to(index[:, None], v.shape[:-1] + (1,)), -1)
        # msum = m at the index; an ignored row (msum 0) may point at a −inf logit: 0, not NaN
        ce = xp.where(msum != 0, (lse - vy[..., 0]) * msum, 0.0)
    zl = prm["z_loss"] * lse**2 if feats[2] else 0.0
    return ce, zl


def _terms(xp, z, target, prm, hard: bool, stop_gradient=_identity):
    """Per-row cross-entropy and z-loss, the row mask, and the mean denominators D, n."""
    tt = target_terms(xp, target, prm, hard, z.shape[-1])
    ce, zl = logit_terms(xp, z, tt.m, tt.nz, tt.msum, prm, stop_gradient)
    return ce, zl, tt.valid, tt.denom, tt.count


def rows_of(xp, z, tt, prm, stop_gradient=_identity, feats=ALL_FEATURES, shift=None,
            index=None):
    """``reference_rows`` with the target terms computed once (``target_terms``)."""
    ce, zl = logit_terms(xp, z, tt.m, tt.nz, tt.msum, prm, stop_gradient, feats, shift, index)
    return tt.valid * (tt.alpha * ce + tt.beta * zl)


def reference_rows(xp, z, target, prm, hard: bool, stop_gradient=_identity):
    """Each row's share of the differentiated scalar; shape ``z.shape[:-1]``.

    ``z`` may carry leading batch axes (K, N, C): the finite differences evaluate K perturbed
    copies at once.
    """
    return rows_of(xp, z, target_terms(xp, target, prm, hard, z.shape[-1]), prm, stop_gradient)


def loss(logits, target, spec: LossSpec | None = None, *, weight=None, **options):
    """The loss value with PyTorch semantics: a float for mean/sum, shape (N,) for none.

    ``logits`` (N, C); ``target`` int (N,) or float (N, C); options as ``LossSpec`` fields.
    """
    from ..suite.inputs import make_inputs_from_arrays

    inputs = make_inputs_from_arrays(logits, target, spec, weight=weight, **options)
    prm = params(inputs)
    ce, zl, vf, denom, count = _terms(np, inputs.logits64, inputs.target64, prm, inputs.spec.hard)
    rows = vf * (ce + zl)
    reduction = inputs.spec.reduction
    if reduction == "none":
        return rows
    if reduction == "sum":
        return float(np.sum(rows))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(vf * ce) / denom + np.sum(vf * zl) / count)


class LossValues(NamedTuple):
    """The forward's float64 values of a case, and the scales their rounding errors follow."""

    loss: Any       # float (mean/sum) or (N,) (none): the loss, z-loss included
    z_loss: Any     # the z-loss term alone, reduced the same way
    lse: Any        # (N,) log Σ exp(v) of the transformed logits, every row
    scale: Any      # Σ_i a_i·P_i (mean/sum) or P_i per row (none): see tolerances.loss_allowed
    zscale: Any     # the same for the z-loss term alone


def values(inputs: Inputs) -> LossValues:
    """Loss, z-loss and lse of float64 ``inputs`` (the loss as :func:`loss` computes it), with
    P_i = Σm_i + 2·COEF·|lse_i| the size of row i's terms per unit of κ (tolerances.py).
    Memoized on ``inputs``."""
    return inputs.memo("loss.values", lambda: _values(inputs))


def _values(inputs: Inputs) -> LossValues:
    return reduced(inputs.spec, *value_rows(inputs))


def value_rows(inputs: Inputs, totals=None, sums=None) -> tuple:
    """The per-row parts of :func:`values` (rows of the loss, z-loss, lse, and their scales)
    and the mean's denominator; ``totals``: the batch's (D, n) when ``inputs`` is a block of
    its rows (engine/stream.py: the rows concatenated, then :func:`reduced`).  ``sums``:
    each row's max of v and Σ exp(v − max) (``RowStats.top``, ``.s``) already computed: with
    index targets, no smoothing and every max finite, the lse is theirs and the loss a
    gather (the same numbers: the same operations on the same values), no pass over C."""
    prm = params(inputs, totals)
    prm["go"] = np.ones_like(prm["go"])
    z = inputs.logits64
    c = z.shape[-1]
    sparse = sparse_targets(inputs, prm)          # a gather: the dense sum's numbers, faster
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        tt = target_terms(np, inputs.target64, prm, inputs.spec.hard, c, sparse)
        feats = features(prm)
        index = np.clip(inputs.target, 0, c - 1).astype(np.int64) if sparse else None
        if sparse and sums is not None and np.all(np.isfinite(sums[0])):
            lse = sums[0] + np.log(sums[1])
            vy = transform(np, z[np.arange(len(index)), index], prm, feats)
            ce = np.where(tt.msum != 0, (lse - vy) * tt.msum, 0.0)
            zl = prm["z_loss"] * lse**2 if feats[2] else 0.0
        else:
            ce, zl = logit_terms(np, z, tt.m, tt.nz, tt.msum, prm, feats=feats, index=index)
            v = transform(np, z, prm, feats)
            mx = np.max(v, -1, keepdims=True)
            mx = np.where(np.isfinite(mx), mx, 0.0)
            lse = mx[:, 0] + np.log(np.sum(np.exp(v - mx), -1))
        zl = np.broadcast_to(zl, ce.shape)
        zpart = 2 * prm["z_loss"] * np.abs(lse)
        a = tt.alpha * tt.valid
        b = tt.beta * tt.valid
        rows_loss, rows_z = a * ce + b * zl, b * zl
        rows_scale, rows_zscale = a * tt.msum + b * zpart, b * zpart
    return rows_loss, rows_z, lse, rows_scale, rows_zscale, float(tt.denom)


def lse_rows(inputs: Inputs, block: int = 1 << 21) -> np.ndarray:
    """:func:`values`' lse, computed a block of rows at a time (no float64 copy of a large
    case's logits: the exact lse a streamed split backward is given)."""
    n, c = inputs.logits.shape
    step = max(1, block // max(1, c))
    out = np.empty(n)
    for r in range(0, n, step):
        b = dataclasses.replace(inputs, logits=np.asarray(inputs.logits[r:r + step], np.float64),
                                target=inputs.target[r:r + step], grad_output=1.0)
        out[r:r + step] = value_rows(b, (1.0, 1.0))[2]
    return out


def reduced(spec: LossSpec, rows_loss, rows_z, lse, rows_scale, rows_zscale, denom
            ) -> LossValues:
    """:func:`value_rows`' rows reduced as the case's reduction does."""
    if spec.reduction == "none":
        return LossValues(rows_loss, rows_z, lse, rows_scale, rows_zscale)
    if spec.reduction == "mean" and denom == 0:
        if spec.all_ignored == "zero":        # --all-ignored zero (Liger, TE)
            return LossValues(0.0, 0.0, lse, 0.0, 0.0)
        nan = float("nan")
        return LossValues(nan, nan if spec.z_loss else 0.0, lse, 0.0, 0.0)
    return LossValues(float(np.sum(rows_loss)), float(np.sum(rows_z)), lse,
                      float(np.sum(rows_scale)), float(np.sum(rows_zscale)))
