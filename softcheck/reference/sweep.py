"""Column sweeps: finite differences of whole columns at O(N) each (the finite-difference
reference's engine; the method and its error band are derived in finite_difference.py,
"Column sweeps")."""

from __future__ import annotations

import numpy as np

from ..spec import Inputs
from .loss import features, params, rows_of, sparse_targets, target_terms, transform

CHUNK_ELEMENTS = 2**18     # elements per chunk of a sweep (2 MB of float64: fits in cache)


class Prepared:
    """What every finite difference of ``inputs`` shares: the option values, the features in
    use, the target terms (sparse for index targets without smoothing), each row's shift and
    its sum of exponentials (from ``st`` where its rows' maxima are finite: the same numbers)."""

    def __init__(self, inputs: Inputs, totals=None, st=None):
        self.z = inputs.logits64
        self.prm = params(inputs, totals)
        self.feats = features(self.prm)
        self.tt, self.shift, self.index = sweep_terms(
            np, self.z, inputs.target64, self.prm, inputs.spec.hard, self.feats,
            sparse_targets(inputs, self.prm), st)
        self.s = None if st is None else st.s
        # rows whose every logit is finite: from ``st`` where known (sweep, probe)
        known = st is not None and st.plain is not None
        self.plain = st.plain if known else np.isfinite(np.sum(self.z, -1))

    def rows(self, zz):
        """Each row's value at logits ``zz`` (real or complex)."""
        return rows_of(np, zz, self.tt, self.prm, feats=self.feats, shift=self.shift,
                       index=self.index)

    def rows_at(self, zz, r):
        """``rows`` of rows ``r`` of the batch, at logits ``zz`` (those rows only)."""
        n = self.z.shape[0]
        tt = type(self.tt)(*(row_part(x, r, n) for x in self.tt))
        return rows_of(np, zz, tt, self.prm, feats=self.feats,
                       shift=row_part(self.shift, r, n), index=row_part(self.index, r, n))


def row_part(x, r, n: int):
    """Rows ``r`` of a per-row term of a batch of ``n`` rows (``r`` None: all of them); a
    scalar, None or a term of another shape stays as it is."""
    if r is None or x is None or not np.ndim(x) or np.shape(x)[0] != n:
        return x
    return x[r]


