"""The Python API: the same behaviour as the CLI, as functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .engine.results import Report
from .candidate.call import DEFAULT_TIMEOUT
from .spec import SoftcheckError
from .suite.config import CALL_KEYS, config

METHODS = ("analytic", "autodiff", "finite_difference")


def run(*, fail_fast: bool = False, **options: Any) -> Report:
    """Check analytic vs autodiff vs finite differences over the suite (``softcheck run``)."""
    from .engine.suites import run as _run

    return _run(config(**options), fail_fast=fail_fast)


#: the call options ``check`` takes (backward is a callable here): the CLI's, one list
CALL_OPTIONS = tuple(k for k in CALL_KEYS if k != "backward")


def check(fn: Callable[..., Any], *, timeout: float | None = DEFAULT_TIMEOUT, repeat: int = 2,
          nondet_tol: float | None = None, in_process: bool = False, fail_fast: bool = False,
          memory_limit: int | str | None = None,
          hvp: Callable[..., Any] | None = None, backward: Callable[..., Any] | None = None,
          **options: Any) -> Report:
    """Check a gradient function ``fn(logits, target, **kw)`` (``softcheck check``), or a
    kernel as written with ``convention="loss"|"inplace"|"split"`` (``backward=`` the split
    backward, a callable).

    ``fn`` runs in a worker process when it can be re-imported there by its module and name
    (a module-level function); a lambda or closure runs in this process, and the report says
    so.  ``timeout`` seconds per call (0 or None: no limit); ``repeat`` calls per case on
    identical inputs; ``nondet_tol`` the difference allowed between them; ``memory_limit``
    the worker's (``"8G"``, bytes; 0: none; default 3/4 of the machine's memory)."""
    import dataclasses

    from .candidate import CallPolicy, Candidate, source_of
    from .candidate.conventions import resolve, settings
    from .engine.suites import check_candidate

    call = {k: options.pop(k) for k in CALL_OPTIONS if k in options}
    bsrc = source_of(backward) if backward is not None else None
    bname = None if backward is None else (
        bsrc or getattr(backward, "__qualname__", repr(backward)))
    st = resolve(fn, settings(backward=bname, fused=options.get("hidden") is not None, **call),
                 bwd=backward)
    cand = dataclasses.replace(Candidate.from_callable(fn, hvp=hvp), settings=st,
                               backward=backward)
    reloadable = backward is None or bsrc is not None
    cand.source = source_of(fn) if reloadable else None
    cand.hvp_source = source_of(hvp) if hvp is not None else None
    from .candidate.sandbox import parse_size

    policy = CallPolicy(timeout, repeat, nondet_tol, not in_process,
                        None if memory_limit is None else parse_size(memory_limit))
    return check_candidate(cand, config(**options), policy=policy, fail_fast=fail_fast)


def loss(logits: Any, target: Any, **options: Any) -> np.ndarray:
    """The loss with PyTorch ``F.cross_entropy`` semantics (float64; (N,) for none)."""
    from .reference.loss import loss as _loss

    return _loss(logits, target, **options)


def gradient(logits: Any, target: Any, method: str = "analytic", *, grad_output: Any = None,
             fd: str | None = None, **options: Any) -> np.ndarray:
    """∂loss/∂logits (times ``grad_output``) by one method, float64 (analytic: logits' dtype)."""
    from .reference import analytic, autodiff, finite_difference
    from .suite.inputs import make_inputs_from_arrays

    if method not in METHODS:
        raise SoftcheckError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    inputs = make_inputs_from_arrays(logits, target, grad_output=grad_output, **options)
    if method == "analytic":
        return analytic.gradient(inputs).copy()       # the memoized one is read-only
    if method == "autodiff":
        return autodiff.autodiff(inputs.float64())
    return finite_difference.finite_difference(inputs.float64(), fd).grad


def as_torch(array: Any, *, requires_grad: bool = False) -> Any:
    """A numpy array as a torch tensor of the same dtype, bfloat16 included (numpy has no
    bfloat16: softcheck passes ml_dtypes' bfloat16, which ``torch.from_numpy`` rejects).
    For a torch candidate: ``z = softcheck.as_torch(logits, requires_grad=True)``."""
    import torch

    a = np.asarray(array)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad) if requires_grad else t
