"""Fused linear cross-entropy on vocab-parallel ranks, for ``softcheck check --hidden H
--tensor-parallel W`` (as Apple CCE's ``VocabParallelOptions`` or Megatron's output layer).

Each rank holds the hidden states x (N, H) whole, its rows ``W[start:stop]`` of the LM head
(and of the bias) and the global target ids; it forms its logits shard ``x·W_rᵀ`` and runs the
vocab-parallel cross-entropy of ``vocab_parallel_ce.py`` on it (the max, the sum of exps and
the target logit all-reduced).  x enters through Megatron's ``_CopyToModelParallelRegion``:
the identity forward, an all-reduce (sum) of the gradient in backward, so every rank returns
the same, whole grad_x, and its own rows of grad_W.

    softcheck check scripts/examples/vocab_parallel_flce.py:vocab_parallel_flce \\
        --hidden 32 --tensor-parallel 2 --classes 64 --batch 8 --dtype float32 --convention loss

The seeded bug ``grad_x_not_reduced`` leaves that all-reduce out: each rank's grad_x is only
its own shard's part.
"""

import torch
import torch.distributed as dist

from vocab_parallel_ce import _loss


class _CopyToRegion(torch.autograd.Function):
    """Identity in forward; the gradient all-reduced (summed) over the group in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def _flce(x, weight, target, group, bias, ignore_index, reduction, label_smoothing,
          smoothing_convention, reduce_grad_x=True):
    cd = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    xs = _CopyToRegion.apply(x, group) if reduce_grad_x else x
    z = xs.to(cd) @ weight.to(cd).T
    if bias is not None:
        z = z + bias.to(cd)
    loss = _loss(z, target, group, label_smoothing, smoothing_convention, ignore_index,
                 reduction)
    return loss.to(x.dtype)


def vocab_parallel_flce(x, weight, target, group=None, bias=None, ignore_index=-100,
                        reduction="mean", label_smoothing=0.0, smoothing_convention="uniform"):
    """Correct: grad_x all-reduced over the group in backward."""
    return _flce(x, weight, target, group, bias, ignore_index, reduction, label_smoothing,
                 smoothing_convention)


def grad_x_not_reduced(x, weight, target, group=None, bias=None, ignore_index=-100,
                       reduction="mean", label_smoothing=0.0, smoothing_convention="uniform"):
    """Seeded bug: grad_x is never all-reduced, so each rank holds its own shard's part."""
    return _flce(x, weight, target, group, bias, ignore_index, reduction, label_smoothing,
                 smoothing_convention, reduce_grad_x=False)
