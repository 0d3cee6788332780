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

from ._version import __version__
from .api import as_torch, check, gradient, loss, run
from .engine.results import Report
from . import report as _report   # registers str(report), report.to_markdown(), .to_junit()
del _report
from .spec import SoftcheckError
