"""Compare two gradients entry by entry, and check the invariants that need no reference."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import tolerances
from ..spec import Inputs

WORST_ENTRIES = 3


@dataclass(frozen=True)
class Entry:
    """One gradient entry where a comparison is tightest (or broken)."""

    row: int
    cls: int
    is_target: bool
    ignored: bool
    value: float | None
    reference: float | None
    error: float | None

    def to_dict(self) -> dict:
        return {"row": self.row, "class": self.cls, "is_target": self.is_target,
                "ignored": self.ignored, "value": self.value, "reference": self.reference,
                "error": self.error}


@dataclass(frozen=True)
class Comparison:
    """Max errors of ``pair[0]`` against ``pair[1]``, with the tolerance that judged them.

    ``max_rel_error`` is ``max_abs_error / scale`` (the gradient's scale, see tolerances.py);
    ``ratio`` is the largest error/allowed over the entries: ≤ 1 passes.
    """

    pair: tuple[str, str]
    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    ratio: float
    passed: bool
    reason: str | None = None
    worst: tuple[Entry, ...] = field(default=())
    user: tuple[float | None, float | None] | None = None   # --atol/--rtol, when they judged
    #: the target entries' own error (kernels lose precision there as p → 1), apart from the
    #: other entries': {"max_abs_error", "max_rel_error", "ratio"} for each; None: no target
    target_error: dict | None = None

    def to_dict(self) -> dict:
        d = {"pair": list(self.pair), "max_abs_error": self.max_abs_error,
             "max_rel_error": self.max_rel_error, "atol": self.atol, "rtol": self.rtol,
             "ratio": self.ratio, "passed": self.passed, "reason": self.reason,
             "worst": [e.to_dict() for e in self.worst], "target_error": self.target_error}
        if self.user is not None:
            d["user_atol"], d["user_rtol"] = self.user
        return d


@dataclass(frozen=True)
class Invariant:
    """A property that holds without any reference (row sums zero, ignored rows zero)."""

    name: str
    method: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "passed": self.passed,
                "detail": self.detail}


def digits(value: float | None, reference: float | None) -> tuple[str, str]:
    """Both numbers with enough significant digits to show where they differ (3 at least,
    17 at most): ``2.6e-02`` and ``2.6e-02`` become ``0.026173`` and ``0.026211``."""
    import math

    if (value is None or reference is None or value == reference
            or not math.isfinite(value) or not math.isfinite(reference)):
        return (_fmt(value, 3), _fmt(reference, 3))
    big = max(abs(value), abs(reference))
    diff = abs(value - reference)
    n = 3 if big == 0 or diff == 0 else int(min(17, max(3, math.ceil(math.log10(big / diff)) + 2)))
    return _fmt(value, n), _fmt(reference, n)


def _fmt(x: float | None, n: int) -> str:
    return "—" if x is None else f"{x:.{n}g}"


def target_mask(inputs: Inputs) -> np.ndarray:
    n, c = inputs.logits.shape
    mask = np.zeros((n, c), bool)
    if inputs.spec.hard:
        rows = np.flatnonzero(inputs.valid)
        mask[rows, inputs.target[rows]] = True
    else:
        mask[np.arange(n), np.argmax(inputs.target64, -1)] = True
    return mask


def entries(inputs: Inputs, x: np.ndarray, ref: np.ndarray, order: np.ndarray, k: int) -> tuple[Entry, ...]:
    """The k entries ranked first by ``order`` (flat indices sorted by badness: ``top``)."""
    n, c = x.shape
    is_target = target_mask(inputs)
    valid = inputs.valid
    out = []
    for flat in order[:k]:
        i, j = divmod(int(flat), c)
        xv, rv = float(x[i, j]), float(ref[i, j])
        err = abs(xv - rv) if np.isfinite(xv) and np.isfinite(rv) else None
        out.append(Entry(i, j, bool(is_target[i, j]), not bool(valid[i]),
                         xv if np.isfinite(xv) else None, rv if np.isfinite(rv) else None, err))
    return tuple(out)


def top(ratio: np.ndarray, k: int) -> np.ndarray:
    """The flat indices of the k largest ratios, largest first, ties in index order and NaN
    last: the first k of a stable ``argsort(-ratio)``, without sorting a big array."""
    key = ratio.reshape(-1)
    key = np.where(np.isnan(key), -np.inf, key)
    if key.size <= k:
        return np.argsort(-key, kind="stable")
    t = np.partition(key, key.size - k)[key.size - k]          # the k-th largest
    above = np.flatnonzero(key > t)
    idx = np.sort(np.concatenate([above, np.flatnonzero(key == t)[: k - len(above)]]))
    return idx[np.argsort(-key[idx], kind="stable")]


def stored_term(inputs: Inputs, dtype: str, mode: str = tolerances.DEFAULT_MODE):
    """The bound's STORED term (tolerances.py: the log-probabilities kept in the dtype) for
    ``inputs``' entries, or 0 where the mode and dtype have none.  Memoized on ``inputs``."""
    if not tolerances.stores_logp(dtype, mode):
        return 0.0
    from ..reference.finite_difference import row_stats

    inp = inputs.float64()
    return inputs.memo(("stored", dtype), lambda: stored_of(inp, row_stats(inp), dtype))


def probabilities(inputs64: Inputs) -> np.ndarray:
    """p = softmax(v) of float64 ``inputs64`` (v the logits after temperature, scale and
    softcap; 0 where v is not finite)."""
    from ..reference import analytic

    _, _, v, e, tot, _ = analytic._exp(inputs64, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        e /= tot
        if np.isfinite(np.sum(v)):           # every v finite: nothing to zero (a pass saved)
            return e
        return np.where(np.isfinite(v), e, 0.0)


def parts(stats) -> np.ndarray:
    """S_i, the size of row i's gradient parts (tolerances.py), from a RowStats."""
    return (stats.a + stats.b * stats.lse) / stats.temperature


def stored_of(inputs64: Inputs, stats, dtype: str) -> np.ndarray:
    """STORED(i, j) = S_i·p_ij·(e^{u·|log p_ij|} − 1) of float64 ``inputs64`` with the rows'
    parts S_i from ``stats`` (a RowStats: a streamed block's carries the batch's totals)."""
    return tolerances.stored(dtype, probabilities(inputs64), parts(stats))


def allowed_for(inputs: Inputs, dtype: str, kappa: float, scale: float, ref: np.ndarray,
                mode: str = tolerances.DEFAULT_MODE):
    """``tolerances.allowed`` with the STORED term of ``inputs`` (where its shape is the
    gradient's): (per-entry allowed, atol, rtol)."""
    extra = stored_term(inputs, dtype, mode) if np.shape(ref) == inputs.logits.shape else 0.0
    return tolerances.allowed(dtype, kappa, scale, ref, mode, extra)


def compare(pair: tuple[str, str], x: np.ndarray, ref: np.ndarray, *, inputs: Inputs,
            dtype: str, kappa: float, scale: float, band: float = 0.0,
            user: tuple[float | None, float | None] | None = None,
            mode: str = tolerances.DEFAULT_MODE) -> Comparison:
    """Judge ``x`` against ``ref`` with the per-dtype tolerance (plus an FD band); ``mode``:
    the --tolerance mode (the 16-bit bound's roundings).  ``user``: the user's (atol, rtol)
    replace the derived ones (a None keeps that one); the derived pair is still recorded in
    ``atol``/``rtol``."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    allowed, atol, rtol = allowed_for(inputs, dtype, kappa, scale, ref, mode)
    mine = tolerances.Tolerance(atol, rtol).override(user)
    if user is not None:
        allowed = mine.allowed(ref)
    allowed = allowed + band
    atol += float(np.max(band, initial=0.0))
    bad_x = ~np.isfinite(x) & np.isfinite(ref)
    bad_ref = ~np.isfinite(ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(x - ref)
        err = np.where(np.isfinite(err), err, np.inf)
        ratio_arr = np.where(err == 0, 0.0, err / allowed)
    out_of = int(np.sum(ratio_arr > 1.0))
    # a failing comparison lists only entries out of tolerance; a passing one its tightest
    k = min(WORST_ENTRIES, out_of) if out_of else WORST_ENTRIES
    worst = entries(inputs, x, ref, top(ratio_arr, k), k)
    reason = None
    if bad_ref.any():
        reason = f"{pair[1]} is not finite at {int(bad_ref.sum())} entries"
    elif bad_x.any():
        reason = f"{pair[0]} has NaN/Inf at {int(bad_x.sum())} of {x.size} entries"
    max_abs = float(np.max(err)) if err.size else 0.0
    ratio = float(np.max(ratio_arr)) if ratio_arr.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = reason is None and ratio <= 1.0
    if not passed and reason is None:
        a, r = (atol, rtol) if user is None else (mine.atol + float(np.max(band, initial=0.0)),
                                                  mine.rtol)
        who = "" if user is None else " (--atol/--rtol)"
        reason = f"max error {max_abs:.3g} exceeds the allowed {a:.3g} + {r:.1g}·|ref|{who}"
    return Comparison(pair, max_abs, rel, atol, rtol, ratio, passed, reason, worst, user,
                      _target_error(inputs, err, ratio_arr, scale))


def _target_error(inputs: Inputs, err, ratio_arr, scale: float) -> dict | None:
    """The largest error (absolute, relative to the scale, against the allowed) at the target
    entries and at all the others."""
    if err.shape != inputs.logits.shape:
        return None
    mask = target_mask(inputs)
    if not mask.any():
        return None

    def part(m):
        e = float(np.max(err[m], initial=0.0))
        return {"max_abs_error": e, "max_rel_error": e / scale if scale > 0 else e,
                "ratio": float(np.max(ratio_arr[m], initial=0.0))}

    return {"target": part(mask), "others": part(~mask)}


def determinism(nondet: float, repeat: int, nondet_tol: float | None, atol: float,
                bounded: bool = False) -> Invariant:
    """Repeated calls on identical inputs agree to within --nondet-tol, or else to within
    the case's absolute tolerance ``atol`` (torch gradcheck's ``nondet_tol``, defaulting to
    what the comparison with the reference allows).  ``nondet``: the largest difference, as
    the judge measured it (candidate/record.py), or (``bounded``) an upper bound on it: each
    call's distance from the float64 closed form, row by row (a streamed convention kernel's:
    engine/repeats.py)."""
    allowed = nondet_tol if nondet_tol is not None else atol
    by = " by --nondet-tol" if nondet_tol is not None else ", the case tolerance"
    if nondet == 0:
        detail = f"{repeat} calls on identical inputs: bitwise identical"
    elif math.isinf(nondet):           # a value finite in one call and not in another
        detail = (f"{repeat} calls on identical inputs differ bitwise, by an infinite amount "
                  f"(a value not finite in one of them; allowed {allowed:.3g}{by})")
    elif bounded:
        detail = (f"{repeat} calls on identical inputs differ bitwise, by at most {nondet:.3g} "
                  f"(a bound: each call's distance from the float64 closed form, row by row; "
                  f"allowed {allowed:.3g}{by})")
    else:
        detail = (f"{repeat} calls on identical inputs differ by up to {nondet:.3g} "
                  f"(allowed {allowed:.3g}{by})")
    return Invariant("deterministic", "candidate", bool(nondet <= allowed), detail)


def invariants(method: str, g: np.ndarray, inputs: Inputs, *, dtype: str, kappa: float,
               scale: float, band: float = 0.0) -> list[Invariant]:
    """Row sums are zero (no z-loss, no softcap); ignored rows are exactly zero."""
    spec = inputs.spec
    g = np.asarray(g, np.float64)
    out = []
    if not np.all(np.isfinite(g)):
        return out
    if not spec.z_loss and not spec.softcap:
        _, atol, rtol = tolerances.allowed(dtype, kappa, scale, np.zeros(1))
        sums = np.abs(np.sum(g, -1))
        limit = (atol + band) * g.shape[1] + rtol * np.sum(np.abs(g), -1)
        bad = np.flatnonzero(sums > limit)
        detail = (f"max |row sum| {float(np.max(sums, initial=0)):.3g}"
                  + (f"; rows {bad[:5].tolist()} exceed {float(limit[bad[0]]):.3g}" if bad.size else ""))
        out.append(Invariant("row sums are zero", method, not bad.size, detail))
    ignored = ~inputs.valid
    if ignored.any():
        nz = np.flatnonzero(np.any(g[ignored] != 0, -1))
        rows = np.flatnonzero(ignored)[nz]
        detail = (f"{int(ignored.sum())} ignored rows" + (f"; rows {rows[:5].tolist()} are not zero"
                                                           if rows.size else " are exactly zero"))
        out.append(Invariant("ignored rows are zero", method, not rows.size, detail))
    return out


#: what a loss of 0 where the reference is NaN (every row ignored under mean) is told
ALL_IGNORED_ZERO = ("; the kernel returns 0 there, as Liger-Kernel and TransformerEngine do: "
                    "pass --all-ignored zero if that is what it means to return")


def scale_is_zero(scale, i: int) -> bool:
    """The value's scale is 0 at ``i`` (a mean over no rows: nothing to compute)."""
    sc = np.atleast_1d(np.asarray(scale, np.float64)).ravel()
    return bool(sc[min(i, sc.size - 1)] == 0)


