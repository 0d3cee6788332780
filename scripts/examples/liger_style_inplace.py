"""A Liger-Kernel-style cross-entropy: an ``autograd.Function`` whose forward computes the
gradient (in float32) and stores it in the logits buffer, returning ``(loss, z_loss)``; its
backward only multiplies by ``grad_output`` (per row for reduction ``none``).

    softcheck check scripts/examples/liger_style_inplace.py:LigerStyleCE \\
        --rename z_loss=lse_square_scale --z-loss 1e-3 --returns loss,z_loss --reduction none

``PerRowBugCE`` carries the seeded bug of Liger #678: its backward uses the first entry of
``grad_output`` for every row, so with ``none`` the per-row upstream gradient is dropped.
``BehindAutogradCE`` stores the gradient as Liger's Triton ``tl.store`` does, through
``.data``: autograd's version counter does not move, so an op upstream that saved the logits
for its backward reads the gradient instead (Liger #272); ``LigerStyleCE``'s ``copy_``
moves it, and autograd refuses such an upstream op instead of computing a wrong gradient.
"""

import torch


def _make(per_row_bug: bool, behind: bool = False):
    class CE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, _input, target, weight=None, ignore_index=-100, lse_square_scale=0.0,
                    label_smoothing=0.0, reduction="mean"):
            cd = torch.promote_types(_input.dtype, torch.float32)   # float32 math, f64 kept
            x = _input.detach().to(cd)
            n, c = x.shape
            valid = (target != ignore_index).to(x.dtype)
            y = torch.where(target != ignore_index, target, 0)
            w = torch.ones(c, dtype=cd) if weight is None else weight.to(cd)
            lse = torch.logsumexp(x, -1)
            logp = x - lse[:, None]
            p = logp.exp()
            eps, wy = label_smoothing, w[y] * valid
            ce = -(1 - eps) * wy * logp.gather(1, y[:, None])[:, 0] \
                - (eps / c) * (w * logp).sum(-1) * valid
            zl = lse_square_scale * lse**2 * valid
            if reduction == "mean":        # ce over Σ w[y] (or the count), z-loss over the count
                d, cnt = (wy.sum() if weight is not None else valid.sum()), valid.sum()
                a, b = 1 / d, 1 / cnt              # every row ignored: NaN loss (as torch) ...
            else:
                a = b = torch.tensor(1.0, dtype=cd)
            onehot = torch.nn.functional.one_hot(y, c).to(cd)
            ga, gb = torch.nan_to_num(a, posinf=0.0), torch.nan_to_num(b, posinf=0.0)
            g = ga * ((1 - eps) * wy[:, None] * (p - onehot)
                     + (eps / c) * (w.sum() * p - w) * valid[:, None])
            g = g + gb * (2 * lse_square_scale * lse * valid)[:, None] * p
            if reduction == "none":
                loss, z = ce + zl, zl
            else:
                loss, z = a * ce.sum() + b * zl.sum(), b * zl.sum()
            # the gradient, in the logits buffer (behind: as tl.store, unseen by autograd)
            (_input.data if behind else _input).copy_(g.to(_input.dtype))
            ctx.save_for_backward(_input.detach())
            ctx.none = reduction == "none"
            return loss.to(_input.dtype), z.to(_input.dtype)

        @staticmethod
        def backward(ctx, grad_output, grad_z):
            (g,) = ctx.saved_tensors
            if ctx.none and not per_row_bug:
                go = grad_output[:, None]
            else:
                go = grad_output.reshape(-1)[0]       # the bug (with none): row 0's g for all
            return g * go, None, None, None, None, None, None

    return CE


LigerStyleCE = _make(False)
LigerStyleCE.__name__ = LigerStyleCE.__qualname__ = "LigerStyleCE"
PerRowBugCE = _make(True)
PerRowBugCE.__name__ = PerRowBugCE.__qualname__ = "PerRowBugCE"
BehindAutogradCE = _make(False, behind=True)
BehindAutogradCE.__name__ = BehindAutogradCE.__qualname__ = "BehindAutogradCE"
