"""Kernels written as real code is (loss functions, in-place, autograd.Function), right and wrong."""

import numpy as np
import torch
import torch.nn.functional as F


def torch_loss(logits, target, weight=None, ignore_index=-100, reduction="mean",
               label_smoothing=0.0):
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)


def torch_forward_bug(logits, target, ignore_index=-100, reduction="mean"):
    """The gradient is right, the loss value is off by a constant (detached: autograd never
    sees it): the bug only the loss-value pair can catch."""
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    return loss + 0.01 * loss.detach()


def torch_tuple(logits, target, z_loss=0.0, reduction="mean"):
    """Returns (loss, z_loss) with the z-loss included in the loss (Liger, flash-attn)."""
    lse = torch.logsumexp(logits, -1)
    zl = z_loss * lse**2
    ce = F.cross_entropy(logits, target, reduction="none")
    if reduction == "none":
        return ce + zl, zl
    red = torch.mean if reduction == "mean" else torch.sum
    return red(ce + zl), red(zl)


def torch_mutates_target(logits, target):
    target[0] = 0
    return F.cross_entropy(logits, target)


def numpy_inplace(logits, target):
    """Writes dL/dlogits (mean) into its logits buffer, returns the loss (numpy)."""
    z = logits.astype(np.float64)
    m = z.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
    n = len(z)
    loss = np.mean(lse - z[np.arange(n), target])
    p = np.exp(z - lse[:, None])
    p[np.arange(n), target] -= 1
    logits[...] = (p / n).astype(logits.dtype)
    return loss


def numpy_inplace_no_mean(logits, target):
    """The in-place gradient misses the mean's 1/N (its loss is right)."""
    loss = numpy_inplace(logits, target)
    logits *= len(logits)
    return loss


class NeedsExtra(torch.autograd.Function):
    """forward takes a parameter softcheck has no name for, with no default."""

    @staticmethod
    def forward(ctx, x, target, mystery):
        return x.sum()

    @staticmethod
    def backward(ctx, g):
        return None, None, None
