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
  the same as evaluating the gradient itself.

The band (the error bound at the chosen h) is reported per case and added to the tolerance of
every pair that involves ``finite_difference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec import Inputs
from ..suite.config import FD_BUDGET
from .analytic import _forward, _grad_v
from .loss import features, params, rows_of, target_terms, transform

U64 = 2.0**-53
CHUNK_ELEMENTS = 2**18     # elements per chunk of a sweep (2 MB of float64: fits in cache)
COMPLEX_STEP = 1e-20


@dataclass(frozen=True)
class RowStats:
    """Per-row magnitudes that bound the gradient and its derivatives (module docstring)."""

    a: np.ndarray      # |α|·Σm
    b: np.ndarray      # 2|β|·COEF
    lse: np.ndarray    # |lse|
    vmax: np.ndarray   # max finite |v| per row
    temperature: float
    softcap: float | None
    classes: int

    @property
    def scale(self) -> float:
        """The gradient's scale: the largest magnitude any entry can have (tolerances.py)."""
        s = np.max(self.a + self.b * self.lse, initial=0.0) / self.temperature
        return float(s)


def row_stats(inputs: Inputs, totals=None) -> RowStats:
    """The per-row magnitudes of ``inputs`` (memoized on it); ``totals``: the batch's mean
    denominators when ``inputs`` is a block of its rows (engine/stream.py)."""
    key = ("row_stats", None if totals is None else tuple(totals))
    return inputs.memo(key, lambda: _row_stats(inputs, totals))


def _row_stats(inputs: Inputs, totals=None) -> RowStats:
    spec = inputs.spec
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        _, t, p, lse = _forward(inputs, np.float64)
        _, alpha, beta, mass = _grad_v(inputs, np.float64, p, lse, totals)
        v = inputs.logits64 / spec.divisor
        if t is not None:
            v = spec.softcap * np.tanh(v / spec.softcap)
    vmax = np.max(np.where(np.isfinite(v), np.abs(v), 0.0), axis=-1)
    a = np.abs(alpha * mass) * inputs.valid
    b = 2 * np.abs(beta) * spec.z_loss
    return RowStats(a, b, np.abs(lse), vmax, spec.divisor, spec.softcap, p.shape[1])


# --------------------------------------------------------------------------------------
# finite differences


@dataclass(frozen=True)
class Probe:
    """A directional derivative along a random direction d (rows orthogonal to the all-ones
    vector), per row, by complex step: exact to rounding.  The direction itself is not kept
    (N·C per probe): only what judging needs, each given gradient's projection Σ_c g_ic d_ic
    and Σ_c |d_ic| per row."""

    value: np.ndarray                          # (N,) the derivative along d
    band: np.ndarray                           # (N,) its error bound
    l1: np.ndarray                             # (N,) Σ_c |d_ic|
    projections: dict                          # name -> (N,) Σ_c g_ic d_ic


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


def _bounds(st: RowStats):
    s, t = st.softcap, st.temperature
    a, b, lse = st.a, st.b, st.lse
    f1 = a + b * lse
    f2 = a / 4 + b * (1 + lse / 4)
    f3 = 0.0962 * a + b * (0.445 + 0.0962 * lse)
    m3 = f3 + ((2.31 * f2 / s + 2 * f1 / s**2) if s else 0.0)
    m3 = m3 / t**3
    m5 = (0.05 * a + b * (1 + 0.05 * lse)) * ((1 + 3 / s) ** 4 if s else 1.0) / t**5
    r = a * (lse + st.vmax) + b * lse**2 / 2
    gamma = 8 + math.log2(max(st.classes, 2))
    return f1, m3, m5, r, gamma


