"""Call a fused linear cross-entropy kernel (``check FILE:fn --hidden H``) → numpy outputs.

Calling convention: ``fn(x, weight, target, **kw)``: x (N, H) (or (B, T, H) with ``--shape
btv``), the LM-head weight W (V, H), target (N,) (or (B, T)); ``bias`` is passed as a keyword
when the case has one (and the function declares it), the loss options as for ``check``
(those it declares), ``shift`` with ``--shift 1`` (then target holds the unshifted labels:
position t is scored against label t + 1 of its sequence; the last position is ignored).

* ``loss``: fn returns the loss (a scalar, or per row for ``none``); softcheck differentiates
  it: torch — x, W, b leaf tensors requiring grad, ``loss.backward(g)``; JAX — ``jax.vjp``.
* ``grad``: fn returns ``(grad_x, grad_W[, grad_b])`` or ``(loss, grad_x, grad_W[,
  grad_b])``, with ``grad_output`` g applied when it declares ``grad_output`` (else g = 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..spec import FusedInputs, SoftcheckError
import softcheck.candidate.reply as wire
from .conventions import CallFailed, Settings, _keywords, _option_values
from .conventions import _arguments as _conv_arguments
from .record import repeated
from .errors import format_exception
from .frameworks import is_autograd_function, to_framework, to_numpy
from .signatures import describe, names

#: the outputs of a fused kernel, in report order
OUTPUTS = ("loss", "grad_x", "grad_w", "grad_b")


@dataclass(frozen=True)
class FusedResult:
    """What one case's calls produced, float64 numpy; ``error`` when the candidate failed."""

    grads: dict | None = None      # grad_x (N, H), grad_w (V, H), grad_b (V,) or absent
    loss: np.ndarray | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()
    nondet: float = 0.0
    output: str = ""
    ranks: tuple = ()              # vocab-parallel: (rank, start, stop, loss, grad_x) each


def _arguments(fn, st: Settings, fi: FusedInputs, fw: str, grad_req: bool):
    """``(x, W, target)``, the keywords (the options it declares, the class weights as
    ``ce_weight``, ``bias``, ``shift``, ``grad_output`` under ``grad``, --kwarg constants) and
    the bias tensor; positional in ``--args`` order (an ``autograd.Function``'s ``.apply``)."""
    params = describe(fn)
    declared, varkw = names(params)
    st = st if st.fused else dataclasses.replace(st, fused=True)   # class weights: ce_weight
    n, h = fi.x.shape
    target = fi.labels if fi.labels is not None else fi.target
    x, tgt = fi.x, target
    if fi.shape is not None:
        x, tgt = x.reshape(*fi.shape, h), tgt.reshape(fi.shape)
    dev = st.device
    xt = to_framework(x, fw, dev, requires_grad=grad_req)
    wt = to_framework(fi.lm_weight, fw, dev, requires_grad=grad_req)
    bt = None if fi.bias is None else to_framework(fi.bias, fw, dev, requires_grad=grad_req)
    tt = to_framework(tgt, fw, dev)
    opts = {**_option_values(fi, fw, dev, st), "bias": bt,
            "shift": 1 if fi.labels is not None else 0}
    if st.args:                                    # .apply order (conventions.apply_order)
        args, _ = _conv_arguments(fn, st, (xt, wt, tt), opts)
        if bt is not None and "bias" not in st.args:
            raise CallFailed("the case has a bias (--bias) but --args passes no 'bias'")
        return args, {}, bt
    kw = _keywords(params, st, opts)
    if bt is not None:
        if "bias" not in declared and not varkw:
            raise CallFailed("the case has a bias (--bias) but the function takes no 'bias'")
        kw["bias"] = bt
    if fi.labels is not None and ("shift" in declared or varkw):
        kw["shift"] = 1
    go = np.asarray(fi.grad_output, np.float64)
    if st.convention == "grad" and ("grad_output" in declared or varkw):
        kw["grad_output"] = float(go) if go.ndim == 0 else to_framework(
            go.astype(fi.x.dtype), fw, dev)
    return (xt, wt, tt), kw, bt


