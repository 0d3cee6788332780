"""Small kernels written as the shipped ones are called (issue 27): required keyword
parameters, constants the kernel needs, 0 for an off option, nn.Module losses, a fused
autograd.Function taking positional arguments only, (B, T, V) causal losses; right and wrong."""

import numpy as np
import torch
import torch.nn.functional as F


# ------------------------------------------------------- required parameters (plain gradient)

def _weighted_grad(logits, target, weight):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(z)
    w = np.ones(z.shape[1]) if weight is None else np.asarray(weight, np.float64)
    wy = w[target]
    p[np.arange(n), target] -= 1
    return p * wy[:, None], wy


def grad_weight_required(logits, target, weight):
    """Mean CE with class weights, ``weight`` a required parameter (no default)."""
    g, wy = _weighted_grad(logits, target, weight)
    return (g / wy.sum()).astype(logits.dtype)


def grad_weight_required_wrong(logits, target, weight):
    """Divides by N instead of Σ w[y] (the weighted mean's classic slip)."""
    g, _ = _weighted_grad(logits, target, weight)
    return (g / len(g)).astype(logits.dtype)


def grad_output_required(logits, target, grad_output):
    """reduction='none': dL/dlogits for the per-row upstream gradient, a required parameter."""
    g, _ = _weighted_grad(logits, target, None)
    return (g * np.asarray(grad_output, np.float64)[:, None]).astype(logits.dtype)


def grad_output_required_wrong(logits, target, grad_output):
    """Liger #678: the per-row upstream gradient ignored."""
    g, _ = _weighted_grad(logits, target, None)
    return g.astype(logits.dtype)


def grad_mystery_required(logits, target, mystery):
    """A required parameter softcheck has no value for."""
    return logits


# ------------------------------------------------------------ constants and off values

def torch_impl_required(logits, target, ignore_index=-100, reduction="mean", *, impl):
    """As Apple CCE's ``impl=``: the kernel needs a constant keyword of its own."""
    if impl != "torch_compile":
        raise ValueError(f"unknown impl {impl!r}")
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)


def unsloth_style(logits, labels, logit_softcapping=0, logit_scaling=0):
    """As Unsloth's fast_cross_entropy_loss: 0 means off for both transforms (None crashes);
    scale (multiply) before the softcap; ignore_index is -100."""
    z = logits.float()
    if logit_scaling != 0:
        z = z * logit_scaling
    if logit_softcapping != 0:
        z = logit_softcapping * torch.tanh(z / logit_softcapping)
    return F.cross_entropy(z, labels, ignore_index=-100)


def unsloth_style_wrong_order(logits, labels, logit_softcapping=0, logit_scaling=0):
    """unsloth-zoo PR #666: softcap applied before the scale."""
    z = logits.float()
    if logit_softcapping != 0:
        z = logit_softcapping * torch.tanh(z / logit_softcapping)
    if logit_scaling != 0:
        z = z * logit_scaling
    return F.cross_entropy(z, labels, ignore_index=-100)


# ------------------------------------------------------------------- float32-only kernels

class Float32Only(torch.autograd.Function):
    """As Liger's CE Function: computes dL/dlogits in float32 and stores it in the input's
    dtype; backward multiplies by grad_output."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index=-100, reduction="mean"):
        z = logits.detach().float()
        valid = target != ignore_index
        lse = torch.logsumexp(z, -1)
        safe = torch.where(valid, target, 0)
        rows = lse - z.gather(1, safe[:, None])[:, 0]
        g = torch.softmax(z, -1)
        g[torch.arange(len(z)), safe] -= 1
        g = g * valid[:, None]
        count = valid.sum().clamp(min=1)
        if reduction == "mean":
            g, loss = g / count, (rows * valid).sum() / count
        elif reduction == "sum":
            loss = (rows * valid).sum()
        else:
            loss = rows * valid
        ctx.save_for_backward(g.to(logits.dtype))
        ctx.reduction = reduction
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (g,) = ctx.saved_tensors
        go = grad_output[:, None] if ctx.reduction == "none" else grad_output
        return g * go, None, None, None


# ---------------------------------------------------------------------- nn.Module losses

class ModuleCE(torch.nn.Module):
    """As LigerCrossEntropyLoss: the options are __init__ arguments, forward(input, target)."""

    def __init__(self, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
        super().__init__()
        self.weight, self.ignore_index = weight, ignore_index
        self.label_smoothing, self.reduction = label_smoothing, reduction

    def forward(self, _input, target):
        return F.cross_entropy(_input, target, weight=self.weight, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing, reduction=self.reduction)


class ModuleCEDropsSmoothing(ModuleCE):
    """Liger #243's slip, as a module: label_smoothing taken and silently dropped."""

    def forward(self, _input, target):
        return F.cross_entropy(_input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction)


