"""Call a kernel as it is written (loss / inplace / split / autograd.Function) → numpy outputs.

The conventions (``--convention``):

* ``loss``: ``fn(logits, target, **kw) -> loss | (loss, ...)``; softcheck differentiates the
  returned loss itself: torch ``loss.backward(g)`` on a leaf tensor with ``requires_grad``,
  JAX ``jax.vjp``.  A fresh forward per upstream gradient g (a kernel's backward may consume
  what its forward saved, as Liger's multiplies in place).
* ``inplace``: ``fn`` returns the loss and leaves ∂L/∂logits (for g = 1) in its logits buffer.
  A plain function: softcheck reads the buffer back and multiplies by g (per row for
  ``none``), as Liger's backward does.  An ``autograd.Function``: ``.apply`` then
  ``backward(g)``, the gradient read from ``logits.grad`` (its backward applies g).
* ``split``: ``fwd(logits, target, **kw) -> (loss, lse)`` and ``bwd(logits, target, dloss,
  lse, **kw) -> dlogits``; ``bwd`` gets the exact lse and ``dloss`` = g.

Everything here runs in whichever process calls it (the caller guards it: capture, timeout);
inputs and outputs are numpy.  Keyword options are passed when the function declares them
(``--rename`` maps softcheck's names onto the kernel's); an ``autograd.Function`` takes them
positionally, in the order of ``--args`` or of its ``forward``'s parameter names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..spec import OPTION_NAMES, Inputs, LossSpec, SoftcheckError
from ..suite.config import DTYPES, numpy_dtype
from .described import describe as described
from .errors import CallFailed  # noqa: F401  (re-exported: the convention's failure)
from .arrays import same_values
from .frameworks import (check_device, dtype_name, is_autograd_function, is_module, require,
                         to_framework, to_native, to_numpy)
from .sequences import as_called, loss_shapes, per_row, upstream_for
from .upstream_op import UPSTREAM_REFUSED, saves_output
from .settings import (CLASS_WEIGHT, NEVER, SHARD_KEYWORDS, SWITCHABLE, Settings,  # noqa: F401
                       settings)
from .signatures import (KERNEL_OPTIONS, apply_order, check_call, check_module, describe,
                         label_of, literal, names)

POSITIONAL = ("logits", "target")


@dataclass(frozen=True)
class Outputs:
    """What a call produced, as numpy: the gradient for the case's upstream gradient, the
    forward's values, and the gradients for the other upstream gradients (label, g, grad)."""

    grad: np.ndarray
    loss: np.ndarray | None = None
    z_loss: np.ndarray | None = None
    lse: np.ndarray | None = None
    variants: tuple = ()
    notes: tuple[str, ...] = ()
    ranks: tuple = ()           # shard_map: (rank, start, stop, loss, width) per device
    times: np.ndarray | None = None   # streamed plain in-place: g, for the judge to apply


@dataclass(frozen=True)
class Streamed:
    """A streamed case's call in its worker (streamed.py): the logits are a copy-on-write
    mapping the kernel gets itself (no copy), ``original`` their untouched sealed pages,
    ``fresh()`` another such mapping (split's backward); the gradient comes back in its own
    precision (no float64 copy), a plain in-place kernel's with g apart (``times``)."""

    original: np.ndarray
    fresh: object