def _loss_shape(loss, fi: FusedInputs):
    shape = tuple(getattr(loss, "shape", np.shape(loss)))
    n = fi.x.shape[0]
    if fi.spec.reduction == "none":
        if int(np.prod(shape)) != n:
            raise CallFailed(f"returned a loss of shape {shape} for reduction none; expected "
                             f"one value per row ({n})")
    elif shape not in ((), (1,)):
        raise CallFailed(f"returned a loss of shape {shape} for reduction "
                         f"{fi.spec.reduction}; expected a scalar")


def _by_autograd(fn, st: Settings, fi: FusedInputs) -> tuple:
    fw = st.framework
    g = np.asarray(fi.grad_output, np.float64)
    if fw == "numpy":
        raise CallFailed("--convention loss needs a torch or JAX kernel (softcheck "
                         "differentiates the returned loss); a numpy kernel returns its "
                         "gradients: --convention grad")
    apply = fn.apply if is_autograd_function(fn) else fn
    args, kw, bt = _arguments(apply, st, fi, fw, fw == "torch")
    if fw == "jax":
        import jax
        import jax.numpy as jnp

        b = kw.pop("bias", None)

        def f(x, w, *bb):
            out = apply(x, w, args[2], **kw, **({"bias": bb[0]} if bb else {}))
            return out[0] if isinstance(out, (tuple, list)) else out

        prim = (args[0], args[1]) + ((b,) if b is not None else ())
        loss, vjp = jax.vjp(f, *prim)
        _loss_shape(loss, fi)
        cot = jnp.broadcast_to(jnp.asarray(g.reshape(np.shape(loss)) if g.ndim else g,
                                           loss.dtype), loss.shape)
        grads = vjp(cot)
        return loss, grads[0], grads[1], (grads[2] if b is not None else None)
    import torch

    out = apply(*args, **kw)
    loss = out[0] if isinstance(out, (tuple, list)) else out
    _loss_shape(loss, fi)
    if not getattr(loss, "requires_grad", False):
        raise CallFailed("returned a loss that does not require grad: it is not connected to "
                         "x and W through autograd")
    loss.backward(torch.as_tensor(g.reshape(tuple(loss.shape)) if g.ndim else g,
                                  dtype=loss.dtype, device=loss.device))
    x, w = args[0], args[1]
    if x.grad is None or w.grad is None:
        raise CallFailed("x or W received no gradient from loss.backward()")
    return loss, x.grad, w.grad, (None if bt is None else bt.grad)


def _returned_grads(fn, st: Settings, fi: FusedInputs) -> tuple:
    args, kw, _ = _arguments(fn, st, fi, st.framework, False)
    out = fn(*args, **kw)
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    loss = None
    if items and np.ndim(to_numpy(items[0])) <= 1 and len(items) >= 3:
        loss = items.pop(0)
    if len(items) not in (2, 3):
        raise CallFailed(f"returned {len(items)} arrays; --convention grad expects (grad_x, "
                         "grad_W[, grad_b]) or (loss, grad_x, grad_W[, grad_b])")
    if loss is not None:
        _loss_shape(loss, fi)
    return loss, items[0], items[1], items[2] if len(items) == 3 else None


def out_dtype(fi: FusedInputs) -> np.dtype:
    """The gradients are kept in float32 for float32/16-bit cases (every value of those
    dtypes is a float32; a float64 result for them is rounded once, by u32·|g|: within the
    final-rounding allowance): half the memory of float64 at W's size."""
    return np.dtype(np.float64 if fi.x.dtype == np.float64 else np.float32)


