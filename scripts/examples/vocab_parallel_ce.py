"""Vocab-parallel cross-entropy in the Megatron-LM style, for ``softcheck check --tensor-parallel``.

Each rank holds ``logits[:, its columns]`` (global ids ``[start, start + V_r)``), the targets
are global ids.  The forward all-reduces the row max, the sum of exps and the target logit
(0 on the ranks that do not own it); the loss is the same on every rank.  The all-reduces of
the sums are an autograd Function whose backward is the identity (Megatron's
``_ReduceFromModelParallelRegion``): every rank computes the same replicated loss, so each
rank's gradient is its own columns of ``softmax - y``.

    softcheck check scripts/examples/vocab_parallel_ce.py:vocab_parallel_ce \\
        --convention loss --tensor-parallel 2 --classes 64

Two seeded bugs: ``smoothing_shard_v`` spreads label smoothing over the shard's width instead
of V (Megatron-LM #737); ``local_max`` shifts by the shard's own max, never all-reduced.
"""

import torch
import torch.distributed as dist


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group in forward; identity in backward (the loss is replicated)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


def _sum(x, group):
    return _AllReduceSum.apply(x, group)


def _loss(logits, target, group, label_smoothing, smoothing_convention, ignore_index,
          reduction, *, all_reduce_max=True, global_v=True):
    z = logits if logits.dtype == torch.float64 else logits.float()   # fp32 at least
    n, v_local = z.shape
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    # this rank's first global id: the widths of the ranks before it (uneven splits too)
    widths = torch.tensor([v_local], dtype=torch.long)
    every = [torch.zeros_like(widths) for _ in range(world)]
    dist.all_gather(every, widths, group=group)
    start = int(sum(int(w) for w in every[:rank]))
    vocab = int(sum(int(w) for w in every))
    m = z.detach().max(dim=-1).values                  # the shift: a constant for autograd
    if all_reduce_max:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    sum_exp = _sum(torch.exp(z - m[:, None]).sum(-1), group)
    lse = m + torch.log(sum_exp)
    valid = target != ignore_index
    local = target - start
    owned = valid & (local >= 0) & (local < v_local)
    idx = torch.where(owned, local, torch.zeros_like(local))
    z_y = _sum(torch.where(owned, z.gather(1, idx[:, None])[:, 0], torch.zeros_like(m)), group)
    nll = lse - z_y
    if label_smoothing:
        k = vocab if global_v else v_local             # the bug: the shard's width
        total = _sum(z.sum(-1), group)
        if smoothing_convention == "uniform":          # EPS/V on every class
            smooth = lse - total / k
            per_row = (1 - label_smoothing) * nll + label_smoothing * smooth
        else:                                          # EPS/(V-1) on the other classes
            smooth = lse - (total - z_y) / (k - 1)
            per_row = (1 - label_smoothing) * nll + label_smoothing * smooth
    else:
        per_row = nll
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / valid.sum()


def vocab_parallel_ce(logits, target, group=None, label_smoothing=0.0,
                      smoothing_convention="uniform", ignore_index=-100, reduction="mean"):
    """Correct: every reduction over the vocabulary all-reduced, V the global vocabulary."""
    return _loss(logits, target, group, label_smoothing, smoothing_convention, ignore_index,
                 reduction)


def smoothing_shard_v(logits, target, group=None, label_smoothing=0.0,
                      smoothing_convention="uniform", ignore_index=-100, reduction="mean"):
    """Seeded bug: label smoothing divides by the shard's width V/W (Megatron-LM #737)."""
    return _loss(logits, target, group, label_smoothing, smoothing_convention, ignore_index,
                 reduction, global_v=False)


def local_max(logits, target, group=None, label_smoothing=0.0,
              smoothing_convention="uniform", ignore_index=-100, reduction="mean"):
    """Seeded bug: the row max is the shard's own, never all-reduced: the ranks disagree."""
    return _loss(logits, target, group, label_smoothing, smoothing_convention, ignore_index,
                 reduction, all_reduce_max=False)


def vocab_parallel_ce_btv(logits, target, group=None, label_smoothing=0.0,
                          smoothing_convention="uniform", ignore_index=-100, reduction="mean"):
    """Correct, TransformerEngine-style: 3-D logits (B, T, V/W) and targets (B, T) only
    (``--shape btv``); reduction none gives the loss as (B, T)."""
    if logits.ndim != 3:
        raise ValueError(f"expected (B, T, V) logits, got {tuple(logits.shape)}")
    b, t, v = logits.shape
    loss = _loss(logits.reshape(b * t, v), target.reshape(-1), group, label_smoothing,
                 smoothing_convention, ignore_index, reduction)
    return loss.reshape(b, t) if reduction == "none" else loss


def crash_on_rank1(logits, target, group=None, reduction="mean"):
    """For the tests: rank 1 is killed in the middle of the call (rank 0 then waits in a
    collective that never completes)."""
    import os

    if dist.get_rank(group) == 1:
        os.kill(os.getpid(), 9)
    return _loss(logits, target, group, 0.0, "uniform", -100, reduction)