def resolve(fn, st: Settings, *, bwd=None) -> Settings:
    """The settings completed for this TARGET (convention and framework detected) and the
    TARGET validated against them: one line and exit 2 when it cannot be called so.  ``fn``
    and ``bwd`` are descriptions (``described.Described``: what the TARGET's worker replied)
    or, for an explicit in-process check, the functions themselves (described here)."""
    fn, bwd = described(fn), (None if bwd is None else described(bwd))   # plain data only
    conv, fw = st.convention, st.framework
    if fn.autograd and st.convention == "grad":
        conv = "loss" if st.fused else "inplace"
    elif (fn.custom_vjp or fn.module) and st.convention == "grad":
        conv = "loss"
    fw = fw or fn.framework
    st = dataclasses.replace(st, convention=conv, framework=fw, autograd=bool(fn.autograd))
    if fn.module and (conv != "loss" or fw != "torch" or st.tensor_parallel > 1):
        raise SoftcheckError("a torch.nn.Module loss is called as forward(logits, target) and "
                             "differentiated by softcheck: --convention loss, --framework torch, "
                             "one rank")
    if (st.shape != "nv" or st.shift) and not st.fused and (
            conv not in ("loss", "inplace") or (st.tensor_parallel > 1 and fw == "jax")):
        raise SoftcheckError("--shape btv and --shift call a loss kernel (--convention loss or "
                             "inplace; on torch ranks each its (B, T, V/W) shard) with (B, T, "
                             "V) logits: a plain gradient function, a split kernel or JAX "
                             "shard_map take (N, V)")
    # inside jax.shard_map (sharding.py, which load.py has check the rest): given, not required
    free = SHARD_KEYWORDS if st.tensor_parallel > 1 and fw == "jax" else ()
    free += (st.kernel_name("group"),) if st.tensor_parallel > 1 and fw != "jax" else ()
    if st.fused:
        if conv == "loss":
            require(fw)
            check_device(fw, st.device)
            if fw == "numpy":
                raise SoftcheckError("--convention loss differentiates the returned loss with "
                                     "torch or JAX: a numpy fused kernel returns its gradients "
                                     "(--convention grad)")
        if fn.autograd or st.args:
            return dataclasses.replace(st, args=apply_order(fn, st, FUSED_POSITIONAL))
        extra = ("grad_output",) if conv == "grad" else ()
        check_call(describe(fn), 3, st, label=label_of(fn), conv=conv, free=extra + free)
        return st
    if conv == "grad":
        check_call(describe(fn), 2, st, label=label_of(fn), conv=conv, free=free,
                   options=OPTION_NAMES)
        return st
    require(fw)
    check_device(fw, st.device)
    if conv == "loss" and fw == "numpy":
        raise SoftcheckError("--convention loss differentiates the returned loss with torch or "
                             "JAX: a numpy function can be checked with --convention grad or "
                             "inplace (or name --framework torch|jax)")
    if conv == "inplace" and fw == "jax":
        raise SoftcheckError("--convention inplace reads the gradient back from the logits "
                             "buffer, which JAX arrays cannot be: use --convention loss")
    if fn.autograd:
        st = dataclasses.replace(st, args=apply_order(fn, st, POSITIONAL))
    elif fn.module:
        check_module(fn, st)
    else:
        check_call(describe(fn), 2, st, label=label_of(fn), conv=conv, free=free)
    if conv == "split":
        if bwd is None:
            raise SoftcheckError("--convention split needs --backward FILE.py:bwd")
        check_call(describe(bwd), 4, st, label=label_of(bwd), conv=conv, what="--backward")
    return st


#: the leading positional arrays of a fused kernel (its --args begin with them)
FUSED_POSITIONAL = ("x", "weight", "target")


def _option_values(inputs, fw: str, device: str, st: Settings | None = None) -> dict:
    """Each option's value for this case (``--off-value`` in place of an option that is off);
    the --kwarg constants beside them."""
    s = inputs.spec
    out = {"weight": to_framework(inputs.weight, fw, device),
           "ignore_index": -100 if s.ignore_index is None else s.ignore_index,
           "reduction": s.reduction, "label_smoothing": s.label_smoothing,
           "smoothing_convention": s.smoothing_convention, "temperature": s.temperature,
           "softcap": s.softcap, "z_loss": s.z_loss, "mean_over": s.mean_over,
           "logit_scale": s.logit_scale}
    if st is not None:
        off = LossSpec()
        for o, v in st.off_values:
            if getattr(s, o) == getattr(off, o) and (o != "weight" or inputs.weight is None):
                out[o] = v
        out.update(st.kwargs)
    return out


