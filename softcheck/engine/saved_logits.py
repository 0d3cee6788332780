"""The upstream check (``--upstream-check on``, the default; Liger-Kernel #272).

softcheck gives a kernel fresh leaf logits, so nothing upstream ever saved them.  In a model
they are an op's output, and an op that saves its output for its backward (softmax, tanh,
exp) reads those values again there.  A kernel that writes its gradient into the logits'
memory behind autograd's back (a Triton ``tl.store``, ``.data``: the version counter does not
move, so autograd's in-place check never fires) hands that op other numbers, and the
gradient that reaches the model is silently wrong.

So a torch autograd kernel (``--convention loss``, an ``autograd.Function``) is called once
more per whole case, on the case's own logits made by an identity op on a leaf h that saves
its output and reads it in its backward (``conventions.saves_output``: the gradient times
saved / original, exactly 1 while untouched; same values, layout and strides).  h's gradient
must be the kernel's own gradient of the case (the main call's), bitwise up to the kernel's
own nondeterminism (judged with the case's tolerance; invariant ``logits_saved_upstream``),
so the kernel's precision never enters.  A write autograd can see (``copy_``,
``ctx.mark_dirty``) makes autograd raise instead: the designed behaviour, which passes.
Not on ranks, JAX kernels or streamed cases.
"""

from __future__ import annotations

from ..candidate.upstream_op import UPSTREAM_REFUSED
from ..judge import tolerances
from ..judge.compare import Invariant, compare

NAME = "logits_saved_upstream"
HINT = ("the kernel writes into its logits behind autograd's back: an op upstream that saved "
        "them for its backward (a softmax, tanh or exp in a model) then computes from the "
        "kernel's numbers and its gradient is silently wrong (Liger-Kernel #272); write "
        "into a copy, or ctx.mark_dirty the logits so autograd refuses (--upstream-check off "
        "if your model never feeds such logits)")


def applies(candidate, case) -> bool:
    """A torch autograd kernel on one process, the check on."""
    st = candidate.settings
    return (getattr(case, "upstream_check", "on") == "on" and st.framework == "torch"
            and st.tensor_parallel <= 1 and (st.convention == "loss" or st.autograd))


def check(candidate, inputs, grad, policy, *, inputs64, dtype, kappa, scale, user=None,
          mode=tolerances.DEFAULT_MODE) -> tuple[Invariant, bool]:
    """The invariant, and whether it names #272: h's gradient through the op that saved the
    logits against ``grad``, the kernel's own gradient of the case."""
    r = candidate.call(inputs, timeout=policy.limit, variants=False, upstream=True)
    if r.error:
        if r.error.startswith(UPSTREAM_REFUSED):
            return Invariant(NAME, "candidate", True, "autograd refused: the kernel's write "
                             "into the logits moved their version counter (or was marked, "
                             "ctx.mark_dirty), so the upstream op that saved them raises "
                             "instead of computing a wrong gradient"), False
        return Invariant(NAME, "candidate", False, "called on logits that an op upstream "
                         "saved, it failed: " + r.error.splitlines()[0]), False
    cmp = compare(("candidate", "candidate"), r.grad, grad, inputs=inputs64, dtype=dtype,
                  kappa=kappa, scale=scale, user=user, mode=mode)
    behind = any("behind autograd's back" in n for n in r.notes)
    if cmp.passed:
        return Invariant(NAME, "candidate", True, "the gradient through an op that saved the "
                         "logits is the kernel's own"), False
    return Invariant(NAME, "candidate", False,
                     f"the gradient through an op that saved the logits differs from the "
                     f"kernel's own by up to {cmp.max_abs_error:.3g} ({cmp.ratio:.3g}× "
                     "allowed)" + ("; the kernel wrote into the logits and their autograd "
                                   "version counter did not move" if behind else "")), True
