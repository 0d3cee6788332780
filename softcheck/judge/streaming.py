"""Compare two gradients a block of rows at a time: the same Comparison as ``compare``."""

from __future__ import annotations

import numpy as np

from . import tolerances
from .compare import WORST_ENTRIES, Comparison, Entry, Invariant


#: entries compared at once (2 MiB a float64 array: the few temporaries stay in cache; a
#: block of 16 MiB arrays took 8.7 ns an entry, 2 MiB ones 2.7 ns, on this project's machine)
SUB_ELEMENTS = 2**18
#: skip the ratios of rows that cannot change a number (``StreamedComparison._fast``); off,
#: every ratio is computed (the arithmetic the skip must reproduce: tests/test_stream.py)
SKIP_ROWS = True


class StreamedComparison:
    """``compare`` accumulated over blocks of rows (and, for finite differences, over the
    sampled columns only: the other entries are zero on both sides, ratio 0).

    Per entry the same arithmetic as ``compare``; the worst entries are the first by
    (−ratio, flat index), as ``compare``'s stable argsort orders them."""

    def __init__(self, pair, *, dtype: str, kappa: float, scale: float, classes: int,
                 user=None, mode: str = tolerances.DEFAULT_MODE):
        self.pair, self.dtype, self.kappa, self.scale, self.user = pair, dtype, kappa, scale, user
        self.c = classes
        _, self.atol, self.rtol = tolerances.allowed(dtype, kappa, scale, np.zeros(1), mode)
        self.band_max = 0.0
        self.bad_x = self.bad_ref = self.out_of = self.size = 0
        self.max_abs = self.ratio = 0.0
        self.parts = {True: [0.0, 0.0], False: [0.0, 0.0]}     # target / others: err, ratio
        self.has_target = False
        self.top: list[tuple] = []      # (−ratio, flat, x, ref, is_target, ignored)
        self._buf: np.ndarray | None = None

    def _tolerance(self):
        t = tolerances.Tolerance(self.atol, self.rtol).override(self.user)
        return t.atol, t.rtol

    def update(self, r0: int, x, ref, *, target, valid, band=0.0, cols=None,
               extra=None) -> None:
        """Rows r0.. of both gradients (float64 blocks); ``cols``: the columns they hold
        (all if None); ``target`` (rows,) target class or −1; ``band`` scalar or (rows,);
        ``extra`` per entry (the STORED term, ``tolerances.stored``) or None."""
        x = np.asarray(x, np.float64)
        ref = np.asarray(ref, np.float64)
        band = np.asarray(band, np.float64)
        self.band_max = max(self.band_max, float(np.max(band, initial=0.0)))
        if extra is not None:           # per entry, in the allowed error but not the atol
            extra = np.asarray(extra, np.float64)
            # 0 + e is e: no pass to add a band of 0 (a 16-bit candidate pair's, by default)
            band = extra if band.ndim == 0 and band == 0 else (
                (band[:, None] if band.ndim == 1 else band) + extra)
        target, valid = np.asarray(target), np.asarray(valid)
        step = max(1, SUB_ELEMENTS // max(1, x.shape[1]))
        for i in range(0, x.shape[0], step):      # a few rows at a time: in cache (3× faster)
            j = min(x.shape[0], i + step)
            bi = band[i:j] if band.ndim else band
            xi, ri, ti, vi = x[i:j], ref[i:j], target[i:j], valid[i:j]
            if not self._fast(r0 + i, xi, ri, ti, vi, bi, cols):
                self._general(r0 + i, xi, ri, ti, vi, bi, cols)

    def _fast(self, r0, x, ref, target, valid, band, cols) -> bool:
        """Every entry finite and a positive tolerance (the usual block): the same numbers in
        few passes (no masks; the target entries taken aside); False: use ``_general``.

        Once the worst entries are known, a row's ratios are computed only where they could
        change a number: every allowed error of row i is at least fl(atol + band_i) (the
        same roundings of larger terms; band_i its least band where there is one per
        entry), so fl(max_j err_ij / fl(atol + band_i)) bounds each
        of the row's ratios, and a row whose bound is at most the others' largest ratio, the
        k-th worst and 1 can change none (measured: 1–3 % of rows computed at float32).
        Where most rows could (a 16-bit case's STORED term makes a row's floor loose: ~60 %
        of them), the same bound is taken entry by entry instead (``_spots``)."""
        ua, ur = self._tolerance()
        # the least band of each row (a band per entry: its row's minimum, one pass)
        low = np.min(band, axis=1) if band.ndim == 2 and band.shape[1] else band
        if not ua > 0 or (np.ndim(low) and not np.all(low >= 0)):
            return False
        nb, w = x.shape
        if not w:
            return False
        k = WORST_ENTRIES
        full = len(self.top) >= k and self.top[k - 1][0] < 0
        with np.errstate(invalid="ignore", over="ignore"):   # non-finite: _general
            err, ratio = self._scratch(x.shape)
            np.subtract(x, ref, out=err)
            np.abs(err, out=err)
            colidx, pos = self._positions(target, w, cols)
            rows = np.flatnonzero(pos >= 0)
            tp = pos[rows]
            et = err[rows, tp]
            bt = band[rows] if band.ndim == 1 else (band[rows, tp] if band.ndim else band)
            rt = et / self._allowed(ref[rows, tp], ua, ur, bt)
            err[rows, tp] = -1.0
            emax = np.max(err, axis=1)
            eo = float(np.max(emax))
            if not (np.isfinite(eo) and np.all(np.isfinite(et))):
                return False                       # NaN/Inf somewhere (or ∞ − ∞)
            sel = spots = None
            if SKIP_ROWS and full:
                # below every allowed error of the row: fl(fl(0·rtol + atol) + its least band)
                floor = ua + low if (np.ndim(low) or low) else ua
                bound = emax / floor
                limit = min(self.parts[False][1], -self.top[k - 1][0], 1.0)
                sel = np.flatnonzero(bound > limit)
                if 2 * sel.size > nb:              # most rows: the entries that could
                    sel = None                     # change a number, each by its own bound
                    spots = self._spots(err, ref, band, floor, limit, ua, ur)
            if spots is not None:
                ratio = spots[2]
            elif sel is None:
                self._allowed(ref, ua, ur, band, out=ratio)
                np.divide(err, ratio, out=ratio)   # err 0 → ratio 0; targets (−1) < 0
            else:
                ratio = ratio[:sel.size]
                self._allowed(ref[sel], ua, ur, band[sel] if band.ndim else band, out=ratio)
                np.divide(err[sel], ratio, out=ratio)
        ro = float(np.max(ratio, initial=0.0))
        self.size += nb * self.c
        if (np.asarray(target) >= 0).any():
            self.has_target = True
        rtmax = float(np.max(rt, initial=0.0))
        bmax = max(ro, rtmax)
        if sel is None and spots is None and not full:
            ratio[rows, tp] = rt
            self._keep(r0, ratio, x, ref, colidx, pos, valid, cols is not None)
        else:
            if spots is None and bmax > -self.top[k - 1][0]:   # (full here)
                flat = np.flatnonzero(ratio.ravel() > -self.top[k - 1][0])
                at = flat // w if sel is None else sel[flat // w]
                spots = (at, flat % w, ratio.ravel()[flat])
            if spots is not None:
                self._keep_fast(r0, spots, rows, tp, rt, bmax, x, ref, colidx, pos, valid)
        t, o = self.parts[True], self.parts[False]
        t[0], t[1] = max(t[0], float(np.max(et, initial=0.0))), max(t[1], rtmax)
        o[0], o[1] = max(o[0], eo), max(o[1], ro)
        self.max_abs = max(self.max_abs, t[0], o[0])
        self.ratio = max(self.ratio, bmax)
        if bmax > 1.0:
            self.out_of += int(np.sum(ratio > 1.0)) + int(np.sum(rt > 1.0))
        return True

    def _spots(self, err, ref, band, floor, limit, ua, ur):
        """``(rows, columns, ratios)`` of the entries whose ratio could exceed ``limit``: those
        with err > limit·floor_i (a hair below it: fl(err/floor) > limit implies it), each
        ratio computed as everywhere; every other entry's is at most fl(err/floor) ≤ limit
        (its allowed error is at least the row's floor), so it changes no number."""
        nb, w = err.shape
        thr = np.asarray(limit * floor, np.float64) * (1 - 2.0**-50)
        flat = np.flatnonzero(err > (thr[:, None] if thr.ndim else thr))
        at, col = flat // w, flat % w
        if band.ndim == 2:
            b = band.ravel()[flat]
        else:
            b = band[at] if band.ndim == 1 else band
        vals = err.ravel()[flat] / self._allowed(ref.ravel()[flat], ua, ur, b)
        return at, col, vals

    @staticmethod
    def _allowed(ref, ua, ur, band, out=None):
        """fl(fl(fl(|ref|·rtol) + atol) + band): every entry's allowed error, rounded the
        same way wherever it is computed (a band of 0 is not added: the same numbers)."""
        out = np.abs(ref, out=out) if out is not None else np.abs(np.asarray(ref, np.float64))
        out *= ur
        out += ua
        band = np.asarray(band)
        if band.ndim:
            out += band[:, None] if band.ndim == 1 and out.ndim == 2 else band
        elif band:
            out += band
        return out

    def _scratch(self, shape) -> tuple[np.ndarray, np.ndarray]:
        """Two float64 arrays of ``shape`` kept between calls: fresh ones of a few MiB would
        come from new pages each time (malloc hands such sizes back at once), page faults
        and zeroing costing more than the arithmetic."""
        size = shape[0] * shape[1]
        if self._buf is None or self._buf.shape[1] < size:
            self._buf = np.empty((2, size))
        return self._buf[0, :size].reshape(shape), self._buf[1, :size].reshape(shape)

    def _positions(self, target, w, cols):
        """The block's columns (all, or the sampled ``cols``) and each row's target position
        among them (−1: none)."""
        colidx = np.arange(w) if cols is None else np.asarray(cols)
        if cols is None:
            return colidx, np.asarray(target)
        lookup = np.full(self.c, -1)
        lookup[colidx] = np.arange(w)
        return colidx, np.where(np.asarray(target) >= 0, lookup[np.maximum(target, 0)], -1)

    def _keep_fast(self, r0, spots, rows, tp, rt, bmax, x, ref, colidx, pos,
                   valid) -> None:
        """``_keep`` once the worst entries are known, looking only at entries above the
        k-th worst: ``spots`` (rows, columns, ratios) of the block's non-target entries
        whose ratio was computed (the others are at most it), the target entries' ``rt``
        at (rows, tp)."""
        k = WORST_ENTRIES
        thr = -self.top[k - 1][0] if len(self.top) >= k else -1.0
        if not bmax > thr:
            return None                            # later flat index: ties lose
        at, col, vals = spots
        up = vals > thr
        hit = rt > thr
        at = np.concatenate([at[up], rows[hit]])
        col = np.concatenate([col[up], tp[hit]])
        vals = np.concatenate([vals[up], rt[hit]])
        w = x.shape[1]
        where = at * w + col                       # the block's flat index (ties by it)
        order = np.lexsort((where, -vals))[:k]
        for i, jj, v in zip(at[order], col[order], vals[order]):
            i, jj = int(i), int(jj)
            self.top.append((-float(v), (r0 + i) * self.c + int(colidx[jj]),
                             float(x[i, jj]), float(ref[i, jj]), bool(pos[i] == jj),
                             not bool(valid[i])))
        self.top = sorted(self.top, key=lambda t: (t[0], t[1]))[:k]

    def _general(self, r0, x, ref, target, valid, band, cols) -> None:
        nb = x.shape[0]
        band2 = band[:, None] if band.ndim == 1 else band
        ua, ur = self._tolerance()
        allowed = ua + ur * np.abs(ref) + band2
        fin_ref = np.isfinite(ref)
        self.bad_x += int(np.sum(~np.isfinite(x) & fin_ref))
        self.bad_ref += int(np.sum(~fin_ref))
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.abs(x - ref)
            err = np.where(np.isfinite(err), err, np.inf)
            ratio = np.where(err == 0, 0.0, err / allowed)
        self.size += nb * self.c
        self.out_of += int(np.sum(ratio > 1.0))
        if err.size:
            self.max_abs = max(self.max_abs, float(np.max(err)))
            self.ratio = max(self.ratio, float(np.max(ratio)))
        colidx, pos = self._positions(target, x.shape[1], cols)
        tmask = colidx[None, :] == np.asarray(target)[:, None]
        if (np.asarray(target) >= 0).any():
            self.has_target = True
        for is_t, m in ((True, tmask), (False, ~tmask)):
            p = self.parts[is_t]
            p[0] = max(p[0], float(np.max(err[m], initial=0.0)))
            p[1] = max(p[1], float(np.max(ratio[m], initial=0.0)))
        if cols is not None and len(colidx) < self.c and nb:
            self.parts[False][0] = max(self.parts[False][0], 0.0)   # unsampled: error 0
        self._keep(r0, ratio, x, ref, colidx, pos, valid, cols is not None)

    def _keep(self, r0, ratio, x, ref, colidx, pos, valid, subset) -> None:
        k = WORST_ENTRIES
        flat_r = ratio.ravel()
        if flat_r.size > k:
            kth = np.partition(flat_r, flat_r.size - k)[flat_r.size - k]
            idx = np.flatnonzero(flat_r > kth)
            idx = np.concatenate([idx, np.flatnonzero(flat_r == kth)[:k]])
        else:
            idx = np.arange(flat_r.size)
        w = x.shape[1]
        for f in idx:
            i, jj = divmod(int(f), w)
            j = int(colidx[jj])
            self.top.append((-float(flat_r[f]), (r0 + i) * self.c + j, float(x[i, jj]),
                             float(ref[i, jj]), bool(pos[i] == jj), not bool(valid[i])))
        if subset:                            # unsampled entries: 0 against 0, ratio 0
            sel = set(int(j) for j in colidx)
            n_zero = 0
            for i in range(ratio.shape[0]):
                for j in range(self.c):
                    if j not in sel:
                        self.top.append((0.0, (r0 + i) * self.c + j, 0.0, 0.0, False,
                                         not bool(valid[i])))
                        n_zero += 1
                        if n_zero >= k:
                            break
                if n_zero >= k:
                    break
        self.top = sorted(self.top, key=lambda t: (t[0], t[1]))[:k]

    def merge(self, other: "StreamedComparison") -> None:
        """Fold in ``other``'s blocks (other rows of the same batch): the same numbers as one
        accumulator over all of them (maxima, counts, and the worst entries, each side's first
        by (−ratio, flat index) containing the union's)."""
        self.band_max = max(self.band_max, other.band_max)
        self.bad_x += other.bad_x
        self.bad_ref += other.bad_ref
        self.out_of += other.out_of
        self.size += other.size
        self.max_abs = max(self.max_abs, other.max_abs)
        self.ratio = max(self.ratio, other.ratio)
        for key in (True, False):
            mine, theirs = self.parts[key], other.parts[key]
            mine[0], mine[1] = max(mine[0], theirs[0]), max(mine[1], theirs[1])
        self.has_target = self.has_target or other.has_target
        self.top = sorted(self.top + other.top, key=lambda t: (t[0], t[1]))[:WORST_ENTRIES]

    def result(self, targets: np.ndarray) -> Comparison:
        """The Comparison ``compare`` would have returned (``targets``: (N,) class or −1)."""
        reason = None
        if self.bad_ref:
            reason = f"{self.pair[1]} is not finite at {self.bad_ref} entries"
        elif self.bad_x:
            reason = f"{self.pair[0]} has NaN/Inf at {self.bad_x} of {self.size} entries"
        atol = self.atol + self.band_max
        scale = self.scale
        rel = self.max_abs / scale if scale > 0 else (0.0 if self.max_abs == 0 else float("inf"))
        passed = reason is None and self.ratio <= 1.0
        if not passed and reason is None:
            ua, r = self._tolerance()
            a = atol if self.user is None else ua + self.band_max
            who = "" if self.user is None else " (--atol/--rtol)"
            reason = (f"max error {self.max_abs:.3g} exceeds the allowed {a:.3g} + "
                      f"{r:.1g}·|ref|{who}")
        k = min(WORST_ENTRIES, self.out_of) if self.out_of else WORST_ENTRIES
        worst = []
        for _, flat, xv, rv, is_t, ign in self.top[:k]:
            i, j = divmod(flat, self.c)
            fx, fr = np.isfinite(xv), np.isfinite(rv)
            worst.append(Entry(i, j, is_t, ign, xv if fx else None, rv if fr else None,
                               abs(xv - rv) if fx and fr else None))
        te = None
        if self.has_target:
            def part(p):
                return {"max_abs_error": p[0], "max_rel_error": p[0] / scale if scale > 0
                        else p[0], "ratio": p[1]}
            te = {"target": part(self.parts[True]), "others": part(self.parts[False])}
        return Comparison(self.pair, self.max_abs, rel, atol, self.rtol, self.ratio, passed,
                          reason, tuple(worst), self.user, te)


class StreamedInvariants:
    """``invariants`` accumulated per row: row sums and ignored rows that are not zero."""

    def __init__(self, n: int):
        self.sums, self.l1 = np.zeros(n), np.zeros(n)
        self.nonzero = np.zeros(n, bool)
        self.finite = True

    def update(self, r0: int, g) -> None:
        g = np.asarray(g, np.float64)
        r1 = r0 + g.shape[0]
        l1 = np.sum(np.abs(g), -1)
        # a finite Σ|g| has every entry finite (NaN and ±inf carry into it); only where it
        # is not (an overflow of finite entries, or not) is every entry looked at
        self.finite &= bool(np.all(np.isfinite(l1)) or np.all(np.isfinite(g)))
        self.sums[r0:r1] = np.abs(np.sum(g, -1))
        self.l1[r0:r1] = l1
        self.nonzero[r0:r1] = l1 != 0        # any(g != 0): NaN ≠ 0, and a sum of |g| is 0 only if all are

    def merge(self, other: "StreamedInvariants") -> None:
        """Fold in ``other``'s rows (each row written by one of the two)."""
        self.sums += other.sums
        self.l1 += other.l1
        self.nonzero |= other.nonzero
        self.finite = self.finite and other.finite

    def result(self, method: str, spec, valid, classes: int, *, dtype, kappa, scale,
               band=0.0) -> list[Invariant]:
        out = []
        if not self.finite:
            return out
        if not spec.z_loss and not spec.softcap:
            _, atol, rtol = tolerances.allowed(dtype, kappa, scale, np.zeros(1))
            limit = (atol + band) * classes + rtol * self.l1
            bad = np.flatnonzero(self.sums > limit)
            detail = (f"max |row sum| {float(np.max(self.sums, initial=0)):.3g}"
                      + (f"; rows {bad[:5].tolist()} exceed {float(limit[bad[0]]):.3g}"
                         if bad.size else ""))
            out.append(Invariant("row sums are zero", method, not bad.size, detail))
        ignored = ~valid
        if ignored.any():
            rows = np.flatnonzero(ignored & self.nonzero)
            detail = (f"{int(ignored.sum())} ignored rows" + (
                f"; rows {rows[:5].tolist()} are not zero" if rows.size else " are exactly zero"))
            out.append(Invariant("ignored rows are zero", method, not rows.size, detail))
        return out
