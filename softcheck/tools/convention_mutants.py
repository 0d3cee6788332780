"""Wrong kernels written the ways real ones are (in-place, split fwd/bwd), numpy only.

Each is checked by ``softcheck mutants`` under its calling convention, beside a correct kernel
of the same convention (``CORRECT``): the loss-value, lse and upstream-gradient checks are
proven to catch what only they can see.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..reference.loss import values
from ..spec import OPTION_NAMES


def _inputs(logits, target, **kw):
    from ..suite.inputs import make_inputs_from_arrays

    opts = {k: v for k, v in kw.items() if k in OPTION_NAMES and v is not None}
    return make_inputs_from_arrays(logits, target, **opts)


def _gradient(logits, target, **kw):
    """softcheck's closed form (the correct gradient) for the options in ``kw``."""
    from ..reference.analytic import gradient

    return gradient(_inputs(logits, target, **kw))


def inplace(logits, target, **kw):
    """Correct: the loss returned, dL/dlogits (g = 1) left in the logits buffer."""
    loss = values(_inputs(logits, target, **kw).float64()).loss
    logits[...] = _gradient(logits, target, **kw)
    return loss


def inplace_loss_unsmoothed(logits, target, label_smoothing=0.0, **kw):
    """The forward's loss forgets label smoothing; the in-place gradient is right."""
    z = np.array(logits, copy=True)
    inplace(logits, target, label_smoothing=label_smoothing, **kw)
    return values(_inputs(z, target, **kw).float64()).loss


def inplace_never_writes(logits, target, **kw):
    """Returns the loss but never writes the gradient (the buffer keeps the logits)."""
    return values(_inputs(logits, target, **kw).float64()).loss


def fwd(logits, target, **kw):
    """Correct split forward: (loss, lse)."""
    v = values(_inputs(logits, target, **kw).float64())
    return v.loss, v.lse


def fwd_lse_unshifted(logits, target, **kw):
    """lse without the max shift's constant: log Σ exp(z − max)."""
    loss, lse = fwd(logits, target, **kw)
    return loss, lse - np.max(np.asarray(logits, np.float64), -1)


def bwd(logits, target, dloss, lse, **kw):
    """Correct split backward: dloss times dL/dlogits."""
    kw = {k: v for k, v in kw.items() if k != "grad_output"}
    return _gradient(logits, target, grad_output=np.asarray(dloss, np.float64), **kw)


def bwd_first_dloss(logits, target, dloss, lse, **kw):
    """Liger #678 / PR #1298: only dloss[0] is used for every row."""
    d = np.asarray(dloss, np.float64)
    return bwd(logits, target, np.full_like(d, d.reshape(-1)[0]), lse, **kw)


@dataclasses.dataclass(frozen=True)
class Kernel:
    fn: object
    backward: object = None


#: the correct kernel of each convention (the baseline every mutant of it is run beside)
CORRECT = {"inplace": Kernel(inplace), "split": Kernel(fwd, bwd)}
