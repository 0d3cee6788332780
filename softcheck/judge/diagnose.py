"""How a failing gradient is wrong: shape hints and matches against known bug patterns.

Two kinds of evidence, both cheap (O(N·C) each):

* the *shape* of the error: a flipped sign, a constant factor (named when it is N, C, T, ...),
  an error confined to the target column, rows that should sum to zero and do not, ignored
  rows that are not zero, NaN/Inf only where logits are huge;
* *known bugs*: the gradient each classic mistake produces (another label-smoothing
  convention, the wrong reduction or denominator, a missing chain factor, softmax over the
  wrong axis, ...) is computed in closed form, and a candidate that matches one within the
  case's tolerance is told which.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..reference import analytic
from . import tolerances
from .compare import compare


def _grad(inputs, **spec_changes):
    return analytic.gradient(dataclasses.replace(inputs, spec=inputs.spec.replace(**spec_changes)))


def _softmax_wrong_axis(inputs):
    p = analytic.softmax(inputs.logits64 / inputs.spec.divisor, axis=0)
    y = np.zeros_like(p)
    if inputs.spec.hard:
        rows = np.flatnonzero(inputs.valid)
        y[rows, inputs.target[rows]] = 1
    else:
        y = inputs.target64
    g = p - y
    return g / len(p) if inputs.spec.reduction == "mean" else g


def _known_bugs(inputs):
    """(description, gradient) of classic mistakes that apply to this case's options."""
    s = inputs.spec
    n = inputs.logits.shape[0]
    out = []
    if s.label_smoothing:
        other = "others" if s.smoothing_convention == "uniform" else "uniform"
        out.append((f"matches label smoothing convention '{other}' "
                    f"({'EPS/(C-1) off-target, fairseq/Megatron' if other == 'others' else 'EPS/C everywhere, PyTorch'}); "
                    f"softcheck checked '{s.smoothing_convention}': pass --smoothing-convention {other} "
                    "if that is what you implement", _grad(inputs, smoothing_convention=other)))
        out.append(("label smoothing is not applied (matches EPS = 0)", _grad(inputs, label_smoothing=0.0)))
    if s.reduction == "mean":
        out.append(("matches reduction 'sum': the mean's division is missing", _grad(inputs, reduction="sum")))
        if s.hard and (s.ignore_index is not None or s.weight is not None):
            g = _grad(inputs, reduction="sum")
            out.append(("divides by the batch size N instead of the number (or weight sum) of "
                        "non-ignored rows", g / n))
    if s.reduction == "sum":
        out.append(("matches reduction 'mean': divides by N where the sum was meant", _grad(inputs, reduction="mean")))
    if s.weight is not None:
        out.append(("class weights are ignored", _grad(inputs, weight=None)))
    if s.z_loss:
        out.append(("the z-loss term is missing", _grad(inputs, z_loss=0.0)))
        out.append(("the z-loss gradient lacks its factor 2 (COEF·lse·p instead of 2·COEF·lse·p)",
                    _grad(inputs, z_loss=s.z_loss / 2)))
    if s.temperature != 1.0:
        out.append(("the temperature's chain factor 1/T is missing", _grad(inputs) * s.temperature))
    if s.softcap:
        z = inputs.logits64 / s.temperature
        t = np.tanh(np.where(np.isfinite(z), z, 0) / s.softcap)
        with np.errstate(all="ignore"):
            g = np.where(np.isfinite(z), _grad(inputs) / (1 - t * t), 0.0)
        out.append(("the softcap chain factor 1 - tanh²(z/S) is missing", g))
    if not np.all(np.asarray(inputs.grad_output) == 1):
        out.append(("the upstream gradient (grad_output) is ignored",
                    analytic.gradient(dataclasses.replace(inputs, grad_output=np.ones_like(inputs.grad_output)))))
    if not s.hard and not np.allclose(np.sum(inputs.target64, -1), 1):
        out.append(("uses p - y, which assumes targets that sum to one; PyTorch accepts any "
                    "non-negative targets and the gradient is p·Σy - y", _p_minus_y(inputs)))
    out.append(("softmax is taken over the wrong axis (the batch, not the classes)", _softmax_wrong_axis(inputs)))
    return [(d, g) for d, g in out if g is not None]


