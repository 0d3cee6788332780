"""The call record (:class:`CallResult`) and what the judge makes of single calls: the one
repeat loop (:func:`repeated`) and the checks of one call's raw result (:func:`judged`).

The worker is an executor, not a judge (issue #26): it calls the candidate once per request
and hands back what it returned — the gradient in the dtype it came in, the arguments after
the call.  Everything that decides a verdict happens here, in softcheck's process, on those
numbers: the repeats compared bitwise and their largest difference (the ``deterministic``
invariant's figure), the arguments compared with the judge's own originals, the conversion
to float64.  ``--in-process`` runs the same functions on the candidate's objects directly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .arrays import max_difference

#: the captured output of one call kept in a report (the rest is counted, not kept)
OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class CallResult:
    grad: np.ndarray | None
    error: str | None = None
    notes: tuple[str, ...] = ()
    output: str = ""           # what the call printed (stdout and stderr, file-descriptor level)
    nondet: float = 0.0        # max |difference| between repeated calls on identical inputs
    # the forward's values (convention loss/inplace/split), float64 numpy; None if not returned
    loss: np.ndarray | None = None
    z_loss: np.ndarray | None = None
    lse: np.ndarray | None = None
    variants: tuple = ()        # (label, upstream g, gradient) for the other upstream gradients
    ranks: tuple = ()           # --tensor-parallel: (rank, start, stop, loss, width) per rank
    # one raw call only (before ``judged``): (name, array) of its other array arguments as
    # they were after the call, for the judge to compare with its originals
    after: tuple = ()
    # a streamed plain in-place kernel's gradient is its buffer (for g = 1): the judge
    # multiplies it by this g (scalar or (N,)) a block of rows at a time
    times: np.ndarray | None = None


def clip_output(text: str, total: int) -> str:
    """At most OUTPUT_LIMIT characters of a call's output, with a note of what was cut."""
    if total > OUTPUT_LIMIT or len(text) > OUTPUT_LIMIT:
        return text[:OUTPUT_LIMIT] + f"… ({total - OUTPUT_LIMIT} bytes more)"
    return text


def x64_off() -> bool:
    """Whether JAX is loaded in this process with float64 off (the precision note's hint)."""
    jax = sys.modules.get("jax")
    try:
        return jax is not None and not bool(jax.config.jax_enable_x64)
    except Exception:  # noqa: BLE001 - a half-imported or patched jax: no hint
        return False


def judged(r: CallResult, originals: dict, case_dtype, jax_x64_off: bool = False
           ) -> CallResult:
    """One call's raw result judged: every argument it handed back equal to the judge's own
    original (else ``modified its NAME argument in place``), the gradient and the variants'
    gradients converted to float64 here, a note when they came in a lower precision than
    the case's (``jax_x64_off``: JAX in the candidate's process had float64 off)."""
    if r.error is not None:
        return r
    for name, a in r.after:
        if not np.array_equal(np.asarray(a), originals[name], equal_nan=True):
            return CallResult(None, f"modified its {name} argument in place", r.notes,
                              r.output)
    notes = list(r.notes)
    case_dtype = np.dtype(case_dtype)
    if r.grad.dtype.itemsize < case_dtype.itemsize:
        notes.append(f"returned {r.grad.dtype} for a {case_dtype.name} case"
                     + (" (JAX x64 is off in the candidate's process?)" if jax_x64_off else ""))
    return dataclasses.replace(
        r, grad=np.array(r.grad, np.float64, copy=True), notes=tuple(notes), after=(),
        variants=tuple((lab, g, np.array(x, np.float64, copy=True)) for lab, g, x in r.variants))


R = TypeVar("R")


def repeated(once: Callable[[int], R], repeat: int,
             arrays: Callable[[R], list] = lambda r: [r.grad]) -> R:
    """The one repeat loop: ``once(i)`` (the i-th call on identical fresh inputs, judged)
    ``repeat`` times; the first result is kept, each later one compared with it bitwise and
    the largest |difference| of its ``arrays`` becomes ``nondet`` — computed here, from the
    numbers themselves.  The first failure is the result (``on call i of n``)."""
    first, nondet, notes, outputs = None, 0.0, [], []
    for i in range(max(1, repeat)):
        r = once(i)
        if r.output:
            outputs.append(r.output)
        notes += [n for n in r.notes if n not in notes]
        if r.error is not None:
            where = f" (on call {i + 1} of {repeat} on identical inputs)" if i else ""
            return dataclasses.replace(r, error=r.error + where, notes=tuple(notes),
                                       output=_joined(outputs))
        if first is None:
            first = r
            continue
        a, b = arrays(first), arrays(r)
        if len(a) != len(b):
            nondet = float("inf")
        for x, y in zip(a, b):
            if x.shape != y.shape:
                nondet = float("inf")
            elif x.tobytes() != y.tobytes():
                nondet = max(nondet, max_difference(x, y))
    if nondet:
        notes.append(f"nondeterministic: two calls on identical inputs differ by up to "
                     f"{nondet:.3g} (max abs)")
    return dataclasses.replace(first, notes=tuple(notes), nondet=nondet,
                               output=_joined(outputs))


def _joined(outputs: list[str]) -> str:
    """The outputs of a case's calls, one after the other, clipped once (each is already)."""
    if len(outputs) <= 1:
        return outputs[0] if outputs else ""
    text = "".join(outputs)
    return clip_output(text, len(text))
