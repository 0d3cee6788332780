"""Known bugs as gradients: each classic mistake computed in closed form, and when a match counts.

A candidate is told it "looks like a known bug" only when the pattern explains its error well
beyond noise (:func:`explains`):

1. the candidate agrees with the pattern within the case's tolerance (as a reference would);
2. the pattern is far from the correct gradient: its own error is at least ``DISTINCT`` (10)
   times the tolerance, so a pattern that equals the correct gradient on the case (or differs
   from it only at rounding level, as every pattern does in the ``confident`` regime) is
   never offered;
3. the pattern accounts for at least 90 % of the candidate's error: the largest remaining
   difference is at most ``RESIDUAL`` (0.1) of the largest error against the reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..reference import analytic
from ..suite.inputs import sequences, unshifted
from .compare import compare

DISTINCT = 10.0
RESIDUAL = 0.1


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
    go = np.asarray(inputs.grad_output, np.float64)
    g = g * (go[:, None] if go.ndim else go)
    return g / len(p) if inputs.spec.reduction == "mean" else g


def _shifted_target(inputs, k):
    c = inputs.logits.shape[1]
    t = np.where(inputs.valid, (inputs.target + k) % c, inputs.target)
    return analytic.gradient(dataclasses.replace(inputs, target=t))


def _alpha(inputs):
    """The per-row factor of the cross-entropy part (upstream gradient over the denominator)."""
    s = inputs.spec
    n = inputs.logits.shape[0]
    go = np.broadcast_to(np.asarray(inputs.grad_output, np.float64), (n,))
    if s.reduction != "mean":
        return go
    w = np.ones(inputs.logits.shape[1]) if inputs.weight is None else inputs.weight64
    valid = inputs.valid
    denom = float(np.sum(w[np.where(valid, inputs.target, 0)] * valid)) if s.hard else float(n)
    return go / denom if denom > 0 else np.zeros(n)


def _smoothing_on_ignored(inputs):
    """pytorch#73205: ignored rows keep the smoothing term (ε/C)(W·p − w), scaled like the rest."""
    s = inputs.spec
    g = analytic.gradient(inputs)
    ign = ~inputs.valid
    c = inputs.logits.shape[1]
    w = np.ones(c) if inputs.weight is None else inputs.weight64
    p = analytic.softmax(inputs.logits64 / s.divisor)
    g = np.array(g)
    g[ign] = (_alpha(inputs)[ign, None] * s.label_smoothing / c) * (np.sum(w) * p[ign] - w)
    return g


def _zloss_weighted(inputs):
    g0 = _grad(inputs, z_loss=0.0)
    zl = analytic.gradient(inputs) - g0
    wy = inputs.weight64[np.where(inputs.valid, inputs.target, 0)][:, None]
    return g0 + zl * wy


def _p_minus_y(inputs):
    s = inputs.spec
    if s.label_smoothing or s.weight is not None or s.z_loss or s.softcap or s.temperature != 1:
        return None
    z = inputs.logits64
    g = analytic.softmax(z) - inputs.target64
    go = np.broadcast_to(np.asarray(inputs.grad_output, float), (len(z),))[:, None]
    return g * go / (len(z) if s.reduction == "mean" else 1)


def _transformed(inputs, v, dv):
    """The gradient of a kernel whose transform is ``v`` (N, C), derivative ``dv``, in
    place of the case's temperature/scale/softcap: ∂L/∂v by the closed form, times dv."""
    plain = inputs.spec.replace(softcap=None, temperature=1.0, logit_scale=1.0)
    with np.errstate(all="ignore"):
        g = analytic.gradient(dataclasses.replace(inputs, logits=v, spec=plain)) * dv
    return np.where(np.isfinite(inputs.logits64), g, 0.0)


#: vocabulary blocks a Triton/CUDA kernel pads its last block to (powers of two)
BLOCKS = tuple(2 ** k for k in range(6, 17))


def padded_lanes(c: int) -> list[tuple[int, int]]:
    """(P, B): the padded lanes P a kernel with vocabulary block B has past C (0 < P ≤ C)."""
    out: dict[int, int] = {}
    for b in BLOCKS:
        p = -c % b
        if 0 < p <= c and p not in out:
            out[p] = b
    return [(p, b) for p, b in out.items()]