def plain_keywords(inputs: Inputs, takes, st: Settings) -> dict:
    """A plain gradient function's keywords (numpy): each option (grad_output included) it
    ``takes`` by its kernel name, the --kwarg constants always."""
    opts = _option_values(inputs, "numpy", "cpu", st)
    go = np.asarray(inputs.grad_output)
    opts["grad_output"] = float(go) if go.ndim == 0 else go.astype(inputs.logits.dtype)
    kw = {st.kernel_name(o): opts[o] for o in OPTION_NAMES if takes(st.kernel_name(o))}
    kw.update(st.kwargs)
    return kw


def _keywords(params, st: Settings, opts: dict, options=KERNEL_OPTIONS) -> dict:
    """The keywords a function with ``params`` is given: each option it declares (by its
    kernel name; all of them, by softcheck's names, if it takes ``**kwargs``), the --kwarg
    constants always; ``shift=1`` under --shift 1 to a logits kernel that declares it (as
    Apple CCE's, whose default 0 does not shift)."""
    declared, varkw = names(params)
    kw = {}
    for o in options:
        k = st.kernel_name(o)
        if k not in NEVER and (k in declared or (varkw and k == o)):
            kw[k] = opts[o]
    if st.shift and not st.fused and "shift" in declared:
        kw["shift"] = st.shift
    kw.update(st.kwargs)
    return kw


def _arguments(fn, st: Settings, lead: tuple, opts: dict) -> tuple[tuple, dict]:
    """Positional and keyword arguments: ``.apply`` order, or the keywords ``fn`` declares."""
    if st.args:
        pos = list(lead)
        for a in st.args[len(lead):] if st.fused else st.args[len(POSITIONAL):]:
            pos.append(literal(a.partition("=")[2]) if "=" in a else opts[a])
        return tuple(pos), {}
    return lead, _keywords(describe(fn), st, opts)


def _invoke(fn, st: Settings, lead: tuple, opts: dict):
    """Call ``fn`` on the ``lead`` arrays with its options: an ``autograd.Function`` by
    ``.apply`` (positional), a Module class built with the options it declares then called
    on the arrays, a Module instance called so, anything else with keywords."""
    if is_module(fn):
        if isinstance(fn, type):
            fn = fn(**_keywords(describe(fn.__init__, skip=1), st, opts))
            return fn(*lead)
        return fn(*lead, **_keywords(describe(fn.forward), st, opts))
    apply = fn.apply if is_autograd_function(fn) else fn
    args, kw = _arguments(apply, st, lead, opts)
    return apply(*args, **kw)


def _returned(out, st: Settings, n: int) -> dict:
    """The returned items by name (``--returns``): a lone value is the loss."""
    items = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    names = st.returned
    if len(items) < len([x for x in names if x != "_"]) and len(items) < len(names):
        raise CallFailed(f"returned {len(items)} item(s), but --returns names {','.join(names)}")
    got = {k: v for k, v in zip(names, items) if k != "_"}
    if got.get("loss") is None:
        raise CallFailed("returned None instead of the loss")
    return got


def _check_loss_shape(loss, inputs: Inputs, st: Settings | None = None) -> None:
    n = inputs.logits.shape[0]
    shape = tuple(getattr(loss, "shape", np.shape(loss)))
    wants = loss_shapes(n, st) if inputs.spec.reduction == "none" else [(), (1,)]
    if shape not in wants:
        raise CallFailed(f"returned a loss of shape {shape} for reduction "
                         f"{inputs.spec.reduction}; expected {' or '.join(map(str, wants))}")