def _shaped(a, shape, what: str, dt=np.float64) -> np.ndarray:
    arr = to_numpy(a)
    if what == "grad_W" and arr.shape == shape[::-1] and shape[0] != shape[1]:
        raise CallFailed(f"returned grad_W of shape {tuple(arr.shape)}: transposed (expected "
                         f"(V, H) = {shape}, as the weight)")
    if what == "grad_b" and arr.ndim == 2 and arr.shape[-1] == shape[0]:
        raise CallFailed(f"returned grad_b of shape {tuple(arr.shape)}: not reduced over rows "
                         f"(expected (V,) = {shape}: the sum of G over the rows)")
    if arr.size != int(np.prod(shape)):
        raise CallFailed(f"returned {what} of shape {tuple(arr.shape)}; expected {shape}")
    if arr.shape != shape and not (arr.ndim == 3 and len(shape) == 2):
        raise CallFailed(f"returned {what} of shape {tuple(arr.shape)}; expected {shape}")
    return np.array(arr.reshape(shape), dt, copy=True)


def once(fn, st: Settings, fi: FusedInputs) -> tuple[np.ndarray | None, dict]:
    """One call by convention ``st``: (loss or None, {grad_x, grad_w[, grad_b]})."""
    if st.convention not in ("loss", "grad"):
        raise CallFailed(f"--convention {st.convention} is not available with --hidden: "
                         "use loss or grad")
    get = _by_autograd if st.convention == "loss" else _returned_grads
    loss, gx, gw, gb = get(fn, st, fi)
    n, h = fi.x.shape
    v = fi.lm_weight.shape[0]
    dt = out_dtype(fi)
    grads = {"grad_x": _shaped(gx, (n, h), "grad_x", dt),
             "grad_w": _shaped(gw, (v, h), "grad_W", dt)}
    if fi.bias is not None:
        if gb is None:
            raise CallFailed("returned no bias gradient for a case with --bias")
        grads["grad_b"] = _shaped(gb, (v,), "grad_b", dt)
    lv = None if loss is None else np.array(to_numpy(loss), np.float64).reshape(
        (n,) if fi.spec.reduction == "none" else ())
    return lv, grads


def fused_once(fn, st: Settings, fi: FusedInputs) -> FusedResult:
    """``once`` as a result: every failure the case's error (the judge repeats it:
    ``fused_repeated``)."""
    try:
        loss, grads = once(fn, st, fi)
    except CallFailed as e:
        return FusedResult(error=str(e))
    except BaseException as e:  # noqa: BLE001 - any failure is the candidate's
        return FusedResult(error=format_exception(e))
    return FusedResult(grads, loss)


def fused_repeated(once_: Callable[[int], FusedResult], repeat: int) -> FusedResult:
    """The judge's repeat loop (record.repeated) over every gradient of a fused kernel."""
    return repeated(once_, repeat, lambda r: [r.grads[k] for k in sorted(r.grads)]
                    + [p[4] for p in r.ranks])


def check_convention(st: Settings) -> None:
    if st.convention not in ("loss", "grad"):
        raise SoftcheckError(f"--convention {st.convention} is not available with --hidden "
                             "(fused linear cross-entropy): use loss or grad")


# ------------------------------------------------------------ the isolated worker process
_ARRAYS = ("x", "lm_weight", "bias", "target", "weight", "labels", "grad_output")


def fused_request(fi: FusedInputs, rows: tuple[int, int] | None = None):
    """What one fused call sends: the arrays' names, the arrays (W and the bias cut to a
    rank's vocabulary ``rows`` a:b), the gradients' layout in the output file, its bytes."""
    arrays = {k: getattr(fi, k) for k in _ARRAYS}
    arrays["grad_output"] = np.asarray(fi.grad_output, np.float64)
    if rows is not None:
        for k in ("lm_weight", "bias"):
            if arrays[k] is not None:
                arrays[k] = np.ascontiguousarray(arrays[k][rows[0]:rows[1]])
    names = [k for k, a in arrays.items() if a is not None]
    n, h = fi.x.shape
    v = arrays["lm_weight"].shape[0]
    layout = [("grad_x", (n, h)), ("grad_w", (v, h))] + (
        [("grad_b", (v,))] if fi.bias is not None else [])
    out_bytes = sum(out_dtype(fi).itemsize * int(np.prod(s)) for _, s in layout)
    return names, [arrays[k] for k in names], layout, out_bytes


