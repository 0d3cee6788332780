"""One seeded bug each, and their correct twins, for the console and pytest tests."""

import numpy as np
import torch


def numpy_right(logits, target):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)


def numpy_doubled(logits, target):
    """Twice the gradient (a constant factor 2)."""
    return numpy_right(logits, target) * 2


class _CE(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, target):
        z = logits.double()
        lse = torch.logsumexp(z, 1)
        loss = (lse - z.gather(1, target[:, None].long())[:, 0]).mean()
        p = torch.softmax(z, 1)
        p[torch.arange(len(target)), target.long()] -= 1
        ctx.save_for_backward((p / len(target)).to(logits.dtype))
        return loss.to(logits.dtype)


class TorchRight(_CE):
    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None


class TorchIgnoresGradOutput(_CE):
    """The backward drops grad_output (Liger #678)."""

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad, None


def torch_loss(logits, target):
    return torch.nn.functional.cross_entropy(logits, target.long())


def torch_loss_halved(logits, target):
    return torch.nn.functional.cross_entropy(logits, target.long()) / 2


def numpy_writes_logits(logits, target):
    """Right, but shifts its logits argument in place (allowed: a note, not a failure)."""
    logits -= logits.max(1, keepdims=True)
    return numpy_right(logits, target)
