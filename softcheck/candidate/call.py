"""Call the user's gradient function on one case: guarded, captured, converted to an array.

Calling convention (fixed): ``fn(logits, target, **kw)``; ``logits`` a fresh writable numpy
copy (N, C) in the case dtype, ``target`` int64 (N,) or float (N, C); ``kw`` holds those of
:data:`OPTION_NAMES` the function declares (all of them if it takes ``**kwargs``).  It returns
∂L/∂logits as anything array-like (numpy, JAX, torch, also requiring grad or on a GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..spec import OPTION_NAMES, Inputs, SoftcheckError
from .conventions import CallFailed, Settings
from .conventions import run as run_convention


class CandidateError(Exception):
    """The candidate misbehaved on one case: the case fails with this reason."""


@dataclass(frozen=True)
class CallResult:
    grad: np.ndarray | None
    error: str | None = None
    notes: tuple[str, ...] = ()
    # the forward's values (convention loss/inplace/split), float64 numpy; None if not returned
    loss: np.ndarray | None = None
    z_loss: np.ndarray | None = None
    lse: np.ndarray | None = None
    variants: tuple = ()        # (label, upstream g, gradient) for the other upstream gradients


@dataclass
class Candidate:
    fn: object
    label: str
    hvp: object = None
    source: str | None = None       # TARGET with an absolute path: a worker process reloads it
    hvp_source: str | None = None
    settings: Settings = Settings()   # how it is called (--convention)
    backward: object = None         # split: the backward kernel

    def with_hvp(self, h: Candidate) -> Candidate:
        """This gradient with ``h``'s function as its Hessian-vector product (--order 2)."""
        return dataclasses.replace(self, hvp=h.fn, hvp_source=h.source)

    @classmethod
    def from_callable(cls, fn, hvp=None, label: str | None = None) -> Candidate:
        if not callable(fn):
            raise SoftcheckError(f"{fn!r} is not callable")
        return cls(fn, label or getattr(fn, "__qualname__", repr(fn)), hvp)

    @property
    def _params(self):
        try:
            return inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return {}

    def takes(self, name: str) -> bool:
        ps = self._params
        return name in ps or any(p.kind is p.VAR_KEYWORD for p in ps.values())

    def kwargs(self, inputs: Inputs) -> dict:
        s = inputs.spec
        go = np.asarray(inputs.grad_output)
        values = {
            "weight": None if inputs.weight is None else np.array(inputs.weight, copy=True),
            "ignore_index": -100 if s.ignore_index is None else s.ignore_index,
            "reduction": s.reduction,
            "label_smoothing": s.label_smoothing,
            "smoothing_convention": s.smoothing_convention,
            "temperature": s.temperature,
            "softcap": s.softcap,
            "z_loss": s.z_loss,
            "mean_over": s.mean_over,
            "logit_scale": s.logit_scale,
            "grad_output": float(go) if go.ndim == 0 else go.astype(inputs.logits.dtype),
        }
        return {k: values[k] for k in OPTION_NAMES if self.takes(k)}

    def call(self, inputs: Inputs, *, timeout: float | None = None) -> CallResult:
        if self.settings.convention != "grad":
            return _guarded_convention(self, inputs, timeout)
        logits = np.array(inputs.logits, copy=True)
        target = np.array(inputs.target, copy=True)
        kw = self.kwargs(inputs)
        return _guarded(self.fn, (logits, target), kw, inputs, timeout, self.label)

    def call_hvp(self, inputs: Inputs, direction: np.ndarray, *, timeout=None) -> CallResult:
        kw = self.kwargs(inputs)
        args = (np.array(inputs.logits, copy=True), np.array(inputs.target, copy=True),
                np.array(direction, copy=True))
        return _guarded(self.hvp, args, kw, inputs, timeout, "hvp")


def _guarded(fn, args, kw, inputs: Inputs, timeout, label) -> CallResult:
    originals = [np.array(a, copy=True) for a in args]
    kw_originals = {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}
    notes = []
    try:
        out, printed = _invoke(fn, args, kw, timeout)
        if printed:
            raise CandidateError(f"printed to stdout ({printed[:60].strip()!r}): a gradient "
                                 "function must not write there (stdout carries --json -)")
        grad = to_array(out, inputs.logits.shape)
    except CandidateError as e:
        return CallResult(None, str(e))
    if not np.array_equal(args[0], originals[0], equal_nan=True):
        notes.append("wrote into its logits argument (allowed: each call gets a fresh copy)")
    names = ("target", "direction")
    for i, (a, o) in enumerate(zip(args[1:], originals[1:])):
        if not np.array_equal(a, o, equal_nan=True):
            return CallResult(None, f"modified its {names[i]} argument in place")
    for k, o in kw_originals.items():
        if not np.array_equal(kw[k], o, equal_nan=True):
            return CallResult(None, f"modified its {k} argument in place")
    if grad.dtype.itemsize < np.dtype(inputs.logits.dtype).itemsize:
        notes.append(f"returned {grad.dtype} for a {np.dtype(inputs.logits.dtype).name} case")
    return CallResult(np.asarray(grad, np.float64), None, tuple(notes))


