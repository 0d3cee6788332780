"""--tensor-parallel's judging: each rank's shard of the gradient against its columns of the
float64 closed form, the losses across ranks, and the hint naming a sharding bug's pattern."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..reference import analytic
from ..spec import Inputs
from .compare import Comparison, Invariant, compare


def judge_ranks(call, inputs64: Inputs, *, dtype: str, kappa: float, scale: float,
                user=None) -> tuple[list[Comparison], list[Invariant], tuple[str, ...]]:
    """Per rank: its shard's gradient against its columns of the float64 closed form (the
    other columns zeroed on both sides, so entries keep their global class ids); across ranks:
    the loss each returned, identical on every rank.  Hints name the sharding bug's pattern."""
    if not call.ranks:
        return [], [], ()
    ref = analytic.gradient(inputs64)
    comps, hints = [], []
    for r, a, b, _, _ in call.ranks:
        mask = np.zeros(ref.shape[1], bool)
        mask[a:b] = True
        comps.append(compare((f"candidate[rank {r}]", "analytic"),
                             np.where(mask, call.grad, 0.0), np.where(mask, ref, 0.0),
                             inputs=inputs64, dtype=dtype, kappa=kappa, scale=scale, user=user))
    bad = [c for c in comps if not c.passed]
    invs = []
    losses = [(r, loss) for r, _, _, loss, _ in call.ranks if loss is not None]
    if losses:
        r0, l0 = losses[0]
        diffs = [(r, float(np.max(np.abs(np.asarray(x) - np.asarray(l0)), initial=0.0)))
                 for r, x in losses[1:]]
        worst = max(diffs, key=lambda d: d[1], default=(r0, 0.0))
        same = all(np.array_equal(np.asarray(x), np.asarray(l0), equal_nan=True)
                   for _, x in losses[1:])
        detail = (f"every one of the {len(call.ranks)} ranks returned the same loss" if same else
                  "the ranks disagree on the loss: " + ", ".join(
                      f"rank {r} differs from rank {r0} by up to {d:.3g}" for r, d in diffs
                      if d or not np.isfinite(d)))
        invs.append(Invariant("ranks_agree_on_loss", "candidate", bool(same), detail))
        if not same:
            hints.append(f"the ranks disagree on the loss (rank {worst[0]} by {worst[1]:.3g}): "
                         "a reduction is not all-reduced across the group (the max, the sum of "
                         "exps or the target logit computed from the shard alone)")
    hints[:0] = _shard_width_hint(call, inputs64, ref, bad, dtype, kappa, scale)
    if bad and not hints:
        hints.append("wrong on rank" + ("s " if len(bad) > 1 else " ") + ", ".join(
            c.pair[0].split()[-1].rstrip("]") for c in bad) + " of " + str(len(call.ranks)))
    return comps, invs, tuple(hints)


def _shard_width_hint(call, inputs64: Inputs, ref, bad, dtype, kappa, scale) -> list[str]:
    """Label smoothing's uniform part spread over the shard's width V/W instead of the
    vocabulary V (Megatron #737): on rank r the smoothing term of the gradient is scaled by
    V/V_r (uniform) or (V-1)/(V_r-1) (others), V_r the width it was given (JAX: padded);
    matched with the per-rank tolerance."""
    spec = inputs64.spec
    if not bad or not spec.label_smoothing:
        return []
    plain = analytic.gradient(dataclasses.replace(inputs64, spec=spec.replace(label_smoothing=0.0)))
    smooth = ref - plain                    # the smoothing term (linear in EPS)
    v = ref.shape[1]
    hit = []
    for c in bad:
        r = int(c.pair[0].split()[-1].rstrip("]"))
        _, a, b, _, width = call.ranks[r]
        k = (v / width) if spec.smoothing_convention == "uniform" else (v - 1) / max(width - 1, 1)
        # off-target columns: the term is -EPS/V (resp. -EPS/(V-1)) per entry, times g
        t = inputs64.target
        off = np.ones_like(ref, bool)
        rows = np.flatnonzero(inputs64.valid)
        off[rows, t[rows]] = False
        mask = np.zeros_like(ref, bool)
        mask[:, a:b] = True
        mask &= off
        want = np.where(mask, plain + k * smooth, 0.0)
        got = np.where(mask, call.grad, 0.0)
        if compare(("x", "y"), got, want, inputs=inputs64, dtype=dtype, kappa=kappa,
                   scale=scale).passed:
            hit.append(r)
    if not hit:
        return []
    return [f"label smoothing uses the shard's vocabulary size on rank{'s' if len(hit) > 1 else ''} "
            f"{', '.join(map(str, hit))}: its uniform part is EPS/(V/W) instead of EPS/V "
            "(Megatron-LM #737)"]