def upstreams(inputs: Inputs) -> list[tuple[str, np.ndarray]]:
    """The upstream gradients each case runs: its own (a random scalar ≠ 1, or a random (N,)
    vector for ``none``), then g = 1 and (``none``) a random scalar broadcast to every row."""
    g = np.asarray(inputs.grad_output, np.float64)
    out = [("g=1", np.ones_like(g))]
    if g.ndim == 1:
        out.append(("g=scalar", np.full_like(g, float(np.mean(g)))))
    return out


def run(fn, st: Settings, inputs: Inputs, *, bwd=None, lse64=None, variants: bool = True,
        streamed: Streamed | None = None, upstream: bool = False) -> Outputs:
    """Call ``fn`` by convention ``st`` on the case; ``lse64`` the exact lse (split);
    ``variants=False``: the case's own upstream gradient only (a metamorphic relation's call,
    and each call of a streamed case: ``streamed``); ``upstream``: a torch autograd kernel's
    logits are the output of an op on a leaf h that saves its output for its backward and
    reads its values there (``saves_output``: the same values, layout and strides); the
    gradient is h's, so a kernel that writes into its logits behind autograd's back (Liger
    #272) hands that op other numbers and h a wrong gradient."""
    variants = variants and streamed is None
    if st.convention == "split":
        return _split(fn, bwd, st, inputs, lse64, variants, streamed)
    by_autograd = st.convention == "loss" or is_autograd_function(fn)
    if upstream and not (by_autograd and st.framework == "torch"):
        raise CallFailed("the upstream check calls a torch autograd kernel")
    gs = [("main", np.asarray(inputs.grad_output, np.float64))] + (
        upstreams(inputs) if variants and not upstream else [])
    if st.convention == "inplace" and not by_autograd:
        gs = gs[:1]                  # softcheck applies g itself: one call says it all
    grads, first, notes = [], None, []
    for label, g in gs:
        grad, values, note = _one(fn, st, inputs, g, by_autograd, streamed, upstream)
        grads.append((label, g, grad))
        first = first or values
        notes += [x for x in note if x not in notes]
    loss = first.get("loss")
    times = gs[0][1] if streamed is not None and not by_autograd else None
    return Outputs(grads[0][2], loss, first.get("z_loss"), first.get("lse"), tuple(grads[1:]),
                   tuple(notes), times=times)


def _one(fn, st: Settings, inputs: Inputs, g: np.ndarray, by_autograd: bool,
         streamed: Streamed | None = None, upstream: bool = False):
    fw, dev = st.framework, st.device
    zc, tc = as_called(inputs.logits, inputs.target, st,      # --shape btv, --shift 1
                       inputs.transposed)
    z = to_framework(zc, fw, dev, requires_grad=by_autograd and fw == "torch",
                     copy=streamed is None)
    leaf = z
    if upstream:                     # z = h by an op that saves z and reads it in backward
        import torch

        z = saves_output().apply(leaf)
        seen = z._version            # its untouched values: the op's own copy (grad_fn)
    t = to_framework(tc, fw, dev)
    opts = _option_values(inputs, fw, dev, st)
    notes = []
    if fw == "jax":
        import jax
        import jax.numpy as jnp

        def f(zz):
            got = _returned(_invoke(fn, st, (zz, t), opts), st, len(inputs.logits))
            return got["loss"], got

        try:
            loss, vjp, got = jax.vjp(f, z, has_aux=True)
        except CallFailed:
            raise
        _check_loss_shape(loss, inputs, st)
        (grad,) = vjp(jnp.broadcast_to(jnp.asarray(upstream_for(g, loss.shape, st),
                                                   loss.dtype), loss.shape))
    else:
        got = _returned(_invoke(fn, st, (z, t), opts), st, len(inputs.logits))
        loss = got["loss"]
        _check_loss_shape(loss, inputs, st)
        if by_autograd:
            import torch

            if not getattr(loss, "requires_grad", False):
                raise CallFailed("returned a loss that does not require grad: it is not "
                                 "connected to the logits through autograd")
            gl = upstream_for(g, tuple(loss.shape), st)
            if upstream and z._version == seen and not torch.equal(z.detach(),
                                                                   z.grad_fn.original):
                notes.append("wrote into its logits behind autograd's back (their version "
                             "counter did not move)")
            try:
                loss.backward(torch.as_tensor(gl, dtype=loss.dtype, device=loss.device))
            except RuntimeError as e:     # autograd's own check of the saved output
                if upstream and z._version != seen and "inplace operation" in str(e):
                    raise CallFailed(UPSTREAM_REFUSED) from None
                raise
            grad = leaf.grad
            if grad is None:
                raise CallFailed("the logits received no gradient from loss.backward()")
        elif streamed is not None:
            grad = z                      # g is applied by the judge (Outputs.times)
        else:
            grad = to_numpy(z).reshape(inputs.logits.shape) * (g[:, None] if g.ndim else g)
        if st.convention == "loss" and not (
                same_values(to_native(z).reshape(inputs.logits.shape), streamed.original)
                if streamed is not None else np.array_equal(
                    to_numpy(z).reshape(inputs.logits.shape), inputs.logits64, equal_nan=True)):
            notes.append("wrote into its logits argument under --convention loss (declare "
                         "--convention inplace if that is the design)")
    _unchanged(t, tc, "target")
    _unchanged(opts["weight"], inputs.weight, "weight")
    values = {k: per_row(to_numpy(v), len(inputs.logits), st) for k, v in got.items()
              if v is not None}
    return (to_numpy if streamed is None else to_native)(grad).reshape(inputs.logits.shape), \
        values, notes


