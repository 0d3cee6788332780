"""Metamorphic relations: symmetries the candidate's gradient must have, judged on it alone.

Each relation transforms a copy of the case's inputs, calls the candidate once more on it
(twice for the batch split), and compares the result with the candidate's own gradient at the
original inputs, transformed the same way.  No reference decides these: a candidate that
agrees with itself under every symmetry of the loss but not with the references is wrong in
a way the references name; one that breaks a symmetry is wrong in a way the relation names.

**Tolerance.**  Both sides carry the candidate dtype's rounding, so a relation allows each
entry twice the per-dtype bound of ``tolerances.allowed`` (taken at the larger condition κ and
scale of the two inputs), plus twice the ``--tolerance native`` band where it applies.  The
shifted logits ``z + c`` are rounded to the dtype (a 16-bit format cannot hold z + 1024
exactly); the float64 closed form's own response to that rounding,
``analytic(z') − analytic(z)`` (≈ 0 when the shift is exact), is added to the expectation, so
the rounding of the transformed input is never blamed on the candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..reference import analytic
from ..reference.finite_difference import row_stats
from ..spec import Inputs
from . import tolerances
from .compare import digits

#: every relation: its name, what it states, and what a break of it points at
RELATIONS: dict[str, tuple[str, str]] = {
    "shift invariance": (
        "the gradient at z + c·1 (a different c per row) equals the gradient at z",
        "the gradient depends on the logits' absolute level: the softmax is shifted by the "
        "batch-wide maximum or another shift that is not each row's own maximum, or "
        "not at all, or the logits are clamped"),
    "class permutation": (
        "permuting the classes (columns, targets, weights, ignore_index alike) permutes the "
        "gradient's columns",
        "classes are not treated alike: a class index or weight read at the wrong position, "
        "or a normalization over the wrong axis"),
    "row permutation": (
        "permuting the rows (targets and a per-row grad_output alike) permutes the gradient's "
        "rows",
        "rows are not independent: something batch-wide (a batch maximum or statistic) or "
        "position-dependent enters each row"),
    "batch split": (
        "for reduction sum/none, the gradients of the two halves of the batch are the whole "
        "batch's gradient",
        "a batch-wide quantity enters each row's gradient (a shared maximum, a row count)"),
    "grad_output linearity": (
        "2·grad_output gives twice the gradient",
        "grad_output is not applied as a plain factor (ignored, applied twice, or added)"),
    "all-equal logits": (
        "with every logit of a row equal, the gradient is 1/C − y (times the reduction "
        "factor), exactly the closed form at p = 1/C",
        "wrong at tied logits (p = 1/C): a tie broken by argmax, a division by the spread of "
        "the logits, or an epsilon that matters there"),
}

Call = Callable[[Inputs], object]      # inputs -> CallResult (grad, error, notes)


@dataclass(frozen=True)
class Relation:
    """One metamorphic relation judged on one case."""

    name: str
    passed: bool
    max_abs_error: float
    max_rel_error: float        # max_abs_error / the gradient's scale
    ratio: float                # largest error / allowed: ≤ 1 passes
    atol: float
    detail: str | None = None   # where it broke (or why it could not be judged)

    @property
    def statement(self) -> str:
        return RELATIONS[self.name][0]

    @property
    def meaning(self) -> str:
        return RELATIONS[self.name][1]

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "max_abs_error": self.max_abs_error,
                "max_rel_error": self.max_rel_error, "ratio": self.ratio, "atol": self.atol,
                "detail": self.detail}


def applicable(spec, batch: int, classes: int, takes: Callable[[str], bool], *,
               positional: bool = False) -> list[str]:
    """The relations that hold for these options (and that the candidate's signature allows);
    ``positional``: rows are positions of sequences (--shift 1: the last of each has no
    label), so moving rows is no symmetry."""
    out = []
    if not spec.softcap and not spec.z_loss:     # tanh and lse² are not shift-invariant
        out.append("shift invariance")
    if classes > 1 and (spec.weight is None or takes("weight")):
        out.append("class permutation")
    if batch > 1 and not positional:
        out.append("row permutation")
        if spec.reduction in ("sum", "none"):
            out.append("batch split")
    if takes("grad_output"):
        out.append("grad_output linearity")
    out.append("all-equal logits")
    return out


def check_relations(call: Call, inputs: Inputs, grad: np.ndarray, *, dtype: str,
                    takes: Callable[[str], bool], seed: int = 0, native: bool = False,
                    user: tuple[float | None, float | None] | None = None,
                    positional: bool = False) -> tuple[Relation, ...]:
    """Judge every applicable relation; ``grad`` is the candidate's (float64) gradient at
    ``inputs``, ``call`` calls the candidate on other inputs.  ``user``: --atol/--rtol, which
    replace the derived per-side tolerance as they do in the comparisons."""
    n, c = inputs.logits.shape
    rng = np.random.default_rng([seed, 18, n, c])
    inputs64 = inputs.float64()
    base = _Judge(dtype, inputs64, native and dtype in tolerances.LOW_PRECISION, user)
    out = []
    for name in applicable(inputs.spec, n, c, takes, positional=positional):
        out.append(_RUNNERS[name](call, inputs, grad, rng, base))
    return tuple(out)


class _Judge:
    """The tolerance of the original case, and the judging of one relation."""

    def __init__(self, dtype: str, inputs64: Inputs, native: bool, user=None):
        self.dtype, self.user = dtype, user
        self.native = native
        self.kappa = _kappa(inputs64)
        self.scale = row_stats(inputs64).scale
        self.band = _native_band(inputs64, dtype) if native else 0.0

    def judge(self, name: str, got: np.ndarray, expected: np.ndarray, *, kappa: float | None = None,
              scale: float | None = None, band: float | None = None,
              original: np.ndarray | None = None) -> Relation:
        """``got`` (the candidate at the transformed inputs) against ``expected``; each side
        is allowed the per-dtype error at its own magnitude (``original``: the candidate's
        gradient the expectation was built from, when it differs from ``expected``)."""
        kappa = max(self.kappa, kappa or 0.0)
        scale = max(self.scale, scale or 0.0)
        band = max(self.band, band or 0.0)
        mine, atol, rtol = tolerances.allowed(self.dtype, kappa, scale, expected)
        other = mine if original is None else tolerances.allowed(self.dtype, kappa, scale,
                                                                  original)[0]
        if self.user is not None:       # --atol/--rtol, per side, as in compare()
            tol = tolerances.Tolerance(atol, rtol).override(self.user)
            atol, rtol = tol.atol, tol.rtol
            mine = tol.allowed(expected)
            other = mine if original is None else tol.allowed(original)
        allowed = mine + other + 2.0 * band
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(got - expected)
        bad = ~np.isfinite(err)
        err = np.where(bad, np.inf, err)
        ratio_arr = np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, 1e-300))
        ratio = float(np.max(ratio_arr, initial=0.0))
        max_abs = float(np.max(err, initial=0.0))
        rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        passed = ratio <= 1.0
        detail = None
        if not passed:
            i, j = np.unravel_index(int(np.argmax(ratio_arr)), ratio_arr.shape)
            g, e = digits(float(got[i, j]), float(expected[i, j]))
            detail = (f"NaN/Inf at {int(bad.sum())} entries; " if bad.any() else "") + (
                f"worst at row {i}, class {j}: got {g}, expected {e} "
                f"({ratio:.3g}× the allowed error)")
        return Relation(name, passed, max_abs, rel, ratio, 2.0 * (atol + band), detail)

    def failed_call(self, name: str, error: str) -> Relation:
        return Relation(name, False, float("inf"), float("inf"), float("inf"), 0.0,
                        f"the candidate failed on the transformed case: {error}")


def _kappa(inputs64: Inputs) -> float:
    s = inputs64.spec
    return tolerances.condition(inputs64.logits, s.divisor, s.softcap)


def _native_band(inputs64: Inputs, dtype: str) -> float:
    """K_NATIVE × the closed form's largest error in the dtype's own arithmetic (as the
    comparisons allow under ``--tolerance native``)."""
    from ..suite.config import numpy_dtype
    from .pairs import native_band

    low = dataclasses.replace(inputs64, logits=inputs64.logits.astype(numpy_dtype(dtype)))
    with np.errstate(invalid="ignore", over="ignore"):
        ref = analytic.gradient(inputs64)
    return native_band(low, ref)


def _grad_of(call: Call, inputs: Inputs):
    res = call(inputs)
    return (None, res.error) if res.error else (np.asarray(res.grad, np.float64), None)


def _shift(call, inputs, grad, rng, judge):
    """z + c_i per row, c_i = ±2^k (k in 0..10): rows apart by up to 2048, so a shift by
    anything but each row's own maximum under- or overflows somewhere."""
    n, c = inputs.logits.shape
    dt = inputs.logits.dtype
    z = inputs.logits64
    shift = rng.choice([-1.0, 1.0], n) * 2.0 ** rng.integers(0, 11, n)
    import ml_dtypes                # lazily: a second to import, and --help needs none of it

    top = float(ml_dtypes.finfo(dt).max) / 2
    finite = z[np.isfinite(z)]
    if finite.size and float(np.max(np.abs(finite))) + 1024 > top:
        shift = np.clip(shift, -1.0, 1.0)
    shifted = (z + shift[:, None]).astype(dt)
    moved = dataclasses.replace(inputs, logits=shifted)
    got, err = _grad_of(call, moved)
    if err:
        return judge.failed_call("shift invariance", err)
    moved64 = moved.float64()
    with np.errstate(invalid="ignore", over="ignore"):
        rounding = analytic.gradient(moved64) - analytic.gradient(inputs.float64())
    return judge.judge("shift invariance", got, grad + rounding, kappa=_kappa(moved64),
                       original=grad,
                       band=_native_band(moved64, judge.dtype) if judge.native else None)


def _class_perm(call, inputs, grad, rng, judge):
    n, c = inputs.logits.shape
    perm = rng.permutation(c)
    ii = inputs.spec.ignore_index
    if ii is not None and 0 <= ii < c:                # keep the ignored class where it is
        k = int(np.flatnonzero(perm == ii)[0])
        perm[k], perm[ii] = perm[ii], perm[k]
    inv = np.argsort(perm)
    if inputs.spec.hard:
        t = inputs.target
        target = np.where(inputs.valid, inv[np.where(inputs.valid, t, 0)], t).astype(t.dtype)
    else:
        target = inputs.target[:, perm]
    weight = None if inputs.weight is None else inputs.weight[perm]
    moved = dataclasses.replace(inputs, logits=inputs.logits[:, perm], target=target, weight=weight)
    got, err = _grad_of(call, moved)
    if err:
        return judge.failed_call("class permutation", err)
    return judge.judge("class permutation", got, grad[:, perm])


def _row_perm(call, inputs, grad, rng, judge):
    n = inputs.logits.shape[0]
    perm = rng.permutation(n)
    if np.array_equal(perm, np.arange(n)):
        perm = np.roll(perm, 1)
    go = np.asarray(inputs.grad_output)
    moved = dataclasses.replace(inputs, logits=inputs.logits[perm], target=inputs.target[perm],
                                grad_output=go[perm] if go.ndim else go)
    got, err = _grad_of(call, moved)
    if err:
        return judge.failed_call("row permutation", err)
    return judge.judge("row permutation", got, grad[perm])


def _split(call, inputs, grad, rng, judge):
    h = inputs.logits.shape[0] // 2
    go = np.asarray(inputs.grad_output)
    parts = []
    for rows in (slice(0, h), slice(h, None)):
        half = dataclasses.replace(inputs, logits=inputs.logits[rows], target=inputs.target[rows],
                                   grad_output=go[rows] if go.ndim else go)
        got, err = _grad_of(call, half)
        if err:
            return judge.failed_call("batch split", err)
        parts.append(got)
    return judge.judge("batch split", np.concatenate(parts), grad)


def _linearity(call, inputs, grad, rng, judge):
    go = np.asarray(inputs.grad_output, np.float64)
    moved = dataclasses.replace(inputs, grad_output=2.0 * go)        # exact in binary
    got, err = _grad_of(call, moved)
    if err:
        return judge.failed_call("grad_output linearity", err)
    return judge.judge("grad_output linearity", got, 2.0 * grad, scale=2.0 * judge.scale,
                       band=2.0 * judge.band)


def _tied(call, inputs, grad, rng, judge):
    z = inputs.logits64
    level = np.max(np.where(np.isfinite(z), z, -np.inf), -1, keepdims=True)
    level = np.where(np.isfinite(level), level, 0.0)
    tied = np.broadcast_to(level, z.shape).astype(inputs.logits.dtype)
    moved = dataclasses.replace(inputs, logits=np.array(tied))
    got, err = _grad_of(call, moved)
    if err:
        return judge.failed_call("all-equal logits", err)
    moved64 = moved.float64()
    return judge.judge("all-equal logits", got, analytic.gradient(moved64), kappa=_kappa(moved64),
                       scale=row_stats(moved64).scale,
                       band=_native_band(moved64, judge.dtype) if judge.native else None)


_RUNNERS = {"shift invariance": _shift, "class permutation": _class_perm,
            "row permutation": _row_perm, "batch split": _split,
            "grad_output linearity": _linearity, "all-equal logits": _tied}