def _padded(inputs, p):
    """Unsloth PR #10616: p padded lanes loaded as −inf, turned into −S by the softcap,
    normalised with the real lanes (their own gradient dropped)."""
    n, c = inputs.logits.shape
    z = np.concatenate([inputs.logits64, np.full((n, p), -np.inf)], axis=1)
    return analytic.gradient(dataclasses.replace(inputs, logits=z))[:, :c]


def _softcap_bugs(inputs):
    """The softcap's shipped formula and order slips (description, gradient)."""
    s = inputs.spec
    out = []
    z = inputs.logits64
    cap, d = s.softcap, s.divisor
    with np.errstate(all="ignore"):
        # unsloth-zoo PR #593: x·tanh(x/c) (a no-op cap) for c·tanh(x/c)
        u = z / d
        out.append(("the softcap is x·tanh(x/S) instead of S·tanh(x/S) (unsloth-zoo PR "
                    "#593: the cap becomes a no-op)",
                    _transformed(inputs, u * np.tanh(u / cap),
                                 (np.tanh(u / cap) + u / cap * (1 - np.tanh(u / cap) ** 2)) / d)))
        if d != 1:
            # TRL PR #5691: the softcap applied before the scale/temperature
            tz = np.tanh(z / cap)
            out.append(("the scale (--logit-scale / --temperature) and the softcap are applied "
                        "in the wrong order: S·tanh(z/S) scaled after, not S·tanh((z·s)/S) "
                        "(TRL PR #5691)", _transformed(inputs, cap * tz / d, (1 - tz * tz) / d)))
    if not s.label_smoothing and s.weight is None:
        c = z.shape[1]
        for p, b in padded_lanes(c):
            out.append((f"padded lanes after the softcap: matches {p} padded lanes (V = {c} "
                        f"padded to {c + p}, a multiple of {b}) loaded as −inf and turned into −S = "
                        f"{-cap:g} by S·tanh(z/S), which take probability mass (Unsloth PR "
                        "#10616): mask the padded lanes after the transform", _padded(inputs, p)))
    return out


#: options a kernel may silently not apply: name → (in use?, the inputs without it)
_OPTIONS = {
    "label smoothing": (lambda s: s.label_smoothing != 0,
                        lambda i: _spec(i, label_smoothing=0.0)),
    "the z-loss": (lambda s: s.z_loss != 0, lambda i: _spec(i, z_loss=0.0)),
    "class weights": (lambda s: s.weight is not None,
                      lambda i: dataclasses.replace(i, weight=None, spec=i.spec.replace(weight=None))),
    "the softcap": (lambda s: bool(s.softcap), lambda i: _spec(i, softcap=None)),
    "the temperature": (lambda s: s.temperature != 1.0, lambda i: _spec(i, temperature=1.0)),
    "the logit scale": (lambda s: s.logit_scale != 1.0, lambda i: _spec(i, logit_scale=1.0)),
}


def _spec(inputs, **changes):
    return dataclasses.replace(inputs, spec=inputs.spec.replace(**changes))


def _dropped_pairs(inputs):
    """Two options not applied at once (each alone is its own pattern, or the function's
    missing keyword): the gradient without both."""
    used = [k for k, (on, _) in _OPTIONS.items() if on(inputs.spec)]
    out = []
    for i, a in enumerate(used):
        for b in used[i + 1:]:
            without = _OPTIONS[b][1](_OPTIONS[a][1](inputs))
            out.append((f"two options are not applied: {a} and {b} (the gradient matches "
                        "the loss without both)", analytic.gradient(without)))
    for k in ("the softcap", "the temperature", "the logit scale"):
        if _OPTIONS[k][0](inputs.spec):
            out.append((f"{k} is not applied (the gradient matches the loss without it)",
                        analytic.gradient(_OPTIONS[k][1](inputs))))
    return out


def _smoothing_unweighted(inputs):
    """Liger PR #420's kind of slip: class weights on the cross-entropy term only, the
    smoothing term (EPS/C)·(p − 1/C) left unweighted (PyTorch's LossNLL.cpp weights it by
    w_c and divides both by Σ w[y])."""
    s = inputs.spec
    eps = s.label_smoothing
    plain = dataclasses.replace(inputs, weight=None, spec=s.replace(weight=None, label_smoothing=1.0))
    smooth = analytic.gradient(plain)
    if s.reduction == "mean":
        valid = inputs.valid
        denom = float(np.sum(inputs.weight64[np.where(valid, inputs.target, 0)] * valid))
        smooth = smooth * (float(valid.sum()) / denom if denom > 0 else 0.0)
    return (1 - eps) * _grad(inputs, label_smoothing=0.0) + eps * smooth


