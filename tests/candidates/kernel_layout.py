"""Kernels for --suite kernel's regimes: the strided logits view (right, and one that assumes
contiguous rows) and the bfloat16 target entry (p computed in bfloat16, then p_t − 1)."""

import ml_dtypes
import numpy as np
import torch


def _softmax_grad(z, target, dtype):
    """mean-reduced p − y in float64, returned in ``dtype`` (any layout of ``z``)."""
    z = np.asarray(z, np.float64)
    n = len(z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(n), target] -= 1
    return (p / n).astype(dtype)


def strided_grad(logits, target):
    """Right, and refuses contiguous rows: proves the strided view reached it."""
    assert logits.strides[0] != logits.shape[1] * logits.itemsize, \
        f"contiguous rows: strides {logits.strides}"
    return _softmax_grad(logits, target, logits.dtype)


def contiguous_grad(logits, target):
    """Reads row i at offset i·C (a kernel computing ``ptr + row * V``, not ``row * stride``):
    right on contiguous logits, wrong rows on a strided view."""
    n, c = logits.shape
    z = np.lib.stride_tricks.as_strided(logits, (n, c), (c * logits.itemsize, logits.itemsize))
    return _softmax_grad(z, target, logits.dtype)


def _torch_ce(x, target):
    z = x.double()
    n = z.shape[0]
    lse = torch.logsumexp(z, -1)
    rows = torch.arange(n)
    loss = (lse - z[rows, target]).mean()
    p = torch.exp(z - lse[:, None])
    p[rows, target] -= 1
    return loss, p / n


class _SavedGradCE(torch.autograd.Function):
    """forward computes the loss and its gradient (of ``rows(logits)``); backward scales it."""

    @staticmethod
    def rows(logits):
        return logits

    @classmethod
    def forward(cls, ctx, logits, target):
        loss, g = _torch_ce(cls.rows(logits), target)
        ctx.save_for_backward(g)
        ctx.dtype = logits.dtype
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, go):
        (g,) = ctx.saved_tensors
        return (g * go).to(ctx.dtype), None


class StridedCE(_SavedGradCE):
    """An autograd.Function (checked as --convention inplace): refuses contiguous rows."""

    @staticmethod
    def rows(logits):
        assert logits.stride(0) != logits.shape[1], f"contiguous rows: {logits.stride()}"
        return logits


class ContiguousCE(_SavedGradCE):
    """Reads its input as if rows were contiguous (torch.as_strided with stride (C, 1))."""

    @staticmethod
    def rows(logits):
        n, c = logits.shape
        return torch.as_strided(logits, (n, c), (c, 1))


def _p_float32(logits):
    z = np.asarray(logits, np.float32)
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def bf16_fused(logits, target):
    """Right: p and p − y in float32, one rounding to bfloat16 at the end."""
    p = _p_float32(logits)
    p[np.arange(len(p)), target] -= 1
    return (p / len(p)).astype(ml_dtypes.bfloat16)


def bf16_p_minus_one(logits, target):
    """p rounded to bfloat16, then p_t − 1 in bfloat16 (Liger PR #1268 → #1329): p_t = 0.999
    rounds to 1, the target entry becomes 0 instead of −0.001/N."""
    p = _p_float32(logits).astype(ml_dtypes.bfloat16)
    rows = np.arange(len(p))
    p[rows, target] = p[rows, target] - ml_dtypes.bfloat16(1)
    return (p.astype(np.float32) / len(p)).astype(ml_dtypes.bfloat16)


def kernel_grad(logits, target, ignore_index=-100, softcap=None):
    """Right for every case of the kernel preset: softcap, ignored rows, mean (float64)."""
    z = np.asarray(logits, np.float64)
    t = np.tanh(z / softcap) if softcap else None
    v = softcap * t if softcap else z
    p = np.exp(v - v.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    valid = target != ignore_index
    rows = np.flatnonzero(valid)
    p[rows, target[valid]] -= 1
    p[~valid] = 0
    g = p / max(1, int(valid.sum()))
    if softcap:
        g *= 1 - t**2
    return g.astype(logits.dtype)


def btv_loss(logits, target, ignore_index=-100, reduction="mean"):
    """A (B, T, V) loss that honours the view's strides (reshape copies); it refuses
    contiguous logits, so it proves the transposed view reached it."""
    assert not logits.is_contiguous(), f"contiguous logits, strides {logits.stride()}"
    b, t, v = logits.shape
    return torch.nn.functional.cross_entropy(logits.reshape(b * t, v).float(),
                                             target.reshape(-1), ignore_index=ignore_index,
                                             reduction=reduction)


def btv_loss_assumes_contiguous(logits, target, ignore_index=-100, reduction="mean"):
    """TransformerEngine #2746's mistake: the memory read as if the view were contiguous."""
    b, t, v = logits.shape
    flat = torch.as_strided(logits, (b * t, v), (v, 1))
    return torch.nn.functional.cross_entropy(flat.float(), target.reshape(-1),
                                             ignore_index=ignore_index, reduction=reduction)
