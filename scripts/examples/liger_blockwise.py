"""A Liger-Kernel-style cross-entropy for LLM sizes: an ``autograd.Function`` whose forward
computes the loss and the gradient in float32 a block of rows at a time (as Liger's Triton
kernel does a row per program) and writes the gradient into the logits buffer in place; its
backward multiplies that buffer by ``grad_output`` in place (skipped for g = 1), so nothing
full-size is allocated besides the logits themselves.  Mean / sum / none, ``ignore_index``.

    softcheck check scripts/examples/liger_blockwise.py:LigerBlockwiseCE \\
        --batch 4096 --classes 131072 --dtype float32 --regime normal

``WrongScaleCE`` carries a seeded bug: the mean divides by the batch size instead of the
number of rows not ignored (the classic slip; invisible without ignored rows).
"""

import torch

#: float32 elements computed at once (a block of rows: 16 MB of temporaries per array)
BLOCK = 1 << 22


def _make(divide_by_batch: bool):
    class CE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, _input, target, ignore_index=-100, reduction="mean"):
            n, c = _input.shape
            valid = target != ignore_index
            count = n if divide_by_batch else int(valid.sum())
            scale = 1.0 / max(count, 1) if reduction == "mean" else 1.0
            rows = max(1, BLOCK // c)
            losses = torch.zeros(n, dtype=torch.float32)
            for r in range(0, n, rows):
                x = _input[r:r + rows].float()
                y, v = target[r:r + rows], valid[r:r + rows]
                lse = torch.logsumexp(x, -1)
                yy = torch.where(v, y, 0)
                losses[r:r + rows] = torch.where(v, lse - x.gather(1, yy[:, None])[:, 0], 0.0)
                x.sub_(lse[:, None]).exp_()                        # p, in float32
                x[torch.arange(len(y)), yy] -= 1.0
                x.mul_((v * scale)[:, None])
                _input[r:r + rows] = x.to(_input.dtype)            # the gradient, in place
            loss = losses if reduction == "none" else losses.sum() * scale if count or \
                reduction == "sum" else losses.sum() / 0.0       # all ignored: NaN, as torch
            ctx.save_for_backward(_input.detach())
            ctx.none = reduction == "none"
            return loss.to(_input.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            (g,) = ctx.saved_tensors
            if ctx.none:
                g.mul_(grad_output[:, None])
            elif grad_output.item() != 1.0:                       # as Liger: in place
                g.mul_(grad_output)
            return g, None, None, None

    return CE


LigerBlockwiseCE = _make(False)
LigerBlockwiseCE.__name__ = LigerBlockwiseCE.__qualname__ = "LigerBlockwiseCE"
WrongScaleCE = _make(True)
WrongScaleCE.__name__ = WrongScaleCE.__qualname__ = "WrongScaleCE"
