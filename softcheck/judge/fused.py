"""Judge fused linear cross-entropy outputs (loss, grad_x, grad_W, grad_b) and say how one is wrong."""

from __future__ import annotations

import numpy as np

from .compare import WORST_ENTRIES, Comparison, Entry, top

#: entries judged at once (a block of rows of grad_W): 2^20 float64 = 8 MiB per temporary
ROWS_ELEMENTS = 1 << 20
#: the names outputs carry in pairs and diagnoses
LABELS = {"loss": "loss", "grad_x": "grad_x", "grad_w": "grad_W", "grad_b": "grad_b"}


def compare_output(pair: tuple[str, str], x, ref, bound, rtol: float, const: float,
                   rows_ignored: np.ndarray | None = None) -> Comparison:
    """Entry-wise |x − ref| ≤ bound + rtol·|ref| + const, a block of rows at a time (the
    outputs can be as large as W); ``max_rel_error`` is relative to max|ref| (the output's
    own scale); worst entries give (row, column) of the output's array."""
    x = np.asarray(x)
    ref = np.asarray(ref)
    bound = np.broadcast_to(np.asarray(bound), ref.shape)
    rows = ref.shape[0] if ref.ndim else 1
    step = max(1, ROWS_ELEMENTS // max(1, ref.size // max(rows, 1)))
    scale = max_abs = worst_ratio = 0.0
    out_of = nonfinite = 0
    best: list[tuple[float, tuple, float, float | None, float]] = []
    for i0 in range(0, rows, step):
        sl = slice(i0, i0 + step) if ref.ndim else ()
        xs = np.asarray(x[sl], np.float64)
        rs = np.asarray(ref[sl], np.float64)
        allowed = np.asarray(bound[sl], np.float64) + rtol * np.abs(rs) + const
        finite = np.isfinite(xs)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.where(finite, np.abs(xs - rs), np.inf)
            ratio = np.where(allowed > 0, err / np.where(allowed > 0, allowed, 1),
                             np.where(err > 0, np.inf, 0.0))
        scale = max(scale, float(np.max(np.abs(rs), initial=0.0)))
        max_abs = max(max_abs, float(np.max(err, initial=0.0)))
        worst_ratio = max(worst_ratio, float(np.max(ratio, initial=0.0)))
        out_of += int(np.sum(ratio > 1))
        nonfinite += int(np.sum(~finite))
        for f in top(ratio, WORST_ENTRIES):
            idx = np.unravel_index(int(f), rs.shape) if rs.ndim else ()
            glob = ((idx[0] + i0,) + tuple(idx[1:])) if idx else ()
            best.append((float(ratio[idx]), glob, float(xs[idx]) if finite[idx] else None,
                         float(rs[idx]), float(err[idx])))
    best = sorted(best, key=lambda t: -t[0])[:WORST_ENTRIES]
    worst = []
    for _, idx, val, r, e in best:
        i = int(idx[0]) if len(idx) >= 1 else 0
        j = int(idx[1]) if len(idx) >= 2 else 0
        ign = bool(rows_ignored[i]) if rows_ignored is not None and len(idx) == 2 else False
        worst.append(Entry(i, j, False, ign, val, r, e if np.isfinite(e) else None))
    reason = None
    if nonfinite:
        reason = f"{pair[0]} has NaN/Inf at {nonfinite} of {ref.size} entries"
    elif worst_ratio > 1.0:
        reason = (f"max error {max_abs:.3g} exceeds the allowed ({out_of} of {ref.size} "
                  "entries out of tolerance)")
    atol = float(np.max(bound, initial=0.0)) + const if bound.size < ROWS_ELEMENTS else \
        float(np.max(np.asarray(bound))) + const
    return Comparison(pair, max_abs, max_abs / (scale or 1.0), atol, rtol, worst_ratio,
                      reason is None, reason, tuple(worst))


def _span_residual(res: np.ndarray, basis: np.ndarray) -> float:
    """‖res − its projection on the row space of ``basis``‖ / ‖res‖ (1: unrelated)."""
    if basis.size == 0 or not np.any(res):
        return 1.0
    coef, *_ = np.linalg.lstsq(basis.T, res.T, rcond=None)
    return float(np.linalg.norm(res.T - basis.T @ coef) / np.linalg.norm(res))


def _block(bad: np.ndarray) -> tuple[int, int] | None:
    """(first, last) when the failing indices are one contiguous run short of everything."""
    idx = np.nonzero(bad)[0]
    if idx.size == 0 or idx.size == bad.size or idx[-1] - idx[0] + 1 != idx.size:
        return None
    return int(idx[0]), int(idx[-1])


def _alternatives(fi64):
    """(description, {output: gradient}) of the shipped fused-kernel slips that change the
    loss itself: the fused path dropping label smoothing (Liger #243) or the z-loss, and a
    per-row upstream gradient read as one scalar (Liger PR #1298)."""
    import dataclasses

    from ..reference import fused as ref_fused

    s = fi64.spec
    alts = []
    if s.label_smoothing:
        alts.append(("label smoothing is dropped by the fused path (the outputs match EPS = 0; "
                     "Liger #243)", dataclasses.replace(fi64, spec=s.replace(label_smoothing=0.0))))
    if s.z_loss:
        alts.append(("the z-loss is dropped by the fused path (the outputs match COEF = 0)",
                     dataclasses.replace(fi64, spec=s.replace(z_loss=0.0))))
    go = np.asarray(fi64.grad_output)
    if go.ndim and go.size > 1 and not np.all(go == go.flat[0]):
        alts.append(("the per-row upstream gradient is read as one scalar: grad_output[0] "
                     "scales every row (Liger PR #1298)",
                     dataclasses.replace(fi64, grad_output=np.full_like(go, go.flat[0]))))
    out = []
    for desc, fi in alts:
        g = ref_fused.reference(fi)
        out.append((desc, {"grad_x": g.grad_x, "grad_w": g.grad_w, "grad_b": g.grad_b}))
    return out


def _matches(c, alt, r, a) -> bool:
    """``c`` within tolerance of another gradient ``alt``: the allowed error ``a`` (derived
    for the reference ``r``) scaled by alt's size over r's, as the derivation scales it with
    the gradient (a float32 kernel's roundings of a larger gradient are larger: the bound for
    r alone put a borderline entry out and named no cause, in 1 of 3 CI runs)."""
    ra, aa = float(np.max(np.abs(r), initial=0.0)), float(np.max(np.abs(alt), initial=0.0))
    f = max(1.0, aa / ra) if ra > 0 else 1.0
    return bool(np.all(np.abs(c - alt) <= a * f))


def diagnose(cand: dict, ref: dict, allowed: dict, fi64, *, no_chain: dict | None = None
             ) -> list[str]:
    """Name the failing output and the pattern: transposed or scaled grad_W, a bias gradient
    not reduced over rows, ignored rows leaking into grad_W, errors confined to a block of
    vocabulary columns (a chunk skipped), the softcap chain factor missing, an option the
    fused path drops, a per-row g read as one scalar; else which rows and columns fail."""
    out: list[str] = []
    failing = [k for k in ("grad_x", "grad_w", "grad_b") if k in cand and k in ref
               and np.all(np.isfinite(cand[k])) and np.any(np.abs(cand[k] - ref[k]) > allowed[k])]
    for desc, alt in (_alternatives(fi64) if failing else ()):
        if all(alt[k] is not None and np.all(np.abs(cand[k] - alt[k]) <= allowed[k])
               for k in failing):
            return [f"{', '.join(LABELS[k] for k in failing)}: {desc}"]
    for k in ("grad_x", "grad_w", "grad_b"):
        if k not in cand or k not in ref:
            continue
        c, r, a = cand[k], ref[k], allowed[k]
        if not np.all(np.isfinite(c)):
            out.append(f"{LABELS[k]}: non-finite entries")
            continue
        bad = np.abs(c - r) > a
        if not np.any(bad):
            continue
        name = LABELS[k]
        rr = float(np.sum(r * r))
        s = float(np.sum(c * r)) / rr if rr else 0.0
        if rr and s and np.all(np.abs(c - s * r) <= a * max(abs(s), 1)) and abs(s - 1) > 1e-3:
            out.append(f"{name} is the reference times {s:.6g}: scaled (a wrong reduction "
                       f"divisor, temperature or upstream-gradient factor)")
            continue
        if no_chain is not None and k in no_chain and _matches(c, no_chain[k], r, a):
            out.append(f"{name}: matches the gradient without the softcap chain factor "
                       "1 − tanh²(z/(T·S)): the softcap's derivative is missing")
            continue
        if k == "grad_x":
            valid = fi64.valid
            rows = np.any(bad, 1)
            if np.any(rows) and not np.any(rows & valid):
                out.append(f"grad_x: wrong only on ignored rows ({int(np.sum(rows))} of them): "
                           "ignored rows must get zero gradient")
                continue
        if k == "grad_w":
            ign = ~fi64.valid
            if np.any(ign) and _span_residual(c - r, np.asarray(fi64.x[ign], np.float64)) < 1e-6:
                out.append("grad_W: the error lies in the span of the ignored rows' hidden "
                           "states: ignored rows leak into grad_W (their G is not zeroed)")
                continue
            cols = np.any(bad, 1)
        else:
            cols = bad if k == "grad_b" else None
        if cols is not None and (blk := _block(cols)) is not None:
            out.append(f"{name}: wrong only in vocabulary rows {blk[0]}..{blk[1]} of "
                       f"{cols.size} (one contiguous block): a vocabulary chunk skipped or "
                       "its boundary mishandled")
            continue
        frac = float(np.mean(bad))
        rows = np.flatnonzero(np.any(bad, 1)) if bad.ndim == 2 else np.flatnonzero(bad)
        what = ("rows" if k != "grad_w" else "vocabulary rows")
        where = (f"; {what} {rows[:6].tolist()}" + (" ..." if rows.size > 6 else "")
                 + f" ({rows.size} of {bad.shape[0]})")
        if bad.ndim == 2:
            cols = np.flatnonzero(np.any(bad, 0))
            where += f", columns {cols[:6].tolist()}" + (" ..." if cols.size > 6 else "") \
                + f" ({cols.size} of {bad.shape[1]})"
        out.append(f"{name}: {100 * frac:.3g} % of entries out of tolerance{where}")
    return out

