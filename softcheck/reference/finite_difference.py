"""The finite-difference reference: float64 differences of ``loss.reference_rows`` (never the
closed form), with a derived step and error band per row.

Finite differences use the rows' independence: shifting column j of *every* row at once and
keeping the per-row values gives the whole column j of the gradient.

Column sweeps
-------------
Moving one entry z_ij changes only v_ij, so the row's sum of exponentials need not be summed
again: with ``S_i = Σ_c exp(v_ic − shift_i)`` computed once, ``S'_i = S_i − exp(v_ij − shift_i)
+ exp(v'_ij − shift_i)`` and ``lse' = shift + log S'``; the row's value changes by
``α(Σm·lse' − m_ij v'_ij) + β·COEF·lse'²`` plus a constant (``Σ_{c≠j} m_ic v_ic``) that cancels
in a central difference and is real under the complex step.  A column costs O(N), every
coordinate O(N·C): a few passes over the logits.  This is still a difference of loss values
(no derivative formula enters): ``tests/test_scale.py`` checks it against differences of whole
evaluations of ``reference_rows``.  Rounding is no worse than a whole evaluation's: S's own
summation error is shared by both sides of a difference.  Where the left-out constant is not
finite (a smoothed target on a −inf logit) the row is NaN, as a whole evaluation gives.

Without a softcap (v = z/T), moving z_ij by ±t multiplies its exponential by e^{±t/T}, so
the difference itself has a closed form: ``lse₊ − lse₋ = log1p(2·e_ij·sinh(t/T)/S'₋)`` with
``S'₋ = S − e_ij + e_ij·e^{−t/T}``, and Σm·v moves by ±m_ij·t/T (sweep.py, ``_factorised``;
rows whose logits and sums are all finite).  It is the same difference of loss values with
no subtraction of two nearly equal logarithms, so it errs less than both sides evaluated and
the band below (derived for evaluated sides) still bounds it.

Step and error band (per row i, along one coordinate)
-----------------------------------------------------
Along a coordinate the derivatives of cross-entropy are cumulants of a Bernoulli(p_j):
|κ2| ≤ 1/4, |κ3| ≤ 1/(6√3) ≈ 0.0962.  With a_i = |α_i|Σm_i (cross-entropy scale), b_i =
2|β_i|·COEF (z-loss), L = |lse_i|::

    |f'| ≤ F1 = a + b·L,   |f''| ≤ F2 = a/4 + b(1 + L/4),   |f'''| ≤ F3 = 0.0962a + b(0.445 + 0.0962L)

through v = S·tanh(u/S) (|g'| ≤ 1, |g''| ≤ 0.77/S, |g'''| ≤ 2/S²) and u = z/T:
``M3 = (F3 + 2.31·F2/S + 2·F1/S²)/T³``.  The row's value is about
``R = a(L + max|v|) + b·L²/2``, evaluated with error ≲ γ·u·R, γ = 8 + log2 C (one rounding per
operation plus the pairwise sum over C).

* central  (f(z+h) − f(z−h))/2h: error ≤ M3·h²/6 + γuR/h, minimal at h = (3γuR/M3)^(1/3)
* richardson (4·D(h/2) − D(h))/3: error ≤ M5·h⁴/480 + 3γuR/h, h = (360γuR/M5)^(1/5), with
  M5 ≈ (0.05a + b(1 + 0.05L))·(1 + 3/S)⁴/T⁵ (an estimate: |κ5| of a Bernoulli is < 0.05)
* complex  Im f(z + ih)/h, h = 1e-20: no subtraction, so no cancellation; error ≈ γ·u·κ·F1/T,
  the same as evaluating the gradient itself, + M3·h²/6 (truncation) + M2·h² where
  M2 = (F2 + 0.77·F1/S)/T²: cos h rounds to 1, so the real part is off by ~h²/2 and a curved
  loss carries that into the imaginary part (a lone class with a z-loss has F1 = 0 there and
  showed it: 1e-42 against a band of 1.5e-43).

Below 2^-1022 a double's spacing is 2^-1074, not u·|x|: every evaluation errs by up to
γ·2^-1074 more, divided by h in the difference.  Under the complex step that reaches the
gradient (1e-20 · 8e-304 is subnormal): probability targets of 1.6e-303 gave an error of
3.2e-304 against a band of 2.8e-318 (hypothesis); the floor γ·2^-1074/h covers it.

The band (the error bound at the chosen h) is reported per case and added to the tolerance of
every pair that involves ``finite_difference``.

Directional probes
------------------
Beyond the budget the sampled columns are joined by probes over every coordinate: central
differences of each row along d = random signs ±1 centred over the row's finite entries
(|d_j| < 2: d takes the two values ±1 − μ, so d_J, J ~ p, spans 2, and through a softcap's
varying slope g'(u) ∈ (0, 1] less than 4, where a coordinate's spans 1).  Each derivative
along d is a cumulant of such a variable (or a chain term of the same degree), so the third
derivative along d is at most 4³·M3; at h_d = h/4 the coordinate band becomes
``4³·M3·(h/4)²/6 + γuR/(h/4) = 4·band`` (without a softcap 8× more than needed).  The
perturbation actually made, fl(z ± fl(h·d)), differs from ±h·d by at most u(|z| + 4h) per
entry, which moves the difference by ``‖g‖₁·2u(max|z| + 4h)/2h`` with ``‖g‖₁ ≤ 2·F1/T``:
added to the band.

Where a row's logits are finite and there is no softcap, d takes two values d± = ±1 − μ, so
``exp(v + t·d/T) = exp(v)·exp(t·d±/T)`` and the row's sum at z ± h·d is
``e^{±a}·S₊ + e^{±b}·S₋`` (S± the sums of exp(v − shift) over each sign's entries, a = h·d₊/T,
b = h·d₋/T): one exponential per entry and two sums instead of two evaluations of every
entry, lse₊ − lse₋ as ``log1p(2(sinh a·S₊ + sinh b·S₋)/S'₋)`` (``_factorised``).  Its roundings
(the factors e^{±a}, e^{±b}: the direction scaled by 1 + O(u), a few roundings of the sums)
are below the evaluated difference's, so the band is kept as derived; other rows are
evaluated on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec import Inputs
from ..suite.config import FD_BUDGET
from .analytic import _exp, row_factors
from .bands import COMPLEX_STEP, SUBNORMAL, U64, RowStats, fd_plan  # noqa: F401 - its API
from .probes import (Probe, probe, probe_directions, probe_plan,  # noqa: F401 - its API
                     probe_signs, project_on)
from .sweep import Prepared, sweep_columns


def row_stats(inputs: Inputs, totals=None) -> RowStats:
    """The per-row magnitudes of ``inputs`` (memoized on it); ``totals``: the batch's mean
    denominators when ``inputs`` is a block of its rows (engine/stream.py)."""
    key = ("row_stats", None if totals is None else tuple(totals))
    return inputs.memo(key, lambda: _row_stats(inputs, totals))


def _row_stats(inputs: Inputs, totals=None) -> RowStats:
    spec = inputs.spec
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        _, _, v, _, tot, mx = _exp(inputs, np.float64)
        lse = (mx + np.log(tot))[:, 0]
        alpha, beta, mass, _, _ = row_factors(inputs, np.float64, totals)
        low = np.min(v, axis=-1)
        if np.isfinite(low).all() and np.isfinite(mx).all():    # max |v| = max(max v, −min v)
            vmax = np.maximum(mx[:, 0], -low)
        else:
            vmax = np.max(np.where(np.isfinite(v), np.abs(v), 0.0), axis=-1)
    a = np.abs(alpha * mass) * inputs.valid
    b = 2 * np.abs(beta) * spec.z_loss
    s = np.where(np.isfinite(mx[:, 0]), tot[:, 0], 0.0)
    plain = np.isfinite(low) & np.isfinite(mx[:, 0])
    return RowStats(a, b, np.abs(lse), vmax, spec.divisor, spec.softcap, v.shape[1], s,
                    mx[:, 0], plain)


# --------------------------------------------------------------------------------------
# finite differences


@dataclass(frozen=True)
class FDResult:
    grad: np.ndarray                  # NaN where a column was not computed
    method: str
    band: np.ndarray                  # predicted max error per row
    step: np.ndarray                  # h per row
    mask: np.ndarray | None = None    # columns computed (None: all of them)
    probes: tuple[Probe, ...] = ()

    @property
    def error_estimate(self) -> float:
        return float(np.max(self.band, initial=0.0))

    @property
    def columns(self) -> int:
        return int(self.grad.shape[1] if self.mask is None else np.sum(np.any(self.mask, 0)))

    @property
    def coverage(self) -> str:
        c = self.grad.shape[1]
        if self.mask is None:
            return "every coordinate"
        return (f"{self.columns} of {c} columns (every target column, the largest |g| entries, "
                f"random columns) + {len(self.probes)} directional probes over every coordinate")


#: element evaluations per entry of a swept column (a complex exp and log count as two)
EVALS = {"central": 2, "richardson": 4, "complex": 4}


def default_fd_method(n: int, c: int, budget: float = FD_BUDGET) -> str:
    """The most accurate affordable method: complex step (about twice central's work) while
    every column fits the budget, central differences beyond."""
    return "complex" if EVALS["complex"] * n * c <= budget else "central"


def fd_work(n: int, c: int, budget: float = FD_BUDGET, probes: int = 8) -> float:
    """Element evaluations a case's finite differences spend (for run-time estimates): the
    swept columns, plus the directional probes when the columns are sampled (a probe's two
    real evaluations of an entry cost about half a swept entry's)."""
    sweep = EVALS[default_fd_method(n, c, budget)] * n * c
    return min(sweep, budget) + (probes * n * c / 2 if sweep > budget else 0)


def finite_difference(inputs: Inputs, method: str | None = None, *, step=None,
                      columns: np.ndarray | None = None, budget: float | None = None,
                      probes: int = 8, priority: np.ndarray | None = None,
                      project: dict | None = None,
                      seed: int = 0, totals=None, stats: RowStats | None = None,
                      evaluated: bool = False) -> FDResult:
    """Finite-difference gradient of the reference loss.

    Every coordinate while ``EVALS·N·C`` element evaluations fit ``budget``; beyond it a
    subset of columns (every target column, then the columns of the largest ``|priority|``
    entries, then random ones) plus ``probes`` directional derivatives over every coordinate.
    ``step`` overrides the derived per-row step (``softcheck steps``).  ``totals``: the batch's
    mean denominators when ``inputs`` is a block of its rows (engine/stream.py); ``stats``:
    its ``row_stats`` when the caller has them already (a streamed block's, from the first pass);
    ``evaluated``: both sides of each difference evaluated (``sweep_columns``).
    """
    n, c = inputs.logits.shape
    method = method or default_fd_method(n, c, budget or FD_BUDGET)
    st = row_stats(inputs, totals) if stats is None else stats
    h, band = fd_plan(st, method)
    if step is not None:
        h = np.broadcast_to(np.asarray(step, np.float64), (n,)).copy()
    prep = Prepared(inputs, totals, st)
    mask = None
    probe_list: tuple[Probe, ...] = ()
    if columns is None and budget is not None and EVALS[method] * n * c > budget:
        columns = _choose_columns(inputs, int(budget // (EVALS[method] * n)), priority, seed)
    cols = np.arange(c) if columns is None else np.asarray(columns)
    grad = np.full((n, c), np.nan)
    grad[:, cols] = sweep_columns(prep, cols, h, method, evaluated)
    if columns is not None:
        mask = np.zeros((n, c), bool)
        mask[:, cols] = True
        probe_list = tuple(probe(prep, st, k, seed, project or {}) for k in range(probes))
    return FDResult(grad, method, band, h, mask, probe_list)


def _choose_columns(inputs: Inputs, count: int, priority, seed: int) -> np.ndarray:
    n, c = inputs.logits.shape
    count = max(1, min(c, count))
    if inputs.spec.hard:
        first = inputs.target[inputs.valid]
    else:
        first = np.argmax(inputs.target64, -1)
    chosen = list(dict.fromkeys(int(j) for j in first))
    if priority is not None:
        # ties in index order (stable): a block-by-block choice finds the same (stream.py)
        flat = np.argsort(-np.abs(np.nan_to_num(priority)), axis=None, kind="stable")[: 4 * count]
        chosen += [int(j) for j in dict.fromkeys(flat % c)]
    rng = np.random.default_rng([seed, 3])
    chosen += [int(j) for j in rng.permutation(c)]
    return np.array(list(dict.fromkeys(chosen))[:count])


def finite_difference_hvp(inputs: Inputs, direction: np.ndarray, gradient_fn, scale: float):
    """Central differences of a gradient function along ``direction``, with an error band.

    The truncation error is estimated from two steps (h, 2h): D(2h) − D(h) ≈ 3·(h²/6)·D''' so
    the truncation at h is about |D(2h) − D(h)|/3; rounding adds γ·u·scale·max|d|/h, with the
    gradient's natural scale (its entries' parts, not the entries: see tolerances.py).
    """
    z = inputs.logits64
    d = np.asarray(direction, np.float64)
    cap = inputs.spec.divisor * min(1.0, inputs.spec.softcap or 1.0)
    h = 1e-5 * cap

    def at(x):
        return gradient_fn(inputs.__class__(x, inputs.target, inputs.weight,
                                             inputs.grad_output, inputs.spec))

    with np.errstate(invalid="ignore"):
        dd = np.where(np.isfinite(z), d, 0.0)
        d1 = (at(z + h * dd) - at(z - h * dd)) / (2 * h)
        d2 = (at(z + 2 * h * dd) - at(z - 2 * h * dd)) / (4 * h)
    gamma = 8 + math.log2(max(z.shape[1], 2))
    # each gradient evaluation errs by ~u·κ·scale, κ = 1 + max|v| + ln C the condition of
    # exp(v − lse) (tolerances.py): logits of 1e4 (the spread regime) cost four digits
    zf = np.abs(z[np.isfinite(z)]) / inputs.spec.divisor
    vmax = float(np.max(zf, initial=0.0))
    if inputs.spec.softcap:
        vmax = min(vmax, inputs.spec.softcap)
    kappa = 1.0 + vmax + math.log(max(z.shape[1], 1))
    band = 2 * np.abs(d2 - d1) / 3 + gamma * U64 * kappa * scale * np.max(np.abs(dd), initial=0.0) * 4 / h
    return d1, float(np.max(band, initial=0.0))