def _guarded_convention(cand: Candidate, inputs: Inputs, timeout) -> CallResult:
    """``conventions.run`` under the same capture and timeout; its outputs as a CallResult."""
    from ..reference.loss import values

    def run():
        try:
            return run_convention(cand.fn, cand.settings, inputs, bwd=cand.backward,
                                   lse64=values(inputs.float64()).lse)
        except CallFailed as e:
            return e

    try:
        out, printed = _invoke(run, (), {}, timeout)
        if printed:
            raise CandidateError(f"printed to stdout ({printed[:60].strip()!r}): a kernel "
                                 "must not write there (stdout carries --json -)")
        if isinstance(out, CallFailed):
            raise CandidateError(str(out))
        grad = to_array(out.grad, inputs.logits.shape)
        variants = tuple((lab, g, np.asarray(to_array(x, inputs.logits.shape), np.float64))
                         for lab, g, x in out.variants)
    except CandidateError as e:
        return CallResult(None, str(e))
    return CallResult(np.asarray(grad, np.float64), None, out.notes, out.loss, out.z_loss,
                      out.lse, variants)


def _invoke(fn, args, kw, timeout):
    """Call with stdout captured (Python and file-descriptor level) and an optional timeout."""
    box: dict = {}

    def target():
        try:
            box["out"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - any failure is the candidate's
            box["exc"] = e

    buf = io.StringIO()
    with _capture_fd1() as fd_text, contextlib.redirect_stdout(buf):
        if timeout:
            th = threading.Thread(target=target, daemon=True)
            t0 = time.perf_counter()
            th.start()
            th.join(timeout)
            if th.is_alive():
                raise CandidateError(f"took longer than {timeout:g} s (--timeout); "
                                     f"stopped waiting after {time.perf_counter() - t0:.1f} s")
        else:
            target()
    printed = buf.getvalue() + fd_text()
    if "exc" in box:
        e = box["exc"]
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise CandidateError(f"raised {type(e).__name__}")
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = ""
        if "bfloat16" in msg and "numpy" in msg.lower() or "ml_dtypes" in msg:
            hint = (" (logits arrive as numpy bfloat16 from ml_dtypes: convert with "
                    "softcheck.as_torch(logits) or jnp.asarray(logits))")
        raise CandidateError(f"raised {type(e).__name__}: {msg[:200]}{hint}")
    return box.get("out"), printed


@contextlib.contextmanager
def _capture_fd1():
    """Route file descriptor 1 to a temporary file (C-level printf, subprocess output)."""
    text = {"v": ""}
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield lambda: text["v"]
        finally:
            try:
                sys.__stdout__.flush()
            except (OSError, ValueError, AttributeError):
                pass
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text["v"] = tmp.read().decode("utf-8", "replace")


def to_array(out, shape) -> np.ndarray:
    """numpy / JAX / torch (grad-requiring, GPU, bfloat16) / lists → float ndarray of ``shape``."""
    if out is None:
        raise CandidateError("returned None instead of a gradient array")
    if isinstance(out, (str, bytes)):
        raise CandidateError(f"returned a {type(out).__name__} instead of a gradient array")
    if hasattr(out, "detach") and hasattr(out, "cpu"):            # torch
        t = out.detach().cpu()
        if not t.is_floating_point():
            raise CandidateError(f"returned a {t.dtype} tensor, not a floating-point gradient")
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        out = t.numpy()
    elif hasattr(out, "get") and type(out).__module__.startswith("cupy"):
        out = out.get()
    try:
        arr = np.asarray(out)
    except Exception as e:  # noqa: BLE001
        raise CandidateError(f"returned {type(out).__name__}, which is not array-like ({e})") from e
    if arr.dtype.kind == "V" and arr.dtype.name.startswith(("bfloat16", "float8", "float6",
                                                             "float4")):
        arr = arr.astype(np.float32)          # ml_dtypes' low-precision floats (exact)
    if arr.dtype.kind not in "fiu":
        raise CandidateError(f"returned an array of dtype {arr.dtype}, not a numeric gradient")
    if arr.shape != tuple(shape):
        if arr.shape == tuple(shape)[::-1] and shape[0] != shape[1]:
            raise CandidateError(f"returned shape {arr.shape}: the transpose of the expected "
                                 f"(N, C) = {tuple(shape)}")
        raise CandidateError(f"returned shape {arr.shape}, expected (N, C) = {tuple(shape)}")
    return arr
