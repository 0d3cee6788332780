"""A torch autograd fused linear cross-entropy: the loss over row chunks, autograd does the rest.

Each chunk of rows builds its (rows, V) logits only inside the chunk, so the whole (N, V)
matrix never exists at once in the forward.  softcheck makes x, W and b leaf tensors that
require grad and calls ``loss.backward(g)``:

    softcheck check scripts/examples/torch_flce.py:flce --hidden 64 --classes 507 --batch 16 \\
        --ignore-index -100 --softcap 30 --convention loss
    softcheck check scripts/examples/torch_flce.py:flce_detached_softcap ...  # seeded bug
"""

import torch
import torch.nn.functional as F

ROWS = 8


def _flce(x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap,
          detach_cap=False):
    x2 = x.reshape(-1, x.shape[-1])
    y = target.reshape(-1)
    # 16-bit inputs: float32 arithmetic (as fused kernels do); float32/64 stay as they are
    cd = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    parts = []
    for i in range(0, x2.shape[0], ROWS):
        z = F.linear(x2[i:i + ROWS].to(cd), weight.to(cd),
                     None if bias is None else bias.to(cd))
        if softcap:
            capped = softcap * torch.tanh(z / softcap)
            # the seeded bug: the cap applied as a constant shift, so no chain factor
            z = z + (capped - z).detach() if detach_cap else capped
        parts.append(F.cross_entropy(z, y[i:i + ROWS], ignore_index=ignore_index,
                                     reduction="sum" if reduction != "none" else "none",
                                     label_smoothing=label_smoothing))
    if reduction == "none":
        return torch.cat(parts).to(x.dtype)
    total = torch.stack(parts).sum()
    if reduction == "mean":
        total = total / (y != ignore_index).sum().clamp(min=1)
    return total.to(x.dtype)


def flce(x, weight, target, bias=None, ignore_index=-100, reduction="mean",
         label_smoothing=0.0, softcap=None):
    return _flce(x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap)


def flce_detached_softcap(x, weight, target, bias=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0, softcap=None):
    """Seeded bug: the softcap's tanh is detached (a 'straight-through' cap): the forward is
    right, the gradient misses the chain factor 1 − tanh²(z/S)."""
    return _flce(x, weight, target, bias, ignore_index, reduction, label_smoothing, softcap,
                 detach_cap=True)
