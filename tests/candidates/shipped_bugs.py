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

The catalogue (bug → kernel here, its control → what the hint names):

* Liger #1329 → ``liger_1329`` / ``liger_stored`` → "the target entries cancel ... #1329";
* Liger #678 (Function storing dL/dz, backward uses row 0's g) →
  ``scripts/examples/liger_style_inplace.py:PerRowBugCE`` / ``LigerStyleCE``, and TE #2139 →
  ``te_2139`` → "the per-row upstream gradient is read as one scalar";
* TE #2476 → ``te_2476`` / ``mean_ok`` → "n/N: the mean divides by all N rows";
* the n_items divisor (unsloth-zoo PR #1023 thread) → ``n_items_ga`` / ``n_items_ok`` → "the
  divisor is 4× too large";
* Liger #420 → ``liger_420`` / ``weighted_smoothing_ok`` → "the smoothing term is not
  class-weighted";
* two options dropped → ``drops_two`` → "two options are not applied";
* Unsloth #10616 → ``unsloth_padded`` / ``unsloth_masked`` → "padded lanes after the softcap"
  (regime below-cap; the kernel preset's softcap30-below);
* unsloth-zoo #593 → ``zoo_593`` → "x·tanh(x/S) instead of S·tanh(x/S)";
* TRL #5691 → ``trl_5691`` / ``scale_then_cap`` → "applied in the wrong order";
* Liger #243 (fused linear CE) → ``shipped_numpy.py:flce_243`` / numpy_flce.flce → "label
  smoothing is dropped by the fused path";
* the all-ignored mean (Liger/TE return 0) → ``zero_mean_ce`` → "--all-ignored zero".

Not here (other areas): Liger #272's in-place store past autograd, TE #2746's transposed
view, Apple CCE #42 and Megatron #737 on ranks, Liger #968 / PR #1298 in a fused Function.
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


def _capped_grad(z, target, ignore_index, v, dv, pad_value=None, block=None):
    """mean-reduced ∂L/∂z of a kernel with transform ``v``/``dv`` over a vocabulary padded to
    a multiple of ``block`` with −inf, the padded lanes set to ``pad_value`` after the
    transform (None: their transformed value, as the kernel computes it)."""
    n, c = z.shape
    valid = target != ignore_index
    y = np.where(valid, target, 0)
    if block:
        p_ = -c % block
        zp = np.concatenate([z, np.full((n, p_), -np.inf)], 1)
    else:
        zp = z
    with np.errstate(all="ignore"):
        vz = v(zp)
    if block and pad_value is not None:
        vz[:, c:] = pad_value
    m = vz.max(-1, keepdims=True)
    e = np.exp(vz - m)
    p = (e / e.sum(-1, keepdims=True))[:, :c]
    p[np.arange(n), y] -= 1
    p[~valid] = 0
    with np.errstate(all="ignore"):
        g = p * np.where(np.isfinite(z), dv(z), 0.0) / max(int(valid.sum()), 1)
    return g


def _cap(s):
    return (lambda z: s * np.tanh(z / s)), (lambda z: 1 - np.tanh(z / s) ** 2)


def unsloth_padded(logits, target, softcap=None, ignore_index=-100):
    """Unsloth PR #10616: the vocabulary padded to a power of two with −inf, the softcap
    applied to every lane: padded lanes become −S and take probability mass."""
    z = np.asarray(logits, np.float64)
    v, dv = _cap(softcap) if softcap else ((lambda x: x), (lambda x: np.ones_like(x)))
    block = 1 << (z.shape[1] - 1).bit_length()
    return _capped_grad(z, np.asarray(target), ignore_index, v, dv, None, block).astype(logits.dtype)


def unsloth_masked(logits, target, softcap=None, ignore_index=-100):
    """The control: the same padded block, the padded lanes masked (−inf) after the softcap."""
    z = np.asarray(logits, np.float64)
    v, dv = _cap(softcap) if softcap else ((lambda x: x), (lambda x: np.ones_like(x)))
    block = 1 << (z.shape[1] - 1).bit_length()
    return _capped_grad(z, np.asarray(target), ignore_index, v, dv, -np.inf, block).astype(logits.dtype)


def zoo_593(logits, target, softcap=None, ignore_index=-100):
    """unsloth-zoo PR #593: x·tanh(x/c) for c·tanh(x/c) (autograd-consistent backward)."""
    z = np.asarray(logits, np.float64)
    c = softcap
    return _capped_grad(z, np.asarray(target), ignore_index, lambda x: x * np.tanh(x / c),
                        lambda x: np.tanh(x / c) + x / c * (1 - np.tanh(x / c) ** 2)
                        ).astype(logits.dtype)


def trl_5691(logits, target, softcap=None, logit_scale=1.0, ignore_index=-100):
    """TRL PR #5691: the softcap applied first, the scale after (s·c·tanh(x/c))."""
    z = np.asarray(logits, np.float64)
    c, s = softcap, logit_scale
    return _capped_grad(z, np.asarray(target), ignore_index, lambda x: s * c * np.tanh(x / c),
                        lambda x: s * (1 - np.tanh(x / c) ** 2)).astype(logits.dtype)


def scale_then_cap(logits, target, softcap=None, logit_scale=1.0, ignore_index=-100):
    """The control: c·tanh(s·x/c), Unsloth's order (Cohere's scale, then Gemma 2's cap)."""
    z = np.asarray(logits, np.float64)
    c, s = softcap, logit_scale
    return _capped_grad(z, np.asarray(target), ignore_index, lambda x: c * np.tanh(s * x / c),
                        lambda x: s * (1 - np.tanh(s * x / c) ** 2)).astype(logits.dtype)


def _plain(logits, target, ignore_index, label_smoothing=0.0, weight=None):
    """(p − y_smoothed)·w-row factor per row, valid rows only (float64), and the valid mask."""
    z = np.asarray(logits, np.float64)
    n, c = z.shape
    t = np.asarray(target)
    valid = t != ignore_index
    y = np.where(valid, t, 0)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.full((n, c), label_smoothing / c)
    q[np.arange(n), y] += 1 - label_smoothing
    return (p - q) * valid[:, None], valid


def te_2476(logits, target, ignore_index=-100):
    """TransformerEngine PR #2476: the mean divides by all N rows, not the non-ignored ones."""
    g, _ = _plain(logits, target, ignore_index)
    return (g / len(g)).astype(logits.dtype)


def n_items_ga(logits, target, ignore_index=-100, mean_over=None):
    """Gradient accumulation's n_items (unsloth-zoo PR #1023 thread): the global count
    multiplied by the accumulation steps once more (GA = 4)."""
    g, valid = _plain(logits, target, ignore_index)
    n = mean_over if isinstance(mean_over, int) else max(int(valid.sum()), 1)
    return (g / (4 * n)).astype(logits.dtype)


def n_items_ok(logits, target, ignore_index=-100, mean_over=None):
    """The control: divides by the global count it is given (--mean-over K)."""
    g, valid = _plain(logits, target, ignore_index)
    n = mean_over if isinstance(mean_over, int) else max(int(valid.sum()), 1)
    return (g / n).astype(logits.dtype)


def mean_ok(logits, target, ignore_index=-100):
    """The control of te_2476: divides by the non-ignored count."""
    g, valid = _plain(logits, target, ignore_index)
    return (g / max(int(valid.sum()), 1)).astype(logits.dtype)


def _weighted(logits, target, ignore_index, weight, label_smoothing, smooth_weighted):
    z = np.asarray(logits, np.float64)
    n, c = z.shape
    t = np.asarray(target)
    w = np.asarray(weight, np.float64)
    valid = t != ignore_index
    y = np.where(valid, t, 0)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    wy = w[y] * valid
    d = max(float(wy.sum()), 1e-300)
    eps = label_smoothing
    onehot = np.eye(c)[y]
    g = (1 - eps) * wy[:, None] * (p - onehot)
    if smooth_weighted:        # torch: −(EPS/C)·Σ_c w_c·logp_c, its gradient (EPS/C)(Σw·p − w)
        g += (eps / c) * (w.sum() * p - w) * valid[:, None]
    else:                      # the slip: (EPS/C)·Σ_c logp_c unweighted
        g += eps * (p - 1.0 / c) * valid[:, None]
    return (g / d).astype(logits.dtype)


def liger_420(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """Liger PR #420's kind: weights on the cross-entropy term, the smoothing term unweighted."""
    return _weighted(logits, target, ignore_index, weight, label_smoothing, False)


def weighted_smoothing_ok(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """The control: PyTorch's LossNLL.cpp (both terms weighted, divided by Σ w[y])."""
    return _weighted(logits, target, ignore_index, weight, label_smoothing, True)


def drops_two(logits, target, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
    """Declares label_smoothing and z_loss and applies neither (a fused path that forwards
    neither, as Liger #243 dropped smoothing)."""
    return mean_ok(logits, target, ignore_index)


def te_2139(logits, target, ignore_index=-100, reduction="none", grad_output=1.0):
    """TransformerEngine #2139 (Megatron #1750): the backward reads one grad_output for every
    row (a wrong pointer / stride 0), invisible with g = 1."""
    g, valid = _plain(logits, target, ignore_index)
    go = np.asarray(grad_output, np.float64).reshape(-1)
    a = 1.0 / max(int(valid.sum()), 1) if reduction == "mean" else 1.0
    return (g * a * go[0]).astype(logits.dtype)

