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


import numpy as np

from ..reference import analytic
from . import patterns, tolerances
from .compare import compare, digits


_FACTORS = {"N (batch size)": lambda n, c, t: n, "1/N": lambda n, c, t: 1 / n,
            "C (classes)": lambda n, c, t: c, "1/C": lambda n, c, t: 1 / c,
            "T (temperature)": lambda n, c, t: t, "1/T": lambda n, c, t: 1 / t,
            "2": lambda n, c, t: 2.0, "1/2": lambda n, c, t: 0.5, "-1": lambda n, c, t: -1.0}


#: the known bugs of a case called as sequences (patterns._sequence_bugs): they explain all
SEQUENCE_BUGS = ("looks like a known bug: the labels are not shifted",
                 "looks like a known bug: the targets are shifted again",
                 "looks like a known bug: the (B, T, V) logits are read as if contiguous")


def diagnose(x, inputs, case, comparisons, invariants, relations=()) -> list[str]:
    """Hints, most specific first, for a candidate gradient ``x`` that failed: degenerate
    outputs, then non-finite entries, then the shape of the error, known bugs, broken
    relations."""
    from ..reference.finite_difference import row_stats

    inp = inputs.float64()
    ref = analytic.gradient(inp)
    kappa = tolerances.condition(inp.logits, case.spec.divisor, case.spec.softcap)
    sc = row_stats(inp).scale
    hints = _degenerate(x, inp, ref, invariants)
    finite = np.isfinite(x)
    if not finite.all():
        return hints + _nonfinite(x, inp, case)
    hints += _zero_rows(x, inp, ref, case.dtype)
    hints += _shape(x, ref, inp, case, kappa, sc)
    for inv in invariants:
        if not inv.passed and inv.name == "ignored rows are zero":
            hints.append("ignored rows must be exactly zero: ignore_index is not applied")
    for desc, g in patterns.known_bugs(inp, (getattr(case, "shape", "nv"),
                                             getattr(case, "shift", 0),
                                             getattr(case, "layout", "") == "transposed")):
        if patterns.explains(x, g, ref, inputs=inp, dtype=case.dtype, kappa=kappa, scale=sc,
                             mode=case.tolerance):
            hints.append(f"looks like a known bug: {desc}")
    shifted = [h for h in hints if h.startswith(SEQUENCE_BUGS)]
    if shifted:
        # every row scored against its neighbour's label: the ignored rows and the zero rows
        # are that, not an ignore_index or a masking bug of their own
        return shifted
    if any(h.startswith("looks like a known bug") for h in hints):
        # a named bug explains the error: a precision guess would point at a wrong cause
        hints = [h for h in hints if not _is_precision(h)]
    precision = any(_is_precision(h) for h in hints)
    # a gradient already named wrong (a constant factor, a known bug) breaks relations as a
    # consequence: naming the relation too would point away from the bug
    named = any(h.startswith(("looks like a known bug", "off by a constant factor",
                              "the target entries cancel"))
                for h in hints)
    for r in relations:
        if not r.passed and not precision and not named:
            hints.append(f"relation '{r.name}' is broken: {r.meaning}")
    worst = max(comparisons, key=lambda c: c.ratio, default=None)
    if worst is not None and worst.worst and not hints:
        e = worst.worst[0]
        hints.append(f"largest error at row {e.row}, class {e.cls}"
                     + (" (the target class)" if e.is_target else "")
                     + (" (an ignored row)" if e.ignored else ""))
    return list(dict.fromkeys(hints))


def _divisor(k: float, inp) -> str:
    """A factor no fixed name explains, read as a wrong mean divisor."""
    s = inp.spec
    n, n_valid = inp.logits.shape[0], int(np.sum(inp.valid))
    if s.reduction == "mean" and s.hard and 0 < n_valid < n and abs(k - n_valid / n) <= 1e-3 * k:
        return (f" = n/N ({n_valid}/{n}): the mean divides by all N rows instead of the n "
                "non-ignored ones (TransformerEngine PR #2476)")
    for m, what in ((round(1 / k), "too large"), (round(k), "too small")):
        if m >= 2 and abs(k - (1 / m if what == "too large" else m)) <= 1e-3 * k:
            frac = f"1/{m}" if what == "too large" else f"{m}"
            eq = "" if frac == f"{k:.6g}" else f" = {frac}"          # not "2 = 2"
            return (f"{eq}: the divisor is {m}× {what} (a gradient-accumulation count "
                    "applied twice or not at all: n_items, unsloth-zoo PR #1023)"
                    if s.reduction == "mean" else eq)
    return ""


def _is_precision(hint: str) -> bool:
    return "rounding level" in hint or "ulps of the largest" in hint


def _degenerate(x, inp, ref, invariants) -> list[str]:
    """Outputs that are no gradient at all, named before anything else."""
    out = []
    if np.all(x == 0) and np.any(ref != 0):
        out.append("the gradient is all zeros (nothing computed, or a buffer never written)")
    elif x.shape == inp.logits.shape and np.array_equal(x, inp.logits64, equal_nan=True):
        out.append("the output is the input logits unchanged (the gradient was never computed, "
                   "or the logits buffer was returned)")
    for inv in invariants:
        if not inv.passed and inv.name == "row sums are zero":
            out.append("gradient rows should sum to zero (softmax is shift-invariant) and do not")
    return out


