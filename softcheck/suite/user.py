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
#: ... for fused linear cross-entropy (--hidden): x, W and target required
FUSED_KEYS = ("x", "W", "target", "bias", "weight", "grad_output")
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


def _arrays(path: str, keys: tuple, required: int) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError) as e:
        raise SoftcheckError(f"--inputs {path}: cannot read it as a .npz file ({e})") from None
    missing = [k for k in keys[:required] if k not in arrays]
    extra = sorted(set(arrays) - set(keys))
    if missing or extra:
        raise SoftcheckError(f"--inputs {path}: " + (f"missing {', '.join(missing)}; " if missing
                             else "") + (f"unknown arrays {', '.join(extra)}; " if extra else "")
                             + f"it holds {', '.join(keys[:required])} (and optionally "
                             f"{', '.join(keys[required:])})")
    return arrays


def _fused_case(cfg: Config, path: str, a: dict) -> UserCase:
    """--hidden with --inputs: x (N, H), W (V, H), target (N,) ints, optional bias (V,),
    class weights (V,), grad_output (scalar, or (N,) for none), used exactly as given."""
    from ..spec import FusedInputs

    x, w, t = a["x"], a["W"], a["target"]
    bad = None
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1] or x.dtype.name not in \
            DTYPE_NAMES or w.dtype != x.dtype:
        bad = "x must be (N, H) and W (V, H), both float64, float32 or float16 alike"
    elif x.shape[1] != cfg.hidden:
        bad = f"x has H = {x.shape[1]}, but --hidden is {cfg.hidden}"
    elif t.shape != (len(x),) or t.dtype.kind not in "iu":
        bad = "target must be (N,) integers"
    elif cfg.shift or cfg.shape != "nv":
        bad = "--shape btv and --shift are not taken with --inputs (give the shifted targets)"
    v = w.shape[0] if w.ndim == 2 else 0
    ii = cfg.ignore_index
    if bad is None and np.any(((t < 0) | (t >= v)) & (t != (ii if ii is not None else -1))):
        bad = f"a target is outside [0, {v}) and is not --ignore-index"
    for k, shape in (("bias", (v,)), ("weight", (v,))):
        if bad is None and k in a and a[k].shape != shape:
            bad = f"{k} must be ({v},)"
    reduction = (cfg.reduction or ("mean",))[0]
    go = np.asarray(a.get("grad_output", np.ones(len(x)) if reduction == "none" else 1.0),
                    np.float64)
    if bad is None and go.shape != ((len(x),) if reduction == "none" else ()):
        bad = f"grad_output must be {'(N,)' if reduction == 'none' else 'a scalar'}"
    if bad:
        raise SoftcheckError(f"--inputs {path}: {bad}")
    weight = a.get("weight")
    spec = cfg.loss_spec("index", reduction).replace(
        weight=None if weight is None else tuple(float(q) for q in weight))
    fi = FusedInputs(x, w, a.get("bias"), t.astype(np.int64),
                     None if weight is None else weight.astype(x.dtype), go, spec)
    return UserCase(v, len(x), x.dtype.name, "inputs", cfg.seed, spec, cfg.group, cfg.fd,
                    cfg.order, cfg.probes, cfg.fd_budget, cfg.tag, cfg.tolerance, cfg.atol,
                    cfg.rtol, cfg.hidden, "bias" in a, inputs=fi, source=path)


def user_case(cfg: Config) -> UserCase:
    """The case of ``cfg.inputs``: the target kind from the target's shape (an integer (N,)
    vector: index; (N, C): probs), the reduction the first of ``--reduction`` (default
    mean), the other loss options from ``cfg``; bad arrays raise SoftcheckError naming them."""
    from .inputs import make_inputs_from_arrays

    path = cfg.inputs or ""
    arrays = _arrays(path, FUSED_KEYS if cfg.hidden is not None else KEYS,
                     3 if cfg.hidden is not None else 2)
    if cfg.hidden is not None:
        return _fused_case(cfg, path, arrays)
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
