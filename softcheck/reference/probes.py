"""Directional probes: central differences of each row along a random centred ±1 direction,
their band and each gradient's projection (derived in finite_difference.py's module
docstring, "Directional probes")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bands import U64, RowStats, fd_plan
from .loss import transform
from .sweep import Prepared, row_part


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
    n = prep.z.shape[0]
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
    msum = row_part(tt.msum, r, n)
    if prep.index is not None:
        at = signs[np.arange(len(mu)), prep.index[r]]
        md = msum * np.where(at > 0, dp, dm)
    else:
        mt = np.einsum("ij,ij->i", tt.m[r], signs)         # Σ₊ m − Σ₋ m
        md = dp * (msum + mt) / 2 + dm * (msum - mt) / 2
    diff = row_part(tt.alpha, r, n) * (msum * dlse - 2 * (h / temp) * md)
    if prep.feats[2]:
        lse_sum = 2 * np.where(np.isfinite(shift[:, 0]), shift[:, 0], 0.0) + np.log(
            np.exp(a) * sp + np.exp(b) * sm) + np.log(s_minus)
        diff = diff + row_part(tt.beta, r, n) * prm["z_loss"] * dlse * lse_sum
    diff = row_part(tt.valid, r, n) * diff
    npos = (c + ssum) / 2
    l1 = npos * np.abs(dp) + (c - npos) * np.abs(dm)
    return diff / (2 * h), l1


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