def _nonfinite(x, inp, case) -> list[str]:
    """Which rows hold NaN/Inf, and what those rows have in common."""
    bad_rows = ~np.all(np.isfinite(x), -1)
    n_bad = int((~np.isfinite(x)).sum())
    z = inp.logits64 / inp.spec.divisor
    zf = np.where(np.isfinite(z), z, -np.inf)
    rmax = np.max(zf, -1)
    # exp overflows beyond ~88.7 (float32 arithmetic) / ~709.8 (float64) and underflows to 0
    # below about -103 / -745 (subnormals included); a function's arithmetic is one of the two,
    # so the rows it must break lie between the float64 and the float32 limits
    gap = np.max(rmax) - rmax
    rows = np.flatnonzero(bad_rows)
    where = f"rows {rows[:6].tolist()}"
    if _between(bad_rows, gap > 745.2, gap > 103.3):
        return [f"NaN/Inf at {n_bad} entries, only in rows far below the batch's largest "
                f"logit ({where}): the softmax is shifted by the batch-wide maximum (or another "
                "shift that is not each row's own maximum): exp underflows to 0/0 there"]
    lp = _log_target_prob(inp, analytic.softmax(z))
    if _between(bad_rows, lp < -745.2, lp < -103.3):
        return [f"NaN/Inf at {n_bad} entries, only in rows whose target probability underflows "
                f"to 0 ({where}; every other row is right): log(p) of a separately computed "
                "softmax; use log_softmax (z - logsumexp z) instead"]
    if np.all((np.abs(rmax) > 88.0)[bad_rows]):
        return [f"NaN/Inf at {n_bad} entries, only in rows with logits beyond exp's range "
                f"({where}): exp overflows or underflows; the softmax probably lacks the max "
                "shift exp(z - max z)"]
    if case.regime == "large":
        return ["NaN/Inf only in the 'large' regime (logits ~1e3): exp overflows; the softmax "
                "probably lacks the max shift exp(z - max z)"]
    return [f"NaN/Inf at {n_bad} entries ({where})"]


def _between(bad, must, may) -> bool:
    """``bad`` is explained by a condition: every row it must break (``must``) is bad, every
    bad row is one it may break (``may``), and there is at least one."""
    return bool(bad.any()) and not np.any(must & ~bad) and not np.any(bad & ~may)


def _log_target_prob(inp, p) -> np.ndarray:
    """log p at each row's target (the most likely target class for dense targets)."""
    from .compare import target_mask

    with np.errstate(divide="ignore"):
        lp = np.log(np.where(target_mask(inp), p, 1.0))
    lp = np.where(target_mask(inp), lp, np.inf)
    return np.min(lp, -1)


def _zero_rows(x, inp, ref, dtype) -> list[str]:
    """Non-ignored rows that are exactly zero where the gradient is not."""
    zero = np.all(x == 0, -1) & np.any(ref != 0, -1) & inp.valid
    if not zero.any():
        return []
    rows = np.flatnonzero(zero)
    p = analytic.softmax(inp.logits64 / inp.spec.divisor)
    pt = np.exp(_log_target_prob(inp, p))[rows]
    why = ""
    if np.all(pt < 1e-6):
        why = (f"; their target probability is tiny ({float(np.max(pt)):.1e} at most): a clip "
               "or eps inside log(p) (e.g. log(max(p, 1e-15))) cuts the gradient off there")
    return [f"rows {rows[:6].tolist()} are exactly zero where the gradient is not{why}"]