def _read_as_contiguous(inputs, b: int, t: int):
    """--layout transposed: a kernel that reads the (B, T, V) view's memory as if it were
    contiguous pairs its row k (label k, upstream gradient k) with the logits stored there,
    those of position (k mod B, k div B): the gradient with labels and g moved to them."""
    k = np.arange(b * t)
    n = (k % b) * t + k // b
    target = np.empty_like(inputs.target)
    target[n] = inputs.target
    go = np.asarray(inputs.grad_output)
    if go.ndim:
        go = go.copy()
        go[n] = np.asarray(inputs.grad_output)
    return analytic.gradient(dataclasses.replace(inputs, target=target, grad_output=go))


def _sequence_bugs(inputs, shape: str, shift: int, transposed: bool = False) -> list:
    """A logits case called as sequences (``--shape btv`` / ``--shift``): the kernel that
    does not shift the labels it is given (scores position k against label k), or one that
    shifts targets it was given already shifted; under --layout transposed, one that reads
    its (B, T, V) view as if contiguous (TransformerEngine #2746)."""
    s = inputs.spec
    n = inputs.logits.shape[0]
    b, t = sequences(n, shape)
    if not s.hard or t < 2:
        return []
    out = []
    if transposed and b > 1:
        out.append(("the (B, T, V) logits are read as if contiguous: they are a view of a (T, "
                    "B, V) buffer, and row (b, t) was paired with the logits stored at b·T + t "
                    "(the view's strides ignored; TransformerEngine #2746)",
                    _read_as_contiguous(inputs, b, t)))
    if shift:
        lab = unshifted(inputs.target, b, t).reshape(-1)
        return out + [("the labels are not shifted: position k is scored against label k, not "
                 "k + 1 (--shift 1 passes the unshifted labels, as HF's ForCausalLMLoss takes "
                 "them; a kernel given targets already shifted is checked with --shift 0)",
                 analytic.gradient(dataclasses.replace(inputs, target=lab)))]
    if s.ignore_index is None or shape != "btv":
        return out
    tgt = np.asarray(inputs.target).reshape(b, t)
    again = np.concatenate([tgt[:, 1:], np.full((b, 1), s.ignore_index)], 1).reshape(-1)
    return out + [("the targets are shifted again: position k is scored against target k + 1 (the "
             "kernel shifts labels itself: check it with --shift 1, which passes them "
             "unshifted)", analytic.gradient(dataclasses.replace(inputs, target=again)))]


