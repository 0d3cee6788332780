"""numpy arrays to and from a candidate's framework (torch, JAX, numpy), on its device.

Every array a kernel receives goes through :func:`to_framework`, so each arrives as that
framework's tensor in a dtype it accepts (bfloat16 included: numpy has none, softcheck holds
ml_dtypes' bfloat16, which ``torch.from_numpy`` rejects).  Results come back through
:func:`to_numpy` as float64 (or int) numpy arrays on the host.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np

from ..spec import SoftcheckError
from ..suite.config import FRAMEWORKS
from .arrays import copy_layout, padded_buffer, row_pad

TORCH_HINT = "install it with: pip install 'softcheck[torch]'"


def require(framework: str, what: str = "this check calls the candidate with torch tensors"
            ) -> None:
    """One-line error (exit 2) when the framework a convention needs is not installed."""
    if framework == "torch":            # found, not imported: the judge never needs torch
        try:                            # (importing it cost every torch check ~3 s)
            found = importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError, AttributeError):   # sys.modules["torch"] = None
            found = False
        if not found:
            raise SoftcheckError(f"{what}, but torch is not installed: {TORCH_HINT}")


def detect(fn) -> str:
    """torch / jax / numpy from where ``fn`` lives: its module's name, else the frameworks its
    module imports (torch first: a torch module often imports numpy too)."""
    if is_autograd_function(fn) or is_module(fn):
        return "torch"
    if is_custom_vjp(fn):
        return "jax"
    modname = getattr(fn, "__module__", None) or ""
    for fw, prefixes in (("torch", ("torch",)), ("jax", ("jax", "optax", "flax"))):
        if modname.split(".")[0] in prefixes:
            return fw
    module = sys.modules.get(modname)
    names = set()
    for v in vars(module).values() if module is not None else ():
        m = getattr(v, "__name__", None) if isinstance(v, type(sys)) else getattr(v, "__module__", None)
        if isinstance(m, str):
            names.add(m.split(".")[0])
    if "torch" in names:
        return "torch"
    if names & {"jax", "optax", "flax"}:
        return "jax"
    return "numpy"


def is_autograd_function(fn) -> bool:
    return isinstance(fn, type) and any(
        c.__module__.startswith("torch.autograd") and c.__name__ == "Function"
        for c in fn.__mro__)


def is_module(fn) -> bool:
    """A ``torch.nn.Module`` subclass or instance (a loss module: built with the case's
    options, called as ``forward(logits, target)``)."""
    cls = fn if isinstance(fn, type) else type(fn)
    return any(c.__module__ == "torch.nn.modules.module" and c.__name__ == "Module"
               for c in getattr(cls, "__mro__", ()))


def is_custom_vjp(fn) -> bool:
    return type(fn).__name__ in ("custom_vjp", "custom_jvp") and \
        type(fn).__module__.startswith("jax")


def to_framework(a, framework: str, device: str = "cpu", *, requires_grad: bool = False,
                 copy: bool = True):
    """A numpy array (or None, or a Python scalar) as the framework's array on ``device``;
    ``copy=False``: a torch tensor on the CPU views the (writable) array itself, strides
    included (a streamed case's copy-on-write logits: shared.private)."""
    if a is None or framework == "numpy":
        if not copy:
            return a
        return None if a is None else copy_layout(a)       # a strided view stays strided
    arr = np.asarray(a)
    if framework == "torch":
        import torch

        pad = row_pad(arr)              # --layout strided: the tensor keeps the row stride
        if not copy and device == "cpu":
            if arr.dtype.name == "bfloat16":
                t = torch.from_numpy(arr.view(np.uint16)).view(torch.bfloat16)
            else:
                t = torch.from_numpy(arr)
            return t.requires_grad_(True) if requires_grad else t
        buf = padded_buffer(arr, pad) if pad else np.array(arr, copy=True)
        if arr.dtype.name == "bfloat16":
            # the same itemsize: the view keeps any strides (--layout transposed)
            t = torch.from_numpy(buf.view(np.uint16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(buf)
        t = t.to(device)
        if pad:
            t = t[:, :arr.shape[1]]
        return t.requires_grad_(True) if requires_grad else t
    from ..reference.jaxsetup import load

    jax, jnp = load()                  # x64 on: a float64 case stays float64
    x = jnp.asarray(arr)
    return jax.device_put(x, _jax_device(device))


def _jax_device(device: str):
    import jax

    kind = "gpu" if device == "cuda" else "cpu"
    try:
        return jax.devices(kind)[0]
    except RuntimeError:
        raise SoftcheckError(f"--device {device}: JAX sees no {kind} device") from None


def check_device(framework: str, device: str) -> None:
    """``--device cuda`` needs a GPU the framework sees: one line, exit 2, if there is none."""
    if device == "cpu" or framework == "numpy":
        if device != "cpu" and framework == "numpy":
            raise SoftcheckError("--device cuda needs a torch or JAX candidate (--framework)")
        return
    if framework == "torch":
        import torch

        if not torch.cuda.is_available():
            raise SoftcheckError("--device cuda: torch sees no CUDA device on this machine")
    else:
        _jax_device(device)


def to_numpy(x) -> np.ndarray:
    """A framework result (any device, bfloat16, requiring grad) as a float64 numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()
        return t.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "V" or arr.dtype.name == "bfloat16":
        arr = arr.astype(np.float32)
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


def to_native(x) -> np.ndarray:
    """A framework result as numpy in its own precision, without a copy where it can be
    (a CPU tensor's memory; bfloat16 as ml_dtypes' bfloat16): a streamed case's gradient."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(x)


def dtype_name(x) -> str:
    """The dtype of a framework array in numpy's words (``float32``, ``bfloat16``, ...)."""
    d = getattr(x, "dtype", None)
    return str(d).replace("torch.", "") if d is not None else type(x).__name__


__all__ = ["FRAMEWORKS", "TORCH_HINT", "check_device", "detect", "dtype_name", "require",
           "to_framework", "to_native", "to_numpy"]
