"""The upstream check (``--upstream-check on``, the default; Liger-Kernel #272).

softcheck gives a kernel fresh leaf logits, so nothing upstream ever saved them.  In a model
they are an op's output, and an op that saves its output for its backward (softmax, tanh,
relu) reads them again in the backward.  A kernel that writes its gradient into the logits'
memory behind autograd's back (a Triton ``tl.store``: the version counter does not move, so
autograd's in-place check never fires) hands that op its own numbers, and the gradient that
reaches the model is silently wrong.

So a torch autograd kernel (``--convention loss``, an ``autograd.Function``) is called once
more per whole case on logits that are ``torch.relu`` of a leaf h (conventions.run's
``upstream``): the case's logits shifted per row to start at 1, so relu passes them
unchanged and its saved output *is* the kernel's input.  h's gradient must equal the
closed form at those logits (relu's backward masks by its saved output > 0: all ones when
untouched; a gradient written over it zeroes every entry where the gradient is negative, the
target's).  Judged with the case's own tolerance (invariant ``logits_saved_upstream``).  A
kernel that marks its write (``ctx.mark_dirty``) makes autograd raise instead: that is the
designed behaviour (a write autograd can see), and passes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..judge import tolerances
from ..judge.compare import Invariant, compare
from ..reference import analytic
from ..reference.finite_difference import row_stats

NAME = "logits_saved_upstream"
HINT = ("the kernel writes into its logits behind autograd's back: an op upstream that saved "
        "them for its backward (relu here; a softmax or tanh in a model) then computes from "
        "the kernel's numbers and its gradient is silently wrong (Liger-Kernel #272); write "
        "into a copy, or ctx.mark_dirty the logits so autograd refuses (--upstream-check off "
        "if your model never feeds such logits)")
#: torch's error when a tensor an op saved was modified in place (a marked write)
REFUSED = "modified by an inplace operation"


def applies(candidate, case, inputs) -> bool:
    """A torch autograd kernel on one process, finite logits, the check on; not a --layout
    strided case (relu's output of a view with gaps is contiguous: the layout would be lost;
    a transposed view is dense, and relu keeps its strides)."""
    st = candidate.settings
    return (getattr(case, "upstream_check", "on") == "on" and st.framework == "torch"
            and st.tensor_parallel <= 1 and (st.convention == "loss" or st.autograd)
            and not inputs.pad and bool(np.all(np.isfinite(inputs.logits64))))


def positive(inputs):
    """The case's logits shifted per row to start at 1, in the case's dtype (what relu
    passes unchanged); the rest of the case as it is."""
    z = inputs.logits64
    shifted = z - np.min(z, axis=1, keepdims=True) + 1.0
    return dataclasses.replace(inputs, logits=shifted.astype(inputs.logits.dtype))


def check(candidate, case, inputs, policy, user=None) -> Invariant:
    """The invariant: h's gradient through relu against the closed form at its logits."""
    up = positive(inputs)
    r = candidate.call(up, timeout=policy.limit, variants=False, upstream=True)
    if r.error:
        if REFUSED in r.error:
            return Invariant(NAME, "candidate", True, "autograd refused: the kernel's write "
                             "into the logits moved their version counter (or was marked, "
                             "ctx.mark_dirty), so the upstream op that saved them raises "
                             "instead of computing a wrong gradient")
        return Invariant(NAME, "candidate", False, "called on logits that an op upstream "
                         "saved, it failed: " + r.error.splitlines()[0])
    up64 = up.float64()
    kappa = tolerances.condition(up64.logits, case.spec.divisor, case.spec.softcap)
    cmp = compare(("candidate", "analytic"), r.grad, analytic.gradient(up64), inputs=up64,
                  dtype=case.dtype, kappa=kappa, scale=row_stats(up64).scale, user=user,
                  mode=case.tolerance)
    behind = any("behind autograd's back" in n for n in r.notes)
    if cmp.passed:
        detail = "the gradient through relu(h), which saved the logits, is right"
    else:
        detail = (f"the gradient through relu(h), which saved the logits, is wrong: max error "
                  f"{cmp.max_abs_error:.3g}, {cmp.ratio:.3g}× allowed"
                  + ("; the kernel wrote into the logits and their autograd version counter "
                     "did not move" if behind else ""))
    return Invariant(NAME, "candidate", cmp.passed, detail)