def known_bugs(inputs, sequence: tuple = ("nv", 0)):
    """(description, gradient) of the classic mistakes that apply to this case's options
    (``inputs`` in float64; ``sequence`` its --shape, --shift and whether --layout is
    transposed)."""
    s = inputs.spec
    n = inputs.logits.shape[0]
    n_valid = int(inputs.valid.sum())
    out = [] if tuple(sequence[:2]) == ("nv", 0) else _sequence_bugs(inputs, *sequence)
    if s.label_smoothing:
        other = "others" if s.smoothing_convention == "uniform" else "uniform"
        out.append((f"matches label smoothing convention '{other}' "
                    f"({'EPS/(C-1) off-target, fairseq/Megatron' if other == 'others' else 'EPS/C everywhere, PyTorch'}); "
                    f"softcheck checked '{s.smoothing_convention}': pass --smoothing-convention {other} "
                    "if that is what you implement", _grad(inputs, smoothing_convention=other)))
        out.append(("label smoothing is not applied (matches EPS = 0)", _grad(inputs, label_smoothing=0.0)))
        if s.hard and s.smoothing_convention == "uniform" and n_valid < n:
            out.append(("label smoothing is left on the ignored rows (pytorch#73205): their "
                        "smoothing term (EPS/C)(Σw·p − w) is not masked", _smoothing_on_ignored(inputs)))
    if s.label_smoothing and s.weight is not None and s.hard and s.smoothing_convention == "uniform":
        out.append(("class weights and label smoothing are combined wrongly: the smoothing "
                    "term is not class-weighted (PyTorch weights it by w_c and divides both "
                    "terms by Σ w[y], LossNLL.cpp; Liger PR #420)", _smoothing_unweighted(inputs)))
    out += _dropped_pairs(inputs)
    if s.reduction == "mean":
        out.append(("matches reduction 'sum': the mean's division is missing", _grad(inputs, reduction="sum")))
        g = _grad(inputs, reduction="sum")
        if s.hard and s.ignore_index is not None and n_valid < n:
            out.append(("divides by the batch size N instead of the number (or weight sum) of "
                        "non-ignored rows", g / n))
        if s.hard and s.weight is not None and n_valid:
            out.append(("the weighted mean divides by the number of non-ignored rows instead of "
                        "the weight sum Σ w[y] (PyTorch divides by Σ w[y])", g / n_valid))
    if s.reduction == "sum":
        out.append(("matches reduction 'mean': divides by N where the sum was meant", _grad(inputs, reduction="mean")))
    if s.weight is not None:
        unweighted = dataclasses.replace(inputs, weight=None, spec=s.replace(weight=None))
        out.append(("class weights are ignored" + ("" if s.hard else " (for probability "
                    "targets too, PyTorch weights each class's term)"), analytic.gradient(unweighted)))
    if s.z_loss:
        out.append(("the z-loss term is missing", _grad(inputs, z_loss=0.0)))
        out.append(("the z-loss gradient lacks its factor 2 (COEF·lse·p instead of 2·COEF·lse·p)",
                    _grad(inputs, z_loss=s.z_loss / 2)))
        if s.weight is not None and s.hard:
            out.append(("the z-loss term is weighted by the class weight w[y] (it is not "
                        "weighted)", _zloss_weighted(inputs)))
    if s.temperature != 1.0:
        out.append(("the temperature's chain factor 1/T is missing", _grad(inputs) * s.temperature))
    if s.softcap:
        z = inputs.logits64 / s.divisor
        t = np.tanh(np.where(np.isfinite(z), z, 0) / s.softcap)
        with np.errstate(all="ignore"):
            g = np.where(np.isfinite(z), _grad(inputs) / (1 - t * t), 0.0)
        out.append(("the softcap chain factor 1 - tanh²(z/S) is missing", g))
        out += _softcap_bugs(inputs)
    go = np.asarray(inputs.grad_output)
    if not np.all(go == 1):
        out.append(("the upstream gradient (grad_output) is ignored",
                    analytic.gradient(dataclasses.replace(inputs, grad_output=np.ones_like(go)))))
    if go.ndim and go.size > 1 and not np.all(go == go.flat[0]):
        out.append(("the per-row upstream gradient is read as one scalar: grad_output[0] "
                    "scales every row (Liger #678 / PR #1298, TransformerEngine #2139)",
                    analytic.gradient(dataclasses.replace(inputs, grad_output=np.full_like(go, go.flat[0])))))
    if not s.hard and not np.allclose(np.sum(inputs.target64, -1), 1):
        out.append(("uses p - y, which assumes targets that sum to one; PyTorch accepts any "
                    "non-negative targets and the gradient is p·Σy - y", _p_minus_y(inputs)))
    if s.hard and inputs.logits.shape[1] > 2:
        out.append(("the one-hot is subtracted at the wrong class (y + 1: an off-by-one "
                    "in the target index)", _shifted_target(inputs, 1)))
        out.append(("the one-hot is subtracted at the wrong class (y - 1: an off-by-one "
                    "in the target index)", _shifted_target(inputs, -1)))
    out.append(("softmax is taken over the wrong axis (the batch, not the classes)", _softmax_wrong_axis(inputs)))
    return [(d, g) for d, g in out if g is not None]


def explains(x, pattern, ref, *, inputs, dtype: str, kappa: float, scale: float,
             mode: str = "rounded") -> bool:
    """The module docstring's criterion: the pattern matches ``x`` within tolerance, is at
    least DISTINCT tolerances away from the correct gradient, and explains ≥ 90 % of the
    error."""
    if pattern.shape != x.shape or not np.all(np.isfinite(pattern)):
        return False
    kw = dict(inputs=inputs, dtype=dtype, kappa=kappa, scale=scale, mode=mode)
    if not compare(("candidate", "pattern"), x, pattern, **kw).passed:
        return False
    if compare(("pattern", "analytic"), pattern, ref, **kw).ratio < DISTINCT:
        return False
    err = float(np.max(np.abs(x - ref), initial=0.0))
    return float(np.max(np.abs(x - pattern), initial=0.0)) <= RESIDUAL * err