def _unchanged(x, original, name: str) -> None:
    if x is not None and not np.array_equal(to_numpy(x), np.asarray(original, np.float64)
                                            if np.asarray(original).dtype.kind == "f"
                                            else original, equal_nan=True):
        raise CallFailed(f"modified its {name} argument in place")


def _split(fwd, bwd, st: Settings, inputs: Inputs, lse64, variants: bool = True,
           streamed: Streamed | None = None) -> Outputs:
    fw, dev = st.framework, st.device
    opts = _option_values(inputs, fw, dev, st)
    z = to_framework(inputs.logits, fw, dev, copy=streamed is None)
    t = to_framework(inputs.target, fw, dev)
    got = _returned(_invoke(fwd, st, (z, t), opts), st, len(inputs.logits))
    _check_loss_shape(got["loss"], inputs)
    if "lse" not in got:
        raise CallFailed("the forward of --convention split must return (loss, lse)")
    values = {k: to_numpy(v) for k, v in got.items() if v is not None}
    lse_dtype = np.float64 if inputs.logits.dtype == np.float64 else np.float32
    name = dtype_name(got["loss"])               # dloss in the loss's own dtype
    loss_dtype = numpy_dtype(name) if name in DTYPES else np.float64
    grads = []
    gs = [("main", np.asarray(inputs.grad_output, np.float64))] + (
        upstreams(inputs) if variants else [])
    for label, g in gs:
        zb = (to_framework(inputs.logits, fw, dev) if streamed is None else
              to_framework(streamed.fresh(), fw, dev, copy=False))
        tb = to_framework(inputs.target, fw, dev)
        dl = to_framework(np.asarray(g, loss_dtype), fw, dev)
        lse = to_framework(np.asarray(lse64, lse_dtype), fw, dev)
        dx = _invoke(bwd, st, (zb, tb, dl, lse), opts)
        if dx is None:
            raise CallFailed("the backward returned None instead of dlogits")
        _unchanged(tb, inputs.target, "target")
        grads.append((label, g, (to_numpy if streamed is None else to_native)(dx)))
    _unchanged(t, inputs.target, "target")
    _unchanged(opts["weight"], inputs.weight, "weight")
    return Outputs(grads[0][2], values.get("loss"), values.get("z_loss"), values.get("lse"),
                   tuple(grads[1:]))
