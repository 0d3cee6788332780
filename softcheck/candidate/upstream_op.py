"""The op the upstream check puts before a torch autograd kernel (engine/saved_logits.py):
an identity that saves its output for its backward and reads it there, as softmax, tanh or
exp do, so a kernel that writes into its logits behind autograd's back (Liger-Kernel #272)
changes the gradient that reaches the op's input."""

from __future__ import annotations

#: the upstream call's error when autograd refused a write it could see into the saved output
UPSTREAM_REFUSED = ("upstream check: autograd refused the saved logits, modified in place "
                    "(their version counter moved)")


def saves_output():
    """An identity op that saves its output for its backward and reads it there (as softmax,
    tanh or exp do): the backward multiplies by saved / original, exactly 1 while nobody
    wrote into the output.  Its output keeps the input's strides (--layout strided,
    transposed).  Built on first use (torch imported lazily)."""
    import torch

    class SavesOutput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            out = torch.empty_strided(h.size(), h.stride(), dtype=h.dtype, device=h.device)
            out.copy_(h)
            ctx.save_for_backward(out)
            ctx.original = h.detach().clone()
            return out

        @staticmethod
        def backward(ctx, g):
            (out,) = ctx.saved_tensors
            same = out == ctx.original               # ±inf logits stay exact as well
            return g * torch.where(same, torch.ones_like(out), out / ctx.original)

    return SavesOutput
