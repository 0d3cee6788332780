"""PyTorch: F.cross_entropy + autograd, with every option torch has, and grad_output.

    softcheck check scripts/examples/torch_ce.py:grad --weight random --ignore-index -100 \
        --label-smoothing 0.1 --reduction none
"""

import numpy as np
import torch
import torch.nn.functional as F

import softcheck


def grad(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
         grad_output=1.0):
    z = softcheck.as_torch(logits, requires_grad=True)     # bfloat16 too
    w = None if weight is None else softcheck.as_torch(weight)
    loss = F.cross_entropy(z, torch.as_tensor(target), weight=w, ignore_index=ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)
    loss.backward(torch.as_tensor(np.asarray(grad_output, np.float64)).to(loss.dtype).expand_as(loss))
    return z.grad