def sweep_columns(prep: Prepared, cols, h, method: str, evaluated: bool = False
                  ) -> np.ndarray:
    """The finite-difference derivatives of columns ``cols`` of every row: (N, len(cols));
    ``evaluated``: both sides of every difference evaluated, never the closed difference
    (``softcheck steps`` shows the classic step trade-off that way)."""
    n = prep.z.shape[0]
    cols = np.asarray(cols)
    out = np.empty((n, len(cols)))
    k = max(1, min(len(cols), CHUNK_ELEMENTS // max(1, n)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        sweep = _Sweep(prep)
        for j0 in range(0, len(cols), k):
            out[:, j0:j0 + k] = sweep.columns(cols[j0:j0 + k], h, method, evaluated).T
    return out


def sweep_terms(xp, z, target, prm, hard, feats, sparse, st=None):
    """What every perturbed evaluation of a sweep shares, computed once: the target terms;
    the max-shift constant, the unperturbed rows' max of v (a perturbation moves v by at most
    h/T, far from overflowing exp), taken from ``st`` where known; and for ``sparse`` the
    target classes to gather."""
    c = z.shape[-1]
    tt = target_terms(xp, target, prm, hard, c, sparse)
    if st is not None and st.top is not None:
        # a finite max of v has no NaN or +inf beside it: the max over the finite entries
        shift = st.top[:, None].copy()
        redo = np.flatnonzero(~np.isfinite(shift[:, 0]))
        if redo.size:
            v = transform(xp, z[redo], prm, feats)
            shift[redo] = xp.max(xp.where(xp.isfinite(v), v, -xp.inf), axis=-1, keepdims=True)
    else:
        v = transform(xp, z, prm, feats)
        shift = xp.max(xp.where(xp.isfinite(v), v, -xp.inf), axis=-1, keepdims=True)
    index = xp.clip(target, 0, c - 1).astype(np.int64) if sparse else None
    return tt, shift, index


class _Sweep:
    """Column sweeps by updating each row's sum of exponentials (module docstring, "Column
    sweeps")."""

    def __init__(self, prep: Prepared):
        z, tt, prm, feats = prep.z, prep.tt, prep.prm, prep.feats
        self.z, self.tt, self.prm, self.feats, self.index = z, tt, prm, feats, prep.index
        shift = prep.shift
        self.shift = np.where(np.isfinite(shift), shift, 0.0)             # (N, 1)
        n = z.shape[0]
        if prep.s is not None:      # the row statistics' sums, where they used this shift
            self.s = np.array(prep.s, np.float64)
            todo = np.flatnonzero(~np.isfinite(shift[:, 0]) | ~np.isfinite(self.s))
        else:
            self.s, todo = np.zeros(n), np.arange(n)
        rows = max(1, CHUNK_ELEMENTS // max(1, z.shape[1]))
        for i in range(0, len(todo), rows):
            r = todo[i:i + rows]
            v = transform(np, z[r], prm, feats)
            self.s[r] = np.sum(np.exp(v - self.shift[r]), -1)
        # the constant Σ m·v left out of value(): where it is not finite the loss is not,
        # and no derivative of the row exists (NaN, as a full evaluation gives)
        if self.index is not None:
            vy = transform(np, z[np.arange(n), self.index], prm, feats)
            bad = (tt.msum != 0) & ~np.isfinite(tt.msum * vy)
        else:
            bad = np.zeros(n, bool)
            for i in range(0, n, rows):
                v = transform(np, z[i:i + rows], prm, feats)
                m = tt.m[i:i + rows]
                bad[i:i + rows] = ~np.isfinite(np.sum(np.where(m != 0, m * v, 0.0), -1))
        self.s[bad] = np.nan
        # rows whose every logit, shift and sum are finite (``_factorised``)
        self.plain = prep.plain & np.isfinite(self.s) & np.isfinite(shift[:, 0])

    def target_mass(self, js):
        """Columns ``js`` of m: (N, K)."""
        if self.index is None:
            return np.take(self.tt.m, js, axis=1)
        return np.where(js[None, :] == self.index[:, None], self.tt.msum[:, None], 0.0)

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

    def columns(self, js, h, method, evaluated: bool = False):
        """Derivatives for columns ``js`` of every row: shape (len(js), N).  Central and
        Richardson differences without a softcap take ``_factorised``'s closed difference on
        the rows whose logits and sums are finite (unless ``evaluated``); the others evaluate
        both sides."""
        js = np.asarray(js)
        zj = np.take(self.z, js, axis=1)               # (N, K): twice as fast as z[:, js]
        ej = np.exp(transform(np, zj, self.prm, self.feats) - self.shift)
        closed = method != "complex" and not self.feats[0] and not evaluated
        plain = self.plain if closed else None
        if plain is not None and plain.all():
            return self._factorised(js, ej, h, method).T
        mj = self.target_mass(js)
        d = self._evaluated(zj, ej, mj, h, method)
        if plain is not None and plain.any():
            r = np.flatnonzero(plain)
            d[r] = self._factorised(js, ej, h, method, r)
        return d.T

    def _evaluated(self, zj, ej, mj, h, method):
        """Both sides of each difference evaluated (``value``): (N, K)."""
        hh = h[:, None]
        finite = np.isfinite(zj)

        def central(hh):
            step = np.where(finite, (zj + hh) - (zj - hh), 2 * hh)      # exactly representable
            return (self.value(zj, ej, mj, hh) - self.value(zj, ej, mj, -hh)) / step

        if method == "central":
            return central(hh)
        if method == "richardson":
            return (4 * central(hh / 2) - central(hh)) / 3
        return np.imag(self.value(zj, ej, mj, 1j * hh)) / hh

    def _factorised(self, js, ej, h, method, r=None):
        """Rows ``r`` (all if None; every logit and sum finite, no softcap): moving z_ij by
        ±t multiplies its exponential by e^{±t/T}, so the row's sum becomes S − e_ij +
        e_ij·e^{±t/T} and lse₊ − lse₋ = log1p(2·e_ij·sinh(t/T) / S'₋) (no difference of two
        nearly equal logarithms); Σ m·v moves by ±m_ij·t/T.  The same difference of loss
        values as both sides evaluated (module docstring of finite_difference.py)."""
        if r is not None:
            ej, h = ej[r], h[r]

        n, rows_all = len(h), self.z.shape[0]

        def rows(x):
            x = row_part(x, r, rows_all)
            return np.broadcast_to(np.asarray(x, np.float64), (n,) + np.shape(x)[1:])

        tt, prm = self.tt, self.prm
        temp = float(prm["temperature"]) if self.feats[1] else 1.0
        s = rows(self.s)[:, None]
        alpha, msum, valid = rows(tt.alpha), rows(tt.msum), rows(tt.valid)
        if self.index is not None:
            lookup = np.full(self.z.shape[1], -1)
            lookup[js] = np.arange(len(js))
            at = lookup[self.index if r is None else self.index[r]]
            hit = np.flatnonzero(at >= 0)
        else:
            mj = np.take(self.tt.m if r is None else self.tt.m[r], js, axis=1)
        zl = self.feats[2]
        if zl:
            shift, beta = rows(self.shift), rows(tt.beta)

        def central(t):
            a = t / temp                                                  # (n,)
            base = s - ej
            minus = base + ej * np.exp(-a)[:, None]                       # S'₋
            dl = np.log1p(ej * (2 * np.sinh(a))[:, None] / minus)         # lse₊ − lse₋
            out = (alpha * msum)[:, None] * dl
            if self.index is not None:
                out[hit, at[hit]] -= (alpha * msum * 2 * a)[hit]
            else:
                out -= (alpha * 2 * a)[:, None] * mj
            if zl:
                plus = base + ej * np.exp(a)[:, None]
                both = 2 * shift + np.log(plus) + np.log(minus)           # lse₊ + lse₋
                out += (beta * prm["z_loss"])[:, None] * dl * both
            if not np.all(valid == 1):
                out *= valid[:, None]
            out /= (2 * t)[:, None]
            return out

        if method == "central":
            return central(h)
        return (4 * central(h / 2) - central(h)) / 3
