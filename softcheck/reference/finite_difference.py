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
added to the band.  Two real evaluations of every entry per probe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..spec import Inputs
from ..suite.config import FD_BUDGET
from .analytic import _exp, row_factors
from .loss import transform
from .sweep import Prepared, sweep_columns

U64 = 2.0**-53
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
    s: np.ndarray | None = None     # Σ exp(v − top) per row (0 where the max is not finite)
    top: np.ndarray | None = None   # max v per row (NaN or ±inf where not finite)
    plain: np.ndarray | None = None  # rows whose every v is finite (their min and max are)

    def rows(self, r0: int, r1: int) -> "RowStats":
        """Rows r0..r1 (a block of a streamed case's)."""
        cut = {k: getattr(self, k)[r0:r1] for k in ("a", "b", "lse", "vmax", "s", "top", "plain")
               if getattr(self, k) is not None}
        return dataclasses.replace(self, **cut)

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
class Probe:
    """A directional derivative along a random direction d (rows orthogonal to the all-ones
    vector), per row, by central differences (``probe_plan`` bounds its error).  The direction itself is not kept
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
    m2 = (f2 + (0.77 * f1 / s if s else 0.0)) / t**2
    return f1, m2, m3, m5, r, gamma


#: the spacing of the subnormal doubles, 2^-1074 (the absolute floor of every rounding)
SUBNORMAL = 2.0**-1074


def fd_plan(st: RowStats, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row step h and predicted error band for ``method`` (see the module docstring)."""
    f1, m2, m3, m5, r, gamma = _bounds(st)
    floor = gamma * SUBNORMAL         # each rounding errs by u·|x| or, below 2^-1022, by this
    noise = gamma * U64 * r + floor
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
            band = (gamma * U64 * kappa * f1 / st.temperature + m3 * h**2 / 6 + m2 * h**2
                    + floor / h)
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
    swept columns, plus the directional probes when the columns are sampled (a probe's two
    real evaluations of an entry cost about half a swept entry's)."""
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
    prep = Prepared(inputs, totals, st)
    mask = None
    probe_list: tuple[Probe, ...] = ()
    if columns is None and budget is not None and EVALS[method] * n * c > budget:
        columns = _choose_columns(inputs, int(budget // (EVALS[method] * n)), priority, seed)
    cols = np.arange(c) if columns is None else np.asarray(columns)
    grad = np.full((n, c), np.nan)
    grad[:, cols] = sweep_columns(prep, cols, h, method)
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


#: byte → its eight bits as signs, bit 0 first (``bitorder="little"``): one gather per eight
#: entries, where unpacking the bits and looking up each one's sign took five times as long
_BYTE_SIGNS = np.array([[1.0 if (b >> i) & 1 else -1.0 for i in range(8)] for b in range(256)])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 counters (arithmetic modulo 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def probe_signs(seed: int, k: int, r0: int, n: int, c: int) -> np.ndarray:
    """Probe k's random signs ±1 on rows r0..r0+n (n, c): bit b of 64-bit word w of row i is
    SplitMix64 of the counter (i·words + w) under a key of (seed, k), so the same drawn whole
    or a block at a time (engine/stream.py)."""
    words = -(-c // 64)
    key = np.random.SeedSequence([seed, 4, k]).generate_state(1, np.uint64)[0]
    counter = (np.arange(r0, r0 + n, dtype=np.uint64)[:, None] * np.uint64(words)
               + np.arange(words, dtype=np.uint64)[None, :] + np.uint64(1))
    x = _splitmix64(key + counter * _GOLDEN).astype("<u8")
    signs = np.take(_BYTE_SIGNS, x.view(np.uint8).reshape(n, 8 * words), axis=0)
    return signs.reshape(n, 64 * words)[:, :c]


def probe_directions(seed: int, k: int, r0: int, z: np.ndarray, plain=None) -> np.ndarray:
    """Probe k's direction on rows r0.. (``z`` those rows' logits): ``probe_signs``, zero on
    non-finite logits, centred over the finite ones (orthogonal to the all-ones vector, along
    which the loss does not change); ``plain``: the rows known to be finite (RowStats.plain),
    so that z need not be looked at."""
    n, c = z.shape
    d = probe_signs(seed, k, r0, n, c)
    if plain is not None and np.all(plain):
        return _centred(d)
    finite = np.isfinite(z)
    if finite.all():
        d -= np.sum(d, -1, keepdims=True) / c
        return d
    d[~finite] = 0.0
    d -= np.where(finite, np.sum(d, -1, keepdims=True)
                  / np.maximum(finite.sum(-1, keepdims=True), 1), 0)
    return d


def probe(prep: Prepared, st: RowStats, k: int, seed: int, project: dict, r0: int = 0
          ) -> Probe:
    """Directional probe k by central differences on the rows of ``prep`` (rows r0.. of the
    batch): each row's derivative along d = probe_directions(k), its band, and the
    projections of the gradients in ``project`` on d (module docstring, "Directional
    probes").  Rows whose logits are all finite, without a softcap, take ``_factorised``'s
    two sums instead of two evaluations of every entry."""
    z = prep.z
    n, c = z.shape
    h, band = probe_plan(st, z)
    signs = probe_signs(seed, k, r0, n, c)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        fast = prep.plain if not prep.feats[0] else np.zeros(n, bool)
        val, l1 = np.empty(n), np.empty(n)
        if fast.any():
            r = slice(None) if fast.all() else np.flatnonzero(fast)
            val[r], l1[r] = _factorised(prep, signs[r], h[r], r)
        slow = np.flatnonzero(~fast)
        d = None
        if slow.size or project:
            d = probe_directions(seed, k, r0, z) if not fast.all() else _centred(signs)
        if slow.size:
            hd = h[slow, None] * d[slow]
            zs = z[slow]
            val[slow] = (prep.rows_at(zs + hd, slow) - prep.rows_at(zs - hd, slow)) / (2 * h[slow])
            l1[slow] = np.sum(np.abs(d[slow]), -1)
            del hd, zs
    return Probe(val, band, l1, project_on(d, project) if project else {})


def _centred(signs: np.ndarray) -> np.ndarray:
    """A row of finite logits' direction: its signs less their mean (probe_directions), in
    place."""
    c = signs.shape[1]
    signs -= np.sum(signs, -1, keepdims=True) / c
    return signs


def _factorised(prep: Prepared, signs: np.ndarray, h: np.ndarray, r) -> tuple:
    """The probe's derivative and Σ|d| on rows ``r`` of ``prep`` (every logit finite, no
    softcap) from two sums per row (module docstring, "Directional probes"): d takes the two
    values d± = ±1 − μ, so exp(v + t·d/T) = exp(v)·exp(t·d±/T) and the row's sum of
    exponentials at z ± h·d is ``e^{±a}·S₊ + e^{±b}·S₋`` with S± the sums over each sign's
    entries, a = h·d₊/T, b = h·d₋/T; Σ m·v moves by ±(h/T)·Σ m·d.  lse₊ − lse₋ is taken as
    log1p(2(sinh a·S₊ + sinh b·S₋)/S'₋): no difference of two nearly equal logarithms."""
    prm, tt = prep.prm, prep.tt
    z = prep.z[r]
    c = z.shape[1]
    temp = float(prm["temperature"]) if prep.feats[1] else 1.0
    shift = prep.shift[r]
    e = np.exp(transform(np, z, prm, prep.feats) - np.where(np.isfinite(shift), shift, 0.0))
    total = np.sum(e, -1)
    tilt = np.einsum("ij,ij->i", e, signs)                  # S₊ − S₋
    del e
    sp, sm = (total + tilt) / 2, (total - tilt) / 2
    ssum = np.sum(signs, -1)
    mu = ssum / c
    dp, dm = 1.0 - mu, -1.0 - mu
    a, b = h * dp / temp, h * dm / temp
    s_minus = np.exp(-a) * sp + np.exp(-b) * sm
    dlse = np.log1p(2 * (np.sinh(a) * sp + np.sinh(b) * sm) / s_minus)
    # Σ m·d: the target's d (index targets) or d₊·Σ_{+} m + d₋·Σ_{−} m
    if prep.index is not None:
        at = signs[np.arange(len(mu)), prep.index[r]]
        md = _rows(tt.msum, r) * np.where(at > 0, dp, dm)
    else:
        m = tt.m[r]
        msum = _rows(tt.msum, r)
        mt = np.einsum("ij,ij->i", m, signs)               # Σ₊ m − Σ₋ m
        md = dp * (msum + mt) / 2 + dm * (msum - mt) / 2
    msum = _rows(tt.msum, r)
    diff = _rows(tt.alpha, r) * (msum * dlse - 2 * (h / temp) * md)
    if prep.feats[2]:
        lse_sum = 2 * np.where(np.isfinite(shift[:, 0]), shift[:, 0], 0.0) + np.log(
            np.exp(a) * sp + np.exp(b) * sm) + np.log(s_minus)
        diff = diff + _rows(tt.beta, r) * prm["z_loss"] * dlse * lse_sum
    diff = _rows(tt.valid, r) * diff
    npos = (c + ssum) / 2
    l1 = npos * np.abs(dp) + (c - npos) * np.abs(dm)
    return diff / (2 * h), l1


def _rows(x, r):
    """Rows ``r`` of a per-row target term (a scalar stays as it is)."""
    return x[r] if np.ndim(x) else x


def probe_plan(st: RowStats, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A probe's step and band per row: a quarter of the coordinate step, four times the
    coordinate band (|d| ≤ 2 bounds the third derivative along d by 4³ times a
    coordinate's), plus the rounding of z ± h·d itself (module docstring)."""
    h, band = fd_plan(st, "central")
    h = h / 4
    f1 = (st.a + st.b * st.lse) / st.temperature
    finite = np.isfinite(z)
    zmax = np.max(np.abs(z if finite.all() else np.where(finite, z, 0.0)), -1)
    return h, 4 * band + 2 * U64 * f1 * (zmax + 4 * h) / h


def project_on(d: np.ndarray, grads: dict) -> dict:
    """Σ_c g_ic d_ic per row for each gradient (entries where d is 0 left out: a NaN or ∞
    gradient on a −inf logit is not the probe's business); one summation per row whatever
    the array's size, so whole and streamed agree."""
    out = {}
    for name, g in grads.items():
        g = np.asarray(g, np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            p = np.einsum("ij,ij->i", g, d)
            # a finite projection had no NaN or ∞ in g, beside a 0 of d or not: the same
            # sums as with them left out (no pass over g to look for them)
            if not np.all(np.isfinite(p)):
                p = np.einsum("ij,ij->i", np.where(d != 0, g, 0.0), d)
        out[name] = p
    return out


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