def _p_minus_y(inputs):
    s = inputs.spec
    if s.label_smoothing or s.weight is not None or s.z_loss or s.softcap or s.temperature != 1:
        return None
    z = inputs.logits64
    g = analytic.softmax(z) - inputs.target64
    go = np.broadcast_to(np.asarray(inputs.grad_output, float), (len(z),))[:, None]
    return g * go / (len(z) if s.reduction == "mean" else 1)


_FACTORS = {"N (batch size)": lambda n, c, t: n, "1/N": lambda n, c, t: 1 / n,
            "C (classes)": lambda n, c, t: c, "1/C": lambda n, c, t: 1 / c,
            "T (temperature)": lambda n, c, t: t, "1/T": lambda n, c, t: 1 / t,
            "2": lambda n, c, t: 2.0, "1/2": lambda n, c, t: 0.5, "-1": lambda n, c, t: -1.0}


def diagnose(x, inputs, case, comparisons, invariants) -> list[str]:
    """Hints, most specific first, for a candidate gradient ``x`` that failed."""

    inp = inputs.float64()
    ref = analytic.gradient(inp)
    hints = []
    finite = np.isfinite(x)
    if not finite.all():
        where = "only in the 'large' regime (logits ~1e3)" if case.regime == "large" else ""
        if case.regime == "large":
            hints.append(f"NaN/Inf {where}: exp overflows; the softmax probably lacks the max "
                         "shift exp(z - max z)")
        else:
            hints.append(f"NaN/Inf at {int((~finite).sum())} entries")
        return hints
    d = x - ref
    rn = float(np.linalg.norm(ref))
    if rn > 0:
        k = float(np.vdot(x, ref) / np.vdot(ref, ref))
        resid = float(np.linalg.norm(x - k * ref))
        # a factor within a few units of the dtype's rounding is rounding, not a bug
        few_ulps = max(1e-6, 4 * tolerances.TABLE[case.dtype].u)
        if resid <= 1e-3 * rn and abs(k - 1) > few_ulps:
            if abs(k + 1) < 1e-3:
                hints.append("sign flipped: this is -∂L/∂z (the ascent direction)")
            else:
                n, c = x.shape
                named = [name for name, f in _FACTORS.items()
                         if abs(k - f(n, c, case.spec.temperature)) <= 1e-3 * abs(k)
                         and name != "-1" and f(n, c, case.spec.temperature) != 1]
                hints.append(f"off by a constant factor {k:.6g}" + (f" = {named[0]}" if named else ""))
        elif case.dtype in tolerances.LOW_PRECISION:
            rel = float(np.max(np.abs(d))) / max(float(np.max(np.abs(ref))), 1e-300)
            u = tolerances.TABLE[case.dtype].u
            if rel <= 16 * u:
                hints.append(
                    f"errors up to {rel / u:.1f} {case.dtype} ulps of the largest entry: "
                    f"consistent with intermediate rounding to {case.dtype} (e.g. the softmax or "
                    "the mean's denominator kept in it); the tolerance allows float32 "
                    "arithmetic with one final rounding, as fused kernels do, so small entries "
                    "must be right to their own ulp (--tolerance native accepts plain "
                    f"{case.dtype} arithmetic)")
    scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-300)
    from .compare import target_mask

    tmask = target_mask(inp)
    big = np.abs(d) > 1e-6 * scale
    if big.any() and not big[~tmask].any():
        hints.append("the error is only in the target column (the -y term)")
    for inv in invariants:
        if not inv.passed and inv.name == "row sums are zero":
            hints.append("gradient rows should sum to zero (softmax is shift-invariant) and do not")
        if not inv.passed and inv.name == "ignored rows are zero":
            hints.append("ignored rows must be exactly zero: ignore_index is not applied")
    kappa = tolerances.condition(inp.logits, case.spec.divisor, case.spec.softcap)
    from ..reference.finite_difference import row_stats

    sc = row_stats(inp).scale
    for desc, g in _known_bugs(inp):
        if g.shape != x.shape or not np.all(np.isfinite(g)):
            continue
        if compare(("candidate", "pattern"), x, g, inputs=inp, dtype=case.dtype, kappa=kappa, scale=sc).passed:
            hints.append(f"looks like a known bug: {desc}")
    worst = max(comparisons, key=lambda c: c.ratio, default=None)
    if worst is not None and worst.worst and not hints:
        e = worst.worst[0]
        hints.append(f"largest error at row {e.row}, class {e.cls}"
                     + (" (the target class)" if e.is_target else "")
                     + (" (an ignored row)" if e.ignored else ""))
    return hints