def fd_plan(st: RowStats, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row step h and predicted error band for ``method`` (see the module docstring)."""
    f1, m3, m5, r, gamma = _bounds(st)
    noise = gamma * U64 * r
    cap = st.temperature * min(1.0, st.softcap or 1.0)       # keep h inside the Taylor region
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "central":
            h = np.where(m3 > 0, np.cbrt(3 * noise / m3), cap * 1e-4)
            h = np.clip(np.nan_to_num(h, nan=cap * 1e-4), 1e-12 * cap, 0.25 * cap)
            band = m3 * h**2 / 6 + noise / h
        elif method == "richardson":
            h = np.where(m5 > 0, (360 * noise / m5) ** 0.2, cap * 1e-2)
            h = np.clip(np.nan_to_num(h, nan=cap * 1e-2), 1e-8 * cap, 0.5 * cap)
            band = m5 * h**4 / 480 + 3 * noise / h
        elif method == "complex":
            h = np.full_like(r, COMPLEX_STEP * cap)
            kappa = 1 + st.lse + st.vmax
            band = gamma * U64 * kappa * f1 / st.temperature + m3 * h**2 / 6
        else:
            raise ValueError(method)
    return h, band


#: element evaluations per entry of a swept column (a complex exp and log count as two)
EVALS = {"central": 2, "richardson": 4, "complex": 4}


def default_fd_method(n: int, c: int, budget: float = FD_BUDGET) -> str:
    """The most accurate affordable method: complex step (about twice central's work) while
    every column fits the budget, central differences beyond."""
    return "complex" if EVALS["complex"] * n * c <= budget else "central"


def fd_work(n: int, c: int, budget: float = FD_BUDGET, probes: int = 8) -> float:
    """Element evaluations a case's finite differences spend (for run-time estimates): the
    swept columns, plus the directional probes when the columns are sampled (a probe's
    complex evaluation of an entry costs about half a swept entry's: measured 22 ns vs 50)."""
    sweep = EVALS[default_fd_method(n, c, budget)] * n * c
    return min(sweep, budget) + (probes * n * c / 2 if sweep > budget else 0)


def finite_difference(inputs: Inputs, method: str | None = None, *, step=None,
                      columns: np.ndarray | None = None, budget: float | None = None,
                      probes: int = 8, priority: np.ndarray | None = None,
                      project: dict | None = None,
                      seed: int = 0, totals=None, stats: RowStats | None = None) -> FDResult:
    """Finite-difference gradient of the reference loss.

    Every coordinate while ``EVALS·N·C`` element evaluations fit ``budget``; beyond it a
    subset of columns (every target column, then the columns of the largest ``|priority|``
    entries, then random ones) plus ``probes`` directional derivatives over every coordinate.
    ``step`` overrides the derived per-row step (``softcheck steps``).  ``totals``: the batch's
    mean denominators when ``inputs`` is a block of its rows (engine/stream.py); ``stats``:
    its ``row_stats`` when the caller has them already (a streamed block's, from the first pass).
    """
    n, c = inputs.logits.shape
    method = method or default_fd_method(n, c, budget or FD_BUDGET)
    st = row_stats(inputs, totals) if stats is None else stats
    h, band = fd_plan(st, method)
    if step is not None:
        h = np.broadcast_to(np.asarray(step, np.float64), (n,)).copy()
    z = inputs.logits64
    target = inputs.target64
    prm = params(inputs, totals)
    hard = inputs.spec.hard

    feats, sparse = features(prm), sparse_targets(inputs, prm)
    tt, shift, index = sweep_terms(np, z, target, prm, hard, feats, sparse)

    def rows(zz):
        return rows_of(np, zz, tt, prm, feats=feats, shift=shift, index=index)

    mask = None
    probe_list: tuple[Probe, ...] = ()
    if columns is None and budget is not None and EVALS[method] * n * c > budget:
        columns = _choose_columns(inputs, int(budget // (EVALS[method] * n)), priority, seed)
    cols = np.arange(c) if columns is None else np.asarray(columns)
    grad = np.full((n, c), np.nan)
    k = max(1, min(len(cols), CHUNK_ELEMENTS // max(1, n)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        sweep = _Sweep(z, tt, prm, feats, shift)
        for j0 in range(0, len(cols), k):
            js = cols[j0:j0 + k]
            grad[:, js] = sweep.columns(js, h, method).T
        if columns is not None:
            mask = np.zeros((n, c), bool)
            mask[:, cols] = True
            probe_list = _probes(rows, z, st, probes, seed, project or {})
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


def probe_rng(seed: int, k: int) -> np.random.Generator:
    """Probe k's own generator: its direction is the same drawn whole or a block of rows at a
    time (engine/stream.py)."""
    return np.random.default_rng([seed, 4, k])


def _probes(rows, z, st: RowStats, count: int, seed: int, project: dict) -> tuple[Probe, ...]:
    finite = np.isfinite(z)
    gamma = 8 + math.log2(max(st.classes, 2))
    f1 = st.a + st.b * st.lse
    out = []
    for k in range(count):
        d = probe_rng(seed, k).standard_normal(z.shape)
        d = np.where(finite, d, 0.0)
        d -= np.where(finite, np.sum(d, -1, keepdims=True) / np.maximum(finite.sum(-1, keepdims=True), 1), 0)
        zc = z.astype(np.complex128) + 1j * COMPLEX_STEP * d
        val = np.imag(rows(zc)) / COMPLEX_STEP
        band = gamma * U64 * (1 + st.lse + st.vmax) * f1 * np.sum(np.abs(d), -1) / st.temperature
        proj = {}
        for name, g in project.items():
            with np.errstate(invalid="ignore"):
                proj[name] = np.sum(np.where(d != 0, np.asarray(g) * d, 0.0), -1)
        out.append(Probe(val, band, np.sum(np.abs(d), -1), proj))
    return tuple(out)


def sparse_targets(inputs: Inputs, prm) -> bool:
    """Index targets without smoothing: one non-zero target weight per row (a gather)."""
    return bool(inputs.spec.hard and prm["eps"] == 0.0)


def sweep_terms(xp, z, target, prm, hard, feats, sparse):
    """What every perturbed evaluation of a sweep shares, computed once: the target terms;
    the max-shift constant, the unperturbed rows' max of v (a perturbation moves v by at most
    h/T, far from overflowing exp); and for ``sparse`` the target classes to gather."""
    c = z.shape[-1]
    tt = target_terms(xp, target, prm, hard, c)
    v = transform(xp, z, prm, feats)
    shift = xp.max(xp.where(xp.isfinite(v), v, -xp.inf), axis=-1, keepdims=True)
    index = xp.clip(target, 0, c - 1).astype(np.int64) if sparse else None
    return tt, shift, index


class _Sweep:
    """Column sweeps by updating each row's sum of exponentials (module docstring, "Column
    sweeps")."""

    def __init__(self, z, tt, prm, feats, shift):
        self.z, self.tt, self.prm, self.feats = z, tt, prm, feats
        self.shift = np.where(np.isfinite(shift), shift, 0.0)             # (N, 1)
        self.s = np.zeros(z.shape[0])
        rows = max(1, CHUNK_ELEMENTS // max(1, z.shape[1]))
        for i in range(0, z.shape[0], rows):
            v = transform(np, z[i:i + rows], prm, feats)
            self.s[i:i + rows] = np.sum(np.exp(v - self.shift[i:i + rows]), -1)
            m = tt.m[i:i + rows]
            # the constant Σ m·v left out of value(): where it is not finite the loss is not,
            # and no derivative of the row exists (NaN, as a full evaluation gives)
            self.s[i:i + rows][~np.isfinite(np.sum(np.where(m != 0, m * v, 0.0), -1))] = np.nan

    def value(self, zj, ej, mj, dz):
        """The changing part of each row's value with columns js moved by ``dz``: (N, K)."""
        tt, prm = self.tt, self.prm
        vp = transform(np, zj + dz, prm, self.feats)
        lse = self.shift + np.log(self.s[:, None] - ej + np.exp(vp - self.shift))
        ce = tt.msum[:, None] * lse - np.where(mj != 0, mj * vp, 0.0)
        out = tt.alpha[:, None] * ce
        if self.feats[2]:
            out = out + tt.beta[:, None] * prm["z_loss"] * lse**2
        return tt.valid[:, None] * out

    def columns(self, js, h, method):
        """Derivatives for columns ``js`` of every row: shape (len(js), N)."""
        zj = self.z[:, js]                                                # (N, K)
        ej = np.exp(transform(np, zj, self.prm, self.feats) - self.shift)
        mj = self.tt.m[:, js]
        hh = h[:, None]
        finite = np.isfinite(zj)

        def central(hh):
            step = np.where(finite, (zj + hh) - (zj - hh), 2 * hh)      # exactly representable
            return (self.value(zj, ej, mj, hh) - self.value(zj, ej, mj, -hh)) / step

        if method == "central":
            d = central(hh)
        elif method == "richardson":
            d = (4 * central(hh / 2) - central(hh)) / 3
        else:
            d = np.imag(self.value(zj, ej, mj, 1j * hh)) / hh
        return d.T


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
