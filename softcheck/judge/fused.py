"""Judge fused linear cross-entropy outputs (loss, grad_x, grad_W, grad_b) and say how one is wrong."""

from __future__ import annotations

import numpy as np

from . import tolerances
from .compare import WORST_ENTRIES, Comparison, Entry

#: the names outputs carry in pairs and diagnoses
LABELS = {"loss": "loss", "grad_x": "grad_x", "grad_w": "grad_W", "grad_b": "grad_b"}


def compare_output(pair: tuple[str, str], x, ref, allowed, atol: float, rtol: float,
                   rows_ignored: np.ndarray | None = None) -> Comparison:
    """Entry-wise |x − ref| ≤ allowed; ``max_rel_error`` is relative to max|ref| (the output's
    own scale); worst entries give (row, column) of the output's 2-D array."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    allowed = np.broadcast_to(np.asarray(allowed, np.float64), ref.shape)
    scale = float(np.max(np.abs(ref), initial=0.0)) or 1.0
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(x - ref), np.inf)
        ratio = np.where(allowed > 0, err / np.where(allowed > 0, allowed, 1), np.where(
            err > 0, np.inf, 0.0))
    reason = None
    worst_ratio = float(np.max(ratio, initial=0.0))
    max_abs = float(np.max(err, initial=0.0))
    if not np.all(finite):
        reason = f"{pair[0]} has NaN/Inf at {int(np.sum(~finite))} of {x.size} entries"
    elif worst_ratio > 1.0:
        reason = (f"max error {max_abs:.3g} exceeds the allowed ({int(np.sum(ratio > 1))} of "
                  f"{ratio.size} entries out of tolerance)")
    passed = reason is None
    flat = _top(ratio, WORST_ENTRIES)
    worst = []
    for f in flat:
        idx = np.unravel_index(int(f), ref.shape) if ref.ndim else ()
        i = int(idx[0]) if len(idx) >= 1 else 0
        j = int(idx[1]) if len(idx) >= 2 else 0
        ign = bool(rows_ignored[i]) if rows_ignored is not None and len(idx) == 2 \
            and pair[0].endswith("grad_x") else False
        e = float(err[idx]) if np.isfinite(err[idx]) else None
        worst.append(Entry(i, j, False, ign, float(x[idx]) if finite[idx] else None,
                           float(ref[idx]), e))
    return Comparison(pair, max_abs, max_abs / scale, atol, rtol, worst_ratio, passed,
                      reason, tuple(worst))


def _top(ratio: np.ndarray, k: int) -> np.ndarray:
    """The flat indices of the k largest ratios, largest first (no full sort of a big array)."""
    flat = ratio.reshape(-1)
    if flat.size <= k:
        return np.argsort(-flat, kind="stable")
    part = np.argpartition(-flat, k - 1)[:k]
    return part[np.argsort(-flat[part], kind="stable")]


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


def diagnose(cand: dict, ref: dict, allowed: dict, fi64, *, no_chain: dict | None = None
             ) -> list[str]:
    """Name the failing output and the pattern: transposed or scaled grad_W, a bias gradient
    not reduced over rows, ignored rows leaking into grad_W, errors confined to a block of
    vocabulary columns (a chunk skipped), the softcap chain factor missing."""
    out: list[str] = []
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
        if no_chain is not None and k in no_chain and np.all(np.abs(c - no_chain[k]) <= a):
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
            if np.any(ign) and _span_residual(c - r, fi64.x[ign]) < 1e-6:
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
        out.append(f"{name}: {100 * frac:.3g} % of entries out of tolerance")
    return out