def _shape(x, ref, inp, case, kappa, scale) -> list[str]:
    """Sign, constant factor, precision loss, error confined to the target column or one entry."""
    hints = []
    d = x - ref
    rn = float(np.linalg.norm(ref))
    factor_found = False
    if rn > 0:
        k = float(np.vdot(x, ref) / np.vdot(ref, ref))
        resid = float(np.linalg.norm(x - k * ref))
        # claimed only when k·ref explains the error (x within tolerance of it) and k·ref is
        # itself far from the gradient (patterns.DISTINCT tolerances, or k off 1 by more
        # than 1 %: in the confident regime the whole gradient is at float64's rounding
        # level of the scale, yet a divisor bug is a plain factor there): a factor at
        # rounding level is rounding, a factor near 0 is a zeroed gradient (named above)
        kw = dict(inputs=inp, dtype=case.dtype, kappa=kappa, scale=scale, mode=case.tolerance)
        if (resid <= 1e-3 * rn and abs(k) > 1e-3
                and compare(("candidate", "k·ref"), x, k * ref, **kw).passed
                and (abs(k - 1) > 0.01 or compare(("k·ref", "ref"), k * ref, ref,
                                                  **kw).ratio >= patterns.DISTINCT)):
            factor_found = True
            if abs(k + 1) < 1e-3:
                hints.append("sign flipped: this is -∂L/∂z (the ascent direction)")
            else:
                n, c = x.shape
                named = [name for name, f in _FACTORS.items()
                         if abs(k - f(n, c, case.spec.temperature)) <= 1e-3 * abs(k)
                         and name not in ("-1", f"{k:.6g}")     # not "2 = 2"
                         and f(n, c, case.spec.temperature) != 1]
                hints.append(f"off by a constant factor {k:.6g}"
                             + (f" = {named[0]}" if named else _divisor(k, inp)))
    from .compare import allowed_for, target_mask

    allowed = allowed_for(inp, case.dtype, kappa, scale, ref, case.tolerance)[0]
    out = np.abs(d) > allowed
    tmask = target_mask(inp)
    cancel = _target_cancellation(d, ref, out, tmask, inp, case.dtype)
    if cancel:                 # the specific mechanism: no precision advice that admits it
        return hints + cancel
    if not factor_found:
        hints += _precision(x, ref, inp, case, kappa, scale)
    if out.sum() == 1:
        i, j = np.argwhere(out)[0]
        got, want = digits(float(x[i, j]), float(ref[i, j]))
        hints.append(f"only one entry is out of tolerance (row {i}, class {j}"
                     + (", the target class" if tmask[i, j] else "") + f"): got {got}, "
                     f"expected {want}")
    elif out.any() and not out[~tmask].any() and not factor_found:
        hints.append("the error is only in the target column (the -y term)")
    return hints


def _target_cancellation(d, ref, out, tmask, inp, dtype) -> list[str]:
    """Liger PR #1268 → #1329: p_t (times g/N) rounded to a 16-bit dtype before the 1 is
    subtracted.  Its signature: only target entries are out of tolerance, each error at
    most what one rounding of p_t·S_i to the dtype costs (u·p_t·S_i, twice for slack), and
    the worst of them in a row whose p_t is near 1, where p_t − 1 is small."""
    if dtype not in tolerances.LOW_PRECISION or not out.any() or out[~tmask].any():
        return []
    from ..reference.finite_difference import row_stats
    from .compare import parts, probabilities

    rows, cols = np.nonzero(out)
    p = probabilities(inp)[rows, cols]
    s = parts(row_stats(inp))[rows]
    u = tolerances.TABLE[dtype].u
    err = np.abs(d[rows, cols])
    if not np.all(err <= 2 * u * p * s) or float(p[np.argmax(err / s)]) < 0.5:
        return []
    r = np.abs(ref[rows, cols])
    worst = int(np.argmax(err / np.maximum(r, 1e-300)))
    return [f"the target entries cancel: only p_t − 1 is wrong, each by at most one {dtype} "
            f"rounding of p_t (rows {np.unique(rows)[:6].tolist()}; at row {int(rows[worst])}, "
            f"p_t = {float(p[worst]):.4g}, off by {100 * float(err[worst] / max(r[worst], 1e-300)):.3g} %"
            f"): p_t (or p_t·g/N, or the "
            f"softmax's normaliser) is rounded to {dtype} before the 1 is subtracted — "
            f"Liger PR #1268 → #1329; compute p_t − 1 in float32 and round once"]


#: the next coarser arithmetic a function may have slipped into, per case dtype
_LOWER = {"float64": "float32", "float32": "bfloat16"}


def _precision(x, ref, inp, case, kappa, scale) -> list[str]:
    """Errors at a coarser format's rounding level: arithmetic in a lower precision."""
    if case.dtype in tolerances.LOW_PRECISION:
        rel = float(np.max(np.abs(x - ref))) / max(float(np.max(np.abs(ref))), 1e-300)
        u = tolerances.TABLE[case.dtype].u
        if rel > 16 * u:
            return []
        native = ("" if case.tolerance == "native" else
                  f" (--tolerance native accepts plain {case.dtype} arithmetic)")
        allows = ("float32 arithmetic with one final rounding" if case.tolerance == "strict"
                  else "float32 arithmetic, the gradient rounded when stored and again when "
                       "scaled by g, and the log-probabilities stored in it")
        return [f"errors up to {rel / u:.1f} {case.dtype} ulps of the largest entry: "
                f"consistent with intermediate rounding to {case.dtype} (e.g. the softmax or "
                f"the mean's denominator kept in it); the tolerance allows {allows}, as "
                "fused kernels do, so small entries must be right to their own ulp" + native]
    lower = _LOWER.get(case.dtype)
    own = dict(inputs=inp, kappa=kappa, scale=scale)
    if lower is None or compare(("candidate", "analytic"), x, ref, dtype=case.dtype, **own).passed:
        return []
    c = compare(("candidate", "analytic"), x, ref, dtype=lower, **own)
    if not c.passed:
        return []
    return [f"errors at {lower}'s rounding level ({c.max_rel_error:.1e} of the gradient's "
            f"scale): the {case.dtype} function computes in {lower} somewhere (a .float() / "
            f"astype({lower}) cast, a {lower} constant or buffer) and casts back"]
