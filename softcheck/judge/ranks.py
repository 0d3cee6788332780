"""Judging a vocab-parallel kernel's ranks (``--tensor-parallel W``): each rank's shard of the
gradient against its columns of the float64 closed form, the losses across ranks, and the
hints that name a sharding bug's pattern (a reduction not all-reduced, label smoothing over
the shard's width)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..reference import analytic
from ..spec import Inputs
from .compare import Comparison, Invariant, compare
from .fused import compare_output

LOSS_HINT = ("a reduction is not all-reduced across the group (the max, the sum of exps or the "
             "target logit computed from the shard alone)")
GRAD_X_HINT = ("grad_x is not all-reduced across the group: {which} only {its} own vocabulary "
               "shard's part, the sum over {its} rows of W of G·W (all-reduce grad_x, a sum, "
               "over the group in the backward)")


def judge_ranks(call, inputs64: Inputs, *, dtype: str, kappa: float, scale: float,
                user=None) -> tuple[list[Comparison], list[Invariant], tuple[str, ...]]:
    """``call`` a CallResult with ``ranks`` (rank, start, stop, loss, width).  Per rank: its
    shard's gradient against its columns of the float64 closed form (the
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
    inv, hint = agreement("loss", [(r, loss) for r, _, _, loss, _ in call.ranks
                                   if loss is not None], LOSS_HINT)
    invs = [inv] if inv is not None else []
    hints += [hint] if hint else []
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


def agreement(what: str, values: list, hint: str) -> tuple[Invariant | None, str | None]:
    """Invariant ``ranks_agree_on_WHAT``: every rank's value bitwise the same (an all-reduce
    gives every rank the same numbers); the hint, with the worst rank, when they differ."""
    if not values:
        return None, None
    r0, v0 = values[0]
    diffs = [(r, float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(v0, np.float64)),
                              initial=0.0))) for r, x in values[1:]]
    same = all(np.array_equal(np.asarray(x), np.asarray(v0), equal_nan=True)
               for _, x in values[1:])
    noun = "the loss" if what == "loss" else what
    detail = (f"every one of the {len(values)} ranks returned the same {what}" if same else
              f"the ranks disagree on {noun}: " + ", ".join(
                  f"rank {r} differs from rank {r0} by up to {d:.3g}" for r, d in diffs
                  if d or not np.isfinite(d)))
    inv = Invariant(f"ranks_agree_on_{what}", "candidate", bool(same), detail)
    if same:
        return inv, None
    worst = max(diffs, key=lambda d: d[1])
    return inv, f"the ranks disagree on {noun} (rank {worst[0]} by {worst[1]:.3g}): {hint}"


def judge_fused_ranks(ranks: tuple, ref_x, bound_x, tol: tuple[float, float], ignored,
                      parts) -> tuple[list[Comparison], list[Invariant], list[str]]:
    """A vocab-parallel fused kernel (``ranks``: rank, start, stop, loss, grad_x each): every
    rank's grad_x against the whole reference grad_x (pair ``candidate[rank r]_grad_x``; its
    rows of grad_W are judged in the joined grad_W), the loss and grad_x the same on every
    rank.  ``parts()``: each shard's part of grad_x (reference/fused.py ``shards``), asked
    only when a rank's grad_x fails, to say whether it was left un-reduced."""
    comps = [compare_output((f"candidate[rank {r}]_grad_x", "reference_grad_x"), gx, ref_x,
                            bound_x, *tol, ignored) for r, _, _, _, gx in ranks]
    invs, hints = [], []
    for what, k, hint in (("loss", 3, LOSS_HINT),
                          ("grad_x", 4, "every rank must return the same, all-reduced grad_x")):
        inv, h = agreement(what, [(p[0], p[k]) for p in ranks if p[k] is not None], hint)
        invs += [inv] if inv is not None else []
        hints += [h] if h else []
    bad = [r for (r, *_), c in zip(ranks, comps) if not c.passed]
    if bad:
        allowed = np.asarray(bound_x) + tol[0] * np.abs(ref_x) + tol[1]
        part = parts()
        alone = [r for r in bad if np.all(np.abs(ranks[r][4] - part[r]) <= allowed)]
        if alone:
            many = len(alone) > 1
            hints = [h for h in hints if not h.startswith("the ranks disagree on grad_x")]
            hints.insert(0, GRAD_X_HINT.format(
                which=f"rank{'s' if many else ''} {', '.join(map(str, alone))} "
                      f"return{'' if many else 's'}", its="their" if many else "its"))
        else:
            hints.append("grad_x wrong on rank" + ("s " if len(bad) > 1 else " ")
                         + ", ".join(map(str, bad)) + f" of {len(ranks)}")
    return comps, invs, hints
