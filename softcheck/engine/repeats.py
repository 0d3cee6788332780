"""A streamed convention kernel's ``--repeat`` (engine/stream.py).

The main call is the first: judged, then dropped, with two things kept of it per block of
rows (``Kept``): its SHA-256 digest and each row's largest distance from the float64 closed
form.  Each repeat then comes back whole, as the main call did, and is digested block by
block.  Where a block's digest differs, its rows' distance from the closed form bounds the
difference: |a − b| ≤ |a − ref| + |b − ref|, row by row.  Two full-size gradients are never
held at once (an in-place kernel's gradient is the size of the logits: a kept one would
double them), so a difference is bounded, not measured; for a correct float32 kernel the
bound is a few roundings of the gradient, far below the case's absolute tolerance.

The main call comes first because a fresh process's first torch call can round differently
from its later ones (seen without softcheck): with the repeats first, a difference in the
first call was never kept and could not be bounded; now both sides of every comparison
are judged calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..candidate.shared import digest
from ..reference import analytic
from .blocks import Scaled, block_of


def row_errors(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each row's largest |got − ref| (∞ where it is not finite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        e = got - ref
        np.abs(e, out=e)
        m = np.max(e, -1)
    return np.where(np.isnan(m), np.inf, m)


class Kept:
    """What is kept of the main call for its repeats: a digest per judged block (its first
    row the key) and each row's largest |candidate − closed form| (written by the lanes)."""

    def __init__(self, n: int):
        self.digests: dict[int, bytes] = {}
        self.row_err = np.zeros(n)

    def record(self, r0: int, raw, cand: np.ndarray, ref: np.ndarray) -> None:
        self.digests[r0] = digest(np.asarray(raw))
        self.row_err[r0:r0 + cand.shape[0]] = row_errors(cand, ref)


def repeated(candidate, inputs, policy, kept: Kept, tot64, blocks, threads: int = 2):
    """Calls 2 .. ``policy.repeat`` on the main call's inputs, each compared with ``kept``:
    ``(nondet, error, notes, output)``, nondet 0 where every call is bitwise the first,
    else the bound on their largest difference."""
    worst, notes, output = 0.0, [], ""
    for i in range(1, policy.repeat):
        r = candidate.call(inputs, timeout=policy.limit, repeat=1, variants=False)
        output += r.output or ""
        notes += [n for n in r.notes if n not in notes]
        if r.error is not None:
            return worst, (f"{r.error} (on call {i + 1} of {policy.repeat} on identical "
                           "inputs)"), notes, output
        raw = r.grad
        got = Scaled(raw, r.times) if r.times is not None else raw
        r = None

        def bound(block, raw=raw, got=got):
            r0, r1 = block
            if digest(np.asarray(raw[r0:r1])) == kept.digests.get(r0):
                return None
            ref = analytic.gradient(block_of(inputs, r0, r1), totals=tot64)
            e = row_errors(np.asarray(got[r0:r1], np.float64), ref)
            return float(np.max(kept.row_err[r0:r1] + e, initial=0.0))

        with ThreadPoolExecutor(threads) as pool:
            found = [b for b in pool.map(bound, blocks) if b is not None]
        raw = got = None                      # this call's gradient dropped before the next
        if found:
            worst = max(worst, max(found))
            notes.append(
                f"nondeterministic: call {i + 1} of {policy.repeat} on identical inputs "
                f"differs bitwise from the first in {len(found)} of {len(blocks)} blocks of "
                f"rows, by at most {max(found):.3g} (a bound: each call's distance from the "
                "float64 closed form, row by row; two full-size gradients are not held at once)")
    return worst, None, notes, output
