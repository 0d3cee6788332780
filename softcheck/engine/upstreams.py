"""A streamed convention kernel's other upstream gradients (engine/stream.py): each variant's
gradient is one more call of the kernel (g = 1, and a scalar g for ``none``), judged against
the closed form a block of rows at a time, then dropped before the next call, so no two
full-size gradients of these calls live at once.  The same numbers as the whole-array
path's ``case._upstream_pairs``."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..judge import tolerances
from ..judge.compare import stored_of
from ..judge.streaming import StreamedComparison
from ..reference import analytic
from ..reference import finite_difference as references
from .blocks import Scaled, block_of, in_threads


def variant_stats(inputs, g, st: references.RowStats, tot64) -> references.RowStats:
    """The row statistics of the case for upstream gradient ``g``: only α, β depend on g (the
    same arithmetic as ``row_stats``); lse, max |v| and the sums are the first pass's."""
    ig = dataclasses.replace(inputs, grad_output=np.asarray(g, np.float64))
    alpha, beta, mass, _, _ = analytic.row_factors(ig, np.float64, tot64)
    a = np.abs(alpha * mass) * ig.valid
    b = 2 * np.abs(beta) * ig.spec.z_loss
    return dataclasses.replace(st, a=a, b=b)


def judge_variants(call, candidate, inputs, case, *, timeout, tot64, st, kappa, blocks,
                   native_rel: float, targets, valid, threads: int = 2
                   ) -> tuple[list, str | None, list]:
    """``(comparisons, error, notes)``: each (label, g, grad) of ``call.variants`` judged;
    a grad of None is asked of ``candidate`` now (one call, ``repeat`` 1: the repeat is the
    main call's), judged, and dropped before the next."""
    out, notes = [], []
    c = inputs.logits.shape[1]
    for label, g, grad in call.variants:
        g = np.asarray(g, np.float64)
        times = None
        if grad is None:
            r = candidate.call(dataclasses.replace(inputs, grad_output=g), timeout=timeout,
                               repeat=1, variants=False)
            notes += [n for n in r.notes if n not in notes]
            if r.error:
                return out, f"{r.error} (its call for the upstream gradient {label})", notes
            grad, times = r.grad, r.times
            r = None
        if times is not None:
            grad = Scaled(grad, times)
        ig = dataclasses.replace(inputs, grad_output=g)
        stv = variant_stats(inputs, g, st, tot64)
        sc = stv.scale
        stores = tolerances.stores_logp(case.dtype, case.tolerance)

        def fresh():
            return StreamedComparison((f"candidate@{label}", "analytic"), dtype=case.dtype,
                                      kappa=kappa, scale=sc, classes=c, mode=case.tolerance)

        accs = [fresh() for _ in range(threads)]

        def lane(t, grad=grad, ig=ig, stv=stv, sc=sc):
            for r0, r1 in blocks[t::threads]:
                b64 = block_of(ig, r0, r1)
                ref = analytic.gradient(b64, totals=tot64)
                extra = stored_of(b64, stv.rows(r0, r1), case.dtype) if stores else None
                accs[t].update(r0, np.asarray(grad[r0:r1], np.float64), ref,
                               target=targets[r0:r1], valid=valid[r0:r1],
                               band=native_rel * sc, extra=extra)

        in_threads(lane, threads)
        grad = None                        # this call's gradient dropped before the next
        for other in accs[1:]:
            accs[0].merge(other)
        out.append(accs[0].result(targets))
    return out, None, notes
