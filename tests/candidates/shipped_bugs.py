"""Kernels as real CE kernels were written, each shipped bug beside its correct control
(tests/test_shipped_bugs.py).  Plain gradient functions ``fn(logits, target, **kw)``; the
16-bit ones compute in float32 and round where the real kernel stores.

Arithmetic each imitates (kernel-users.md, ce-variants.md):

* ``te_fused``: TransformerEngine — float32 math, the gradient times g rounded once;
* ``liger_stored``: Liger-Kernel — dL/dz for g = 1 computed in float32 and stored in the
  input dtype during forward, multiplied by g in that dtype in backward;
* ``liger_1329``: Liger PR #1268 → #1329 — p/N stored in the bf16 buffer, then
  ``X[y] += -1/N`` in it: p_y − 1 cancels (100 % off at p_y = 0.999);
* ``torch_cuda_arith``: PyTorch's CUDA log_softmax / nll_loss arithmetic — ℓ = z − lse in
  float32 rounded once to the dtype (saved for backward), g/N rounded to the dtype, the
  backward ``gℓ − exp(ℓ)·Σgℓ`` in float32 rounded once;
* ``torch_ce``: PyTorch's own ``F.cross_entropy`` in the dtype (on CPU here).
"""

import numpy as np
import torch
import torch.nn.functional as F

import softcheck


def _setup(logits, target, ignore_index, reduction, grad_output):
    z = softcheck.as_torch(logits)
    dt = z.dtype
    t = torch.as_tensor(np.asarray(target))
    valid = t != ignore_index
    y = torch.where(valid, t, 0)
    n = z.shape[0]
    a = 1.0 / max(int(valid.sum()), 1) if reduction == "mean" else 1.0
    g = torch.as_tensor(np.asarray(grad_output, np.float64))
    g = (g[:, None] if g.ndim else g.reshape(1, 1)).to(dt)   # the upstream g in the dtype
    return z, dt, valid, y, n, a, g


def _p_minus_y(z, valid, y, n):
    p = torch.softmax(z.float(), -1)
    p[torch.arange(n), y] -= 1
    return p * valid[:, None]


def te_fused(logits, target, ignore_index=-100, reduction="mean", grad_output=1.0):
    z, dt, valid, y, n, a, g = _setup(logits, target, ignore_index, reduction, grad_output)
    return (_p_minus_y(z, valid, y, n) * a * g.float()).to(dt)


def liger_stored(logits, target, ignore_index=-100, reduction="mean", grad_output=1.0):
    z, dt, valid, y, n, a, g = _setup(logits, target, ignore_index, reduction, grad_output)
    stored = (_p_minus_y(z, valid, y, n) * a).to(dt)            # forward: into the buffer
    return stored * g                                          # backward: in the dtype


def liger_1329(logits, target, ignore_index=-100, reduction="mean", grad_output=1.0):
    z, dt, valid, y, n, a, g = _setup(logits, target, ignore_index, reduction, grad_output)
    x = (torch.softmax(z.float(), -1) * a).to(dt)              # p/N stored in the buffer
    rows = torch.arange(n)
    x[rows, y] = (x[rows, y].float() - a).to(dt)               # X[y] += -1/N, in bf16
    return (x * valid[:, None].to(dt)) * g


def torch_cuda_arith(logits, target, ignore_index=-100, reduction="mean", grad_output=1.0):
    z, dt, valid, y, n, a, g = _setup(logits, target, ignore_index, reduction, grad_output)
    logp = torch.log_softmax(z.float(), -1).to(dt)             # the saved output, rounded once
    gy = (-(g.float() * a)).to(dt).float().reshape(-1).expand(n)   # nll_loss: −g/N in dtype
    gf = torch.zeros(z.shape)
    gf[torch.arange(n), y] = gy * valid
    return (gf - logp.float().exp() * gf.sum(-1, keepdim=True)).to(dt)


def torch_ce(logits, target, ignore_index=-100, reduction="mean", grad_output=1.0):
    z = softcheck.as_torch(logits, requires_grad=True)
    loss = F.cross_entropy(z, torch.as_tensor(np.asarray(target)), ignore_index=ignore_index,
                           reduction=reduction)
    loss.backward(torch.as_tensor(np.asarray(grad_output, np.float64)).to(loss.dtype)
                  .expand_as(loss))
    return z.grad


def zero_mean_ce(logits, target, ignore_index=-100, reduction="mean"):
    """A loss (``--convention loss``) whose mean over zero non-ignored rows is 0, as Liger's
    and TransformerEngine's (``sum / max(n, 1)``); right everywhere else."""
    z = logits
    t = torch.as_tensor(np.asarray(target))
    loss = F.cross_entropy(z, t, ignore_index=ignore_index, reduction="sum")
    if reduction != "mean":
        return F.cross_entropy(z, t, ignore_index=ignore_index, reduction=reduction)
    return loss / max(int((t != ignore_index).sum()), 1)
