"""The Python API: the same behaviour as the CLI, as functions."""

from __future__ import annotations

import numpy as np

from .engine.results import Report
from .spec import SoftcheckError
from .suite.config import config

METHODS = ("analytic", "autodiff", "finite_difference")


def run(*, fail_fast: bool = False, **options) -> Report:
    """Check analytic vs autodiff vs finite differences over the suite (``softcheck run``)."""
    from .engine.suites import run as _run

    return _run(config(**options), fail_fast=fail_fast)


CALL_OPTIONS = ("convention", "framework", "args", "rename", "returns", "device")


def check(fn, *, timeout: float | None = None, fail_fast: bool = False, hvp=None,
          backward=None, **options) -> Report:
    """Check a gradient function ``fn(logits, target, **kw)`` (``softcheck check``), or a
    kernel as written with ``convention="loss"|"inplace"|"split"`` (``backward=`` the split
    backward, a callable)."""
    import dataclasses

    from .candidate import Candidate
    from .candidate.conventions import resolve, settings
    from .engine.suites import check_candidate

    call = {k: options.pop(k) for k in CALL_OPTIONS if k in options}
    bname = None if backward is None else getattr(backward, "__qualname__", repr(backward))
    st = resolve(fn, settings(backward=bname, **call), bwd=backward)
    cand = dataclasses.replace(Candidate.from_callable(fn, hvp=hvp), settings=st,
                               backward=backward)
    return check_candidate(cand, config(**options), timeout=timeout, fail_fast=fail_fast)


def loss(logits, target, **options):
    """The loss with PyTorch ``F.cross_entropy`` semantics (float64; (N,) for none)."""
    from .reference.loss import loss as _loss

    return _loss(logits, target, **options)


def gradient(logits, target, method: str = "analytic", *, grad_output=None, fd: str | None = None,
             **options) -> np.ndarray:
    """∂loss/∂logits (times ``grad_output``) by one method, float64 (analytic: logits' dtype)."""
    from .reference import analytic, autodiff, finite_difference
    from .suite.inputs import make_inputs_from_arrays

    if method not in METHODS:
        raise SoftcheckError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    inputs = make_inputs_from_arrays(logits, target, grad_output=grad_output, **options)
    if method == "analytic":
        return analytic.gradient(inputs)
    if method == "autodiff":
        return autodiff.autodiff(inputs.float64())
    return finite_difference.finite_difference(inputs.float64(), fd).grad


def as_torch(array, *, requires_grad: bool = False):
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
