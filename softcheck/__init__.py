"""softcheck: verify softmax cross-entropy gradients three independent ways.

Public API (JAX is imported only when a JAX reference is needed)::

    softcheck.run(**options) -> Report          # the references against each other
    softcheck.check(fn, **options) -> Report    # your gradient against all three
    softcheck.loss(logits, target, **options)   # PyTorch-semantics loss value
    softcheck.gradient(logits, target, method="analytic" | "autodiff" | "finite_difference")
    softcheck.as_torch(logits)                  # numpy (bfloat16 too) -> torch tensor
"""

from __future__ import annotations

__all__ = ["run", "check", "loss", "gradient", "as_torch", "Report", "SoftcheckError",
           "__version__"]

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .spec import SoftcheckError

if TYPE_CHECKING:                   # what the lazy names are, for type checkers
    from .api import as_torch, check, gradient, loss, run
    from .engine.results import Report

_API = {"run", "check", "loss", "gradient", "as_torch"}


def __getattr__(name: str) -> Any:
    """The public API on first use: a worker process importing ``softcheck.candidate`` does
    not pay for the judge's modules (ml_dtypes alone takes a second to import)."""
    if name in _API or name == "Report":
        from . import api, report as _report   # report: str(report), .to_markdown(), .to_junit()
        from .engine.results import Report

        del _report
        globals().update({n: getattr(api, n) for n in _API}, Report=Report)
        return globals()[name]
    raise AttributeError(f"module 'softcheck' has no attribute {name!r}")
