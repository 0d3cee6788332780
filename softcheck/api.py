"""The Python API: the same behaviour as the CLI, as functions."""

from __future__ import annotations

import numpy as np

from .cases import Config
from .report import Report
from .spec import SoftcheckError

METHODS = ("analytic", "autodiff", "finite_difference")
_AXES = ("classes", "batch", "dtype", "targets", "reduction", "regime")


def config(**options) -> Config:
    """A :class:`Config` from keyword options; an axis may be one value or a sequence."""
    unknown = set(options) - set(Config.__dataclass_fields__)
    if unknown:
        raise SoftcheckError(f"unknown option(s): {', '.join(sorted(unknown))}")
    for k in _AXES:
        v = options.get(k)
        if v is not None and not isinstance(v, (list, tuple)):
            options[k] = (v,)
        elif v is not None:
            options[k] = tuple(v)
    if isinstance(options.get("weight"), (list, np.ndarray)):
        options["weight"] = tuple(float(x) for x in options["weight"])
    return Config(**options).validate()


def run(*, fail_fast: bool = False, **options) -> Report:
    """Check analytic vs autodiff vs finite differences over the suite (``softcheck run``)."""
    from .runner import run as _run

    return _run(config(**options), fail_fast=fail_fast)


def check(fn, *, timeout: float | None = None, fail_fast: bool = False, hvp=None,
          **options) -> Report:
    """Check a gradient function ``fn(logits, target, **kw)`` (``softcheck check``)."""
    from .candidate import Candidate, check_candidate

    cand = Candidate.from_callable(fn, hvp=hvp)
    return check_candidate(cand, config(**options), timeout=timeout, fail_fast=fail_fast)


def loss(logits, target, **options):
    """The loss with PyTorch ``F.cross_entropy`` semantics (float64; (N,) for none)."""
    from .losses import loss as _loss

    return _loss(logits, target, **options)


def gradient(logits, target, method: str = "analytic", *, grad_output=None, fd: str | None = None,
             **options) -> np.ndarray:
    """∂loss/∂logits (times ``grad_output``) by one method, float64 (analytic: logits' dtype)."""
    from . import analytic, references
    from .cases import make_inputs_from_arrays
    from .runner import upcast

    if method not in METHODS:
        raise SoftcheckError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    inputs = make_inputs_from_arrays(logits, target, grad_output=grad_output, **options)
    if method == "analytic":
        return analytic.gradient(inputs)
    if method == "autodiff":
        return references.autodiff(upcast(inputs))
    return references.finite_difference(upcast(inputs), fd).grad


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
