"""softcheck: verify softmax cross-entropy gradients three independent ways.

Public API (JAX is imported only when a JAX reference is needed)::

    softcheck.run(**options) -> Report          # the references against each other
    softcheck.check(fn, **options) -> Report    # your gradient against all three
    softcheck.loss(logits, target, **options)   # PyTorch-semantics loss value
    softcheck.gradient(logits, target, method="analytic" | "autodiff" | "finite_difference")
    softcheck.as_torch(logits)                  # numpy (bfloat16 too) -> torch tensor
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["run", "check", "loss", "gradient", "as_torch", "Report", "SoftcheckError",
           "__version__"]

from .api import as_torch, check, gradient, loss, run  # noqa: E402
from .report import Report  # noqa: E402
from .spec import SoftcheckError  # noqa: E402
