"""The user's own arrays (``--inputs FILE.npz``) as one more case beside the seeded suite."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..spec import Inputs, SoftcheckError
from .cases import Case
from .config import Config

#: the arrays FILE.npz may hold (logits and target required)
KEYS = ("logits", "target", "weight", "grad_output")
DTYPE_NAMES = {"float64", "float32", "float16"}


@dataclass(frozen=True)
class UserCase(Case):
    """A case whose inputs are the user's arrays, not drawn from the seed."""

    inputs: Inputs | None = field(default=None, compare=False, repr=False)
    source: str = ""

    @property
    def name(self) -> str:
        return f"inputs[{os.path.basename(self.source)}]"

    def params(self) -> dict:
        return {**super().params(), "inputs": self.source}


def user_case(cfg: Config) -> UserCase:
    """The case of ``cfg.inputs``: the target kind from the target's shape (an integer (N,)
    vector: index; (N, C): probs), the reduction the first of ``--reduction`` (default
    mean), the other loss options from ``cfg``; bad arrays raise SoftcheckError naming them."""
    from .inputs import make_inputs_from_arrays

    path = cfg.inputs or ""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError) as e:
        raise SoftcheckError(f"--inputs {path}: cannot read it as a .npz file ({e})") from None
    missing = [k for k in ("logits", "target") if k not in arrays]
    extra = sorted(set(arrays) - set(KEYS))
    if missing or extra:
        raise SoftcheckError(f"--inputs {path}: " + (f"missing {', '.join(missing)}; " if missing
                             else "") + (f"unknown arrays {', '.join(extra)}; " if extra else "")
                             + f"it holds {', '.join(KEYS[:2])} (and optionally "
                             f"{', '.join(KEYS[2:])})")
    z = arrays["logits"]
    if z.dtype.name not in DTYPE_NAMES:
        raise SoftcheckError(f"--inputs {path}: logits must be float64, float32 or float16, "
                             f"got {z.dtype}")
    t = arrays["target"]
    targets = "index" if t.ndim == 1 else "probs"
    reduction = (cfg.reduction or ("mean",))[0]
    weight = arrays.get("weight")
    spec = cfg.loss_spec(targets, reduction).replace(
        weight=None if weight is None else tuple(float(w) for w in np.ravel(weight)))
    try:
        inputs = make_inputs_from_arrays(z, t, spec, grad_output=arrays.get("grad_output"))
    except SoftcheckError as e:
        raise SoftcheckError(f"--inputs {path}: {e}") from None
    n, c = z.shape
    return UserCase(c, n, z.dtype.name, "inputs", cfg.seed, spec, cfg.group, cfg.fd, cfg.order,
                    cfg.probes, cfg.fd_budget, cfg.tag, cfg.tolerance, cfg.atol, cfg.rtol,
                    inputs=inputs, source=path)