MODULE_INSTANCE = ModuleCE()
NOT_CALLABLE = 42


# ------------------------------------------------------- fused linear CE autograd.Function

class FusedFunction(torch.autograd.Function):
    """As LigerFusedLinearCrossEntropyFunction: .apply(x, weight, target, bias, ce_weight,
    ignore_index, lse_square_scale, label_smoothing, reduction, ...) positionally; the
    gradients computed in forward (mean and sum), scaled by grad_output in backward."""

    @staticmethod
    def forward(ctx, _input, weight, target, bias=None, ce_weight=None, ignore_index=-100,
                lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None,
                return_z_loss=False, accum_dtype=None):
        with torch.enable_grad():
            x = _input.detach().requires_grad_(True)
            w = weight.detach().requires_grad_(True)
            b = None if bias is None else bias.detach().requires_grad_(True)
            z = x @ w.T + (0 if b is None else b)
            loss = F.cross_entropy(z.double(), target, weight=None if ce_weight is None
                                   else ce_weight.double(), ignore_index=ignore_index,
                                   label_smoothing=label_smoothing, reduction=reduction)
            grads = torch.autograd.grad(loss, [x, w] + ([b] if b is not None else []))
        ctx.save_for_backward(*grads)
        ctx.has_bias = b is not None
        return loss.detach().to(_input.dtype), None

    @staticmethod
    def backward(ctx, grad_output, _):
        gs = ctx.saved_tensors
        gx, gw = gs[0] * grad_output, gs[1] * grad_output
        gb = gs[2] * grad_output if ctx.has_bias else None
        return (gx.to(grad_output.dtype), gw.to(grad_output.dtype), None, gb,
                None, None, None, None, None, None, None, None)


class FusedFunctionNoSmoothing(FusedFunction):
    """Liger #243: FLCE silently dropped label_smoothing."""

    @staticmethod
    def forward(ctx, _input, weight, target, bias=None, ce_weight=None, ignore_index=-100,
                lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None,
                return_z_loss=False, accum_dtype=None):
        return FusedFunction.forward(ctx, _input, weight, target, bias, ce_weight, ignore_index,
                                     lse_square_scale, 0.0, reduction)


# -------------------------------------------------------------- (B, T, V) causal losses

def hf_fixed_cross_entropy(source, target, num_items_in_batch=None, ignore_index=-100,
                           **kwargs):
    """transformers.loss.loss_utils.fixed_cross_entropy: every other keyword swallowed."""
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(source.reshape(-1, source.shape[-1]), target.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)
    if reduction == "sum":
        loss = loss / num_items_in_batch
    return loss


def hf_causal_lm_loss(logits, labels, ignore_index=-100, shift_labels=None):
    """As transformers' ForCausalLMLoss: labels padded by one ignored position, shifted."""
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=ignore_index)
    shifted = labels[..., 1:].contiguous()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                           ignore_index=ignore_index)


def hf_causal_lm_loss_unshifted(logits, labels, ignore_index=-100, shift_labels=None):
    """The shift forgotten: position t scored against its own label."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index)


def cce_style_shift(e, targets, ignore_index=-100, reduction="mean", shift=0):
    """As Apple CCE's shift=k: logits[..., :-k, :] paired with targets[..., k:], per-position
    loss (B, T-1) for reduction none."""
    if shift:
        e, targets = e[:, :-shift], targets[:, shift:]
    loss = F.cross_entropy(e.reshape(-1, e.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)
    return loss.reshape(targets.shape) if reduction == "none" else loss


# ---------------------------------------------------------- class weights in their own dtype

def weight_in_float32(logits, target, weight=None, reduction="mean"):
    """As Liger / TE with bf16 logits: the class weights must be float32."""
    if weight is not None and weight.dtype != torch.float32:
        raise TypeError(f"weight must be float32, got {weight.dtype}")
    return F.cross_entropy(logits.float(), target, weight=weight, reduction=reduction)