def read_grads(mm, pos: int, layout: list, dt: np.dtype) -> dict:
    """The gradients a worker wrote at ``pos`` of its sealed output file, copied out."""
    grads = {}
    for k, shape in layout:
        size = int(np.prod(shape))
        grads[k] = np.frombuffer(mm, dt, size, pos).reshape(shape).copy()
        pos += dt.itemsize * size
    return grads


def loss_fields(fi: FusedInputs) -> dict:
    """The reply's loss, checked (reply.py): one value, or one per row."""
    n = int(fi.x.shape[0])
    return {"loss": lambda v, what: wire.values(v, what, n)}


def joined(per: list, output: str = "") -> FusedResult:
    """Vocab-parallel ranks' results as one (``per``: rank, start, stop, loss, gradients,
    notes): rank 0's loss and grad_x, the rows of grad_W (grad_b) in vocabulary order; every
    rank's loss and grad_x kept in ``ranks`` for the judge (judge/ranks.py)."""
    grads = {"grad_x": per[0][4]["grad_x"]}
    for k in ("grad_w", "grad_b"):
        if k in per[0][4]:
            grads[k] = np.concatenate([p[4][k] for p in per])
    notes: list[str] = []
    for r, *_, got_notes in per:
        notes += [f"rank {r}: {x}" for x in got_notes if f"rank {r}: {x}" not in notes]
    return FusedResult(grads, per[0][3], None, tuple(notes), 0.0, output,
                       tuple((r, a, b, loss, g["grad_x"]) for r, a, b, loss, g, _ in per))


def call_in_worker(wc, fi: FusedInputs, timeout, repeat: int) -> FusedResult:
    """``repeat`` requests to ``wc``'s worker process (an ``IsolatedCandidate``), each one
    call (``serve_fused``): the arrays go in a sealed memory file by descriptor, the
    gradients come back in one the worker sealed (``out_dtype``), the loss and notes in the reply,
    checked (reply.py); death and timeouts are the case's error."""
    if wc._closed:
        raise SoftcheckError("this candidate was closed")
    names, arrays, layout, out_bytes = fused_request(fi)
    dt = out_dtype(fi)
    descs, out_off = wc._place(arrays, out_bytes)
    req = {"op": "fused", "arrays": dict(zip(names, descs)), "spec": fi.spec, "shape": fi.shape,
           "out": out_off, "layout": layout}
    fields = loss_fields(fi)

    def one(i: int) -> FusedResult:
        reply, error, output = wc.exchange({**req, "index": i}, timeout,
                                           fds=[wc._inputs.fd], out=out_bytes)
        if reply is None:
            return FusedResult(error=error, output=output)
        try:
            got = wire.checked(reply, fields)
        except wire.ReplyError as e:
            wc._drop()
            return FusedResult(error=f"the candidate's process sent an invalid reply ({e})",
                               output=output)
        if got["error"] is not None:
            return FusedResult(error=error, notes=got["notes"], output=output)
        return FusedResult(read_grads(wc._mm, out_off, layout, dt), got["loss"], None,
                           got["notes"], 0.0, output)

    return fused_repeated(one, repeat)


def serve_fused(cand, shm, req: dict) -> dict:
    """The worker's side: fresh FusedInputs from the sealed inputs, one call
    (``fused_once``), the gradients written at ``req["out"]`` in the output file."""
    d = req["arrays"]
    a = {k: (shm.fresh(d[k]) if k in d else None) for k in _ARRAYS}
    fi = FusedInputs(a["x"], a["lm_weight"], a["bias"], a["target"], a["weight"],
                     a["grad_output"], req["spec"], req["shape"], a["labels"])
    r = fused_once(cand.fn, cand.settings, fi)
    if r.error is not None:
        return {"error": r.error, "notes": list(r.notes)}
    pos = req["out"]
    for k, shape in req["layout"]:
        g = r.grads[k]
        np.frombuffer(shm.mm, g.dtype, g.size, pos)[:] = g.ravel()
        pos += g.dtype.itemsize * g.size
    loss = None if r.loss is None else np.asarray(r.loss, np.float64).tolist()
    return {"error": None, "notes": list(r.notes), "loss": loss}
