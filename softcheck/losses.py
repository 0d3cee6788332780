"""The one reference loss: softmax cross-entropy with every option, written once.

The same function body runs on ``numpy`` (finite differences, also with complex inputs for
the complex step) and on ``jax.numpy`` (autodiff), so the references share one definition.

The composed definition, for logits ``z`` of shape (N, C)::

    u   = z / T                                   temperature T (> 0)
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
        D = 0 (every row ignored): loss NaN, gradient 0, as PyTorch.

This is ``torch.nn.functional.cross_entropy`` exactly wherever torch has the option
(tested in ``tests/test_torch_parity.py``); z-loss under mean divides by n as Liger-Kernel and
flash-attention do.

The scalar that is differentiated is ``Σ_i rows_i`` with ``rows_i = valid_i·(α_i ce_i + β_i zl_i)``:
α = β = g/D, g/n under mean, α = β = g under sum, α_i = β_i = g_i under none, where g is the
upstream gradient (``grad_output``).  Rows are independent, which the finite differences use.
"""

from __future__ import annotations

import numpy as np

from .spec import Inputs, LossSpec

#: stands for "no ignore_index": no class index can equal it.
NO_IGNORE = np.int64(-(2**62))


def _identity(x):
    return x


def params(inputs: Inputs) -> dict:
    """The option values as arrays (so one compiled JAX function serves every option value)."""
    spec = inputs.spec
    n, c = inputs.logits.shape
    w = inputs.weight64
    return {
        "weight": np.ones(c) if w is None else w,
        "ignore_index": NO_IGNORE if spec.ignore_index is None else np.int64(spec.ignore_index),
        "eps": np.float64(spec.label_smoothing),
        "others": np.bool_(spec.smoothing_convention == "others"),
        "temperature": np.float64(spec.temperature),
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


def _terms(xp, z, target, prm, hard: bool, stop_gradient=_identity):
    """Per-row cross-entropy and z-loss, the row mask, and the mean denominators D, n."""
    c = z.shape[-1]
    u = _divide(xp, z, prm["temperature"])
    has_cap = prm["cap"] > 0
    cap = xp.where(has_cap, prm["cap"], 1.0)
    # tanh(±inf) = ±1, but complex tanh(-inf + 0j) is NaN: cap the finite part only.
    finite = xp.isfinite(xp.real(u))
    capped = xp.where(finite, cap * xp.tanh(xp.where(finite, u, 0.0) / cap),
                      cap * xp.sign(xp.real(u)))
    v = xp.where(has_cap, capped, u)
    # Max shift on the real part: c + log Σ exp(v − c) = log Σ exp(v) holds for any c, also
    # for the complex step, where v carries an imaginary perturbation.
    shift = stop_gradient(xp.max(xp.real(v), axis=-1, keepdims=True))
    lse = shift[..., 0] + xp.log(xp.sum(xp.exp(v - shift), axis=-1))
    logp = v - lse[..., None]
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
    # 0·log 0 = 0: classes with no target mass may have p = 0 (−inf logits).
    ce = -xp.sum(m * xp.where(m != 0, logp, 0.0), axis=-1)
    zl = prm["z_loss"] * lse**2
    if hard:
        denom = xp.sum(vf * xp.sum(prm["weight"] * q0, -1))
        count = xp.sum(vf)
    else:
        denom = count = np.float64(target.shape[0])
    return ce, zl, vf, denom, count


def reference_rows(xp, z, target, prm, hard: bool, stop_gradient=_identity):
    """Each row's share of the differentiated scalar; shape ``z.shape[:-1]``.

    ``z`` may carry leading batch axes (K, N, C): the finite differences evaluate K perturbed
    copies at once.
    """
    ce, zl, vf, denom, count = _terms(xp, z, target, prm, hard, stop_gradient)
    go = prm["go"]
    alpha = xp.where(prm["mean"], go / xp.where(denom > 0, denom, 1.0), go)
    beta = xp.where(prm["mean"], go / xp.where(count > 0, count, 1.0), go)
    return vf * (alpha * ce + beta * zl)


def loss(logits, target, spec: LossSpec | None = None, *, weight=None, **options):
    """The loss value with PyTorch semantics: a float for mean/sum, shape (N,) for none.

    ``logits`` (N, C); ``target`` int (N,) or float (N, C); options as ``LossSpec`` fields.
    """
    from .cases import make_inputs_from_arrays

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