def compare_values(pair: tuple[str, str], x, ref, allowed, atol: float, rtol: float,
                   scale) -> Comparison:
    """Judge forward values (a loss: scalar or per row; lse per row) against float64 ones,
    with ``allowed`` from ``tolerances.loss_allowed``/``lse_allowed``; NaN/Inf never passes
    (a reference NaN — every row ignored under mean — requires a NaN)."""
    x = np.atleast_1d(np.asarray(x, np.float64)).ravel()
    ref = np.atleast_1d(np.asarray(ref, np.float64)).ravel()
    if x.shape != ref.shape:
        return Comparison(pair, float("inf"), float("inf"), atol, rtol, float("inf"), False,
                          f"{pair[0]} has shape {x.shape}, expected {ref.shape}")
    both_nan = np.isnan(x) & np.isnan(ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(both_nan, 0.0, np.abs(x - ref))
        err = np.where(np.isfinite(err), err, np.inf)
        allowed = np.broadcast_to(np.asarray(allowed, np.float64), err.shape)
        ratio = np.where(err == 0, 0.0, err / allowed)
        sc = np.broadcast_to(np.asarray(scale, np.float64), err.shape)
        rel = np.where(err == 0, 0.0, err / np.where(sc > 0, sc, 1.0))
    max_abs = float(np.max(err, initial=0.0))
    worst = float(np.max(ratio, initial=0.0))
    passed = bool(worst <= 1.0)
    reason = None
    if not passed:
        i = int(np.argmax(ratio))
        where = f" (row {i})" if x.size > 1 else ""
        if np.isnan(ref[i]):
            reason = (f"{pair[0]} {x[i]:.8g}{where}, expected NaN (every row ignored under "
                      "mean: 0/0, as PyTorch)" + (ALL_IGNORED_ZERO if x[i] == 0 else ""))
        elif ref[i] == 0 and np.isnan(x[i]) and scale_is_zero(scale, i):
            reason = (f"{pair[0]} NaN{where}, expected 0 (--all-ignored zero: every row "
                      "ignored under mean); a kernel that returns 0/0 as PyTorch does is "
                      "checked with --all-ignored nan, the default")
        else:
            reason = (f"{pair[0]} {x[i]:.8g} vs {ref[i]:.8g}{where}: error {err[i]:.3g} "
                      f"exceeds the allowed {float(allowed[i]):.3g}")
    return Comparison(pair, max_abs, float(np.max(rel, initial=0.0)), atol, rtol, worst,
                      passed, reason)
