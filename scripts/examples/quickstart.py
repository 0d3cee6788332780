"""The README's quick start: a numpy gradient, an autograd.Function and a loss, each right,
and one gradient with a bug (it forgets the mean's division by the batch size).

    softcheck check scripts/examples/quickstart.py:grad
    softcheck check scripts/examples/quickstart.py:CrossEntropy
    softcheck check scripts/examples/quickstart.py:loss --convention loss
    softcheck check scripts/examples/quickstart.py:grad_bug
"""

import numpy as np
import torch


def grad(logits, target):
    """d mean-CE / d logits, in numpy."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)


def grad_bug(logits, target):
    """The sum's gradient where the mean's is due."""
    return grad(logits, target) * len(target)


class CrossEntropy(torch.autograd.Function):
    """A hand-written backward: softcheck detects the autograd.Function (no flag)."""

    @staticmethod
    def forward(ctx, logits, target):
        z = logits.double()
        lse = torch.logsumexp(z, 1)
        p = torch.softmax(z, 1)
        p[torch.arange(len(target)), target] -= 1
        ctx.save_for_backward((p / len(target)).to(logits.dtype))
        return (lse - z.gather(1, target[:, None])[:, 0]).mean().to(logits.dtype)

    @staticmethod
    def backward(ctx, g):
        (grad_logits,) = ctx.saved_tensors
        return grad_logits * g, None


def loss(logits, target):
    """A loss: with --convention loss softcheck differentiates it (torch autograd)."""
    return torch.nn.functional.cross_entropy(logits, target)
