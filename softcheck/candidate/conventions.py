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

import ast
import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np

from ..spec import OPTION_NAMES, Inputs, SoftcheckError
from ..suite.config import (BACKENDS, CALLING_CONVENTIONS, DEVICES, DTYPES, FRAMEWORKS,
                            RETURN_ITEMS, SPLITS, numpy_dtype)
from .frameworks import (check_device, detect, dtype_name, is_autograd_function,
                         is_custom_vjp, require, to_framework, to_numpy)

#: the options a kernel may take besides logits and target (grad_output is softcheck's to apply)
KERNEL_OPTIONS = tuple(o for o in OPTION_NAMES if o != "grad_output")
POSITIONAL = ("logits", "target")
#: PyTorch's deprecated arguments: never passed
NEVER = ("size_average", "reduce")
#: what a --tensor-parallel JAX TARGET is given besides the options (candidate/sharding.py)
SHARD_KEYWORDS = ("axis_name", "vocab_size")


class CallFailed(Exception):
    """The kernel misbehaved on this case (turned into the case's error by the caller)."""


@dataclass(frozen=True)
class Settings:
    """How to call the candidate (picklable: a worker process receives it)."""

    convention: str = "grad"
    framework: str | None = None            # None: detected from the TARGET
    args: tuple[str, ...] | None = None     # positional order for autograd.Function.apply
    rename: tuple[tuple[str, str], ...] = ()
    returns: tuple[str, ...] | None = None  # None: ("loss",), split ("loss", "lse")
    backward: str | None = None             # split: the backward's TARGET
    device: str = "cpu"
    tensor_parallel: int = 1                # W > 1: W torch ranks / JAX devices (engine/ranks.py)
    backend: str = "gloo"
    split: str = "even"
    fused: bool = False                     # fused linear cross-entropy: fn(x, weight, target)

    @property
    def returned(self) -> tuple[str, ...]:
        if self.returns:
            return self.returns
        return ("loss", "lse") if self.convention == "split" else ("loss",)

    def kernel_name(self, option: str) -> str:
        return dict(self.rename).get(option, option)


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


def settings(convention=None, framework=None, args=None, rename=(), returns=None,
             backward=None, device="cpu", tensor_parallel=1, backend="gloo",
             split="even", fused=False) -> Settings:
    """Validated :class:`Settings` from option values (comma strings or sequences)."""
    def listed(v):
        if v is None or isinstance(v, tuple):
            return v
        return tuple(x.strip() for x in (v.split(",") if isinstance(v, str) else v) if x.strip())

    conv = convention or "grad"
    for name, v, allowed in (("convention", conv, CALLING_CONVENTIONS),
                             ("framework", framework, FRAMEWORKS), ("device", device, DEVICES)):
        if v is not None and v not in allowed:
            raise SoftcheckError(f"--{name} must be one of {', '.join(allowed)}; got {v!r}")
    ren = []
    for r in (rename.split(";") if isinstance(rename, str) else rename or ()):
        if isinstance(r, tuple):
            ren.append(r)
            continue
        a, sep, b = str(r).partition("=")
        if not sep or a.strip() not in KERNEL_OPTIONS or not b.strip().isidentifier():
            raise SoftcheckError(f"--rename {r!r}: write OPTION=kernel_name with OPTION one of "
                                 f"{', '.join(KERNEL_OPTIONS)}")
        ren.append((a.strip(), b.strip()))
    ret = listed(returns)
    for x in ret or ():
        if x not in RETURN_ITEMS and x != "_":
            raise SoftcheckError(f"--returns: {x!r} is not one of {', '.join(RETURN_ITEMS)} "
                                 "(or _ for an item to skip)")
    if ret and ret[0] != "loss":
        raise SoftcheckError("--returns must start with loss (the first returned item)")
    if backward and conv != "split":
        raise SoftcheckError("--backward is the backward kernel of --convention split")
    if conv == "split" and not backward:
        raise SoftcheckError("--convention split needs --backward FILE.py:bwd "
                             "(bwd(logits, target, dloss, lse, **kw) -> dlogits)")
    tp = _tensor_parallel(tensor_parallel, backend, split, conv, framework)
    if fused and conv not in ("loss", "grad"):
        raise SoftcheckError(f"--convention {conv} is not available with --hidden (fused "
                             "linear cross-entropy): use loss or grad")
    if fused and tp > 1:
        raise SoftcheckError("--tensor-parallel and --hidden cannot be combined (a sharded "
                             "fused linear cross-entropy is not checked yet)")
    return Settings(conv, framework, listed(args), tuple(ren), ret, backward, device,
                    tensor_parallel=tp, backend=backend or "gloo", split=split or "even",
                    fused=fused)


def _tensor_parallel(w, backend, split, conv: str, framework) -> int:
    """--tensor-parallel W (with --backend, --split) validated: torch installed (unless
    --framework jax: ``sharding.check`` at resolve), a loss or grad kernel, W >= 1."""
    w = 1 if w is None else int(w)
    if w < 1:
        raise SoftcheckError(f"--tensor-parallel must be at least 1; got {w}")
    for name, v, allowed in (("backend", backend, BACKENDS), ("split", split, SPLITS)):
        if v is not None and v not in allowed:
            raise SoftcheckError(f"--{name} must be one of {', '.join(allowed)}; got {v!r}")
    if w == 1:
        return 1
    if framework not in (None, "torch", "jax"):
        raise SoftcheckError(f"--tensor-parallel runs torch.distributed ranks or JAX shard_map: "
                             f"--framework {framework} cannot be checked so (use torch or jax)")
    if conv not in ("grad", "loss"):
        raise SoftcheckError(f"--tensor-parallel checks --convention loss or grad kernels; "
                             f"got --convention {conv}")
    if framework == "jax":
        return w
    require("torch", what="--tensor-parallel starts torch.distributed ranks")
    return w


def resolve(fn, st: Settings, *, bwd=None) -> Settings:
    """The settings completed for this TARGET (convention and framework detected) and the
    TARGET validated against them: one line and exit 2 when it cannot be called so.  ``fn``
    and ``bwd`` are descriptions (``described.Described``: what the TARGET's worker replied)
    or, for an explicit in-process check, the functions themselves (described here)."""
    from .described import describe

    fn, bwd = describe(fn), (None if bwd is None else describe(bwd))   # plain data only
    conv, fw = st.convention, st.framework
    if fn.autograd and conv in ("grad", "loss") and st.convention == "grad":
        conv = "inplace"
    elif fn.custom_vjp and st.convention == "grad":
        conv = "loss"
    fw = fw or fn.framework
    st = dataclasses.replace(st, convention=conv, framework=fw)
    # inside jax.shard_map (sharding.py, which load.py has check the rest): given, not required
    free = SHARD_KEYWORDS if st.tensor_parallel > 1 and fw == "jax" else ()
    if st.fused:
        if conv == "loss":
            require(fw)
            check_device(fw, st.device)
            if fw == "numpy":
                raise SoftcheckError("--convention loss differentiates the returned loss with "
                                     "torch or JAX: a numpy fused kernel returns its gradients "
                                     "(--convention grad)")
        _check_signature(fn, 3, "", conv)
        return st
    if conv == "grad":
        _check_signature(fn, 2, "", conv, free)
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
        st = dataclasses.replace(st, args=_apply_order(fn, st))
    else:
        _check_signature(fn, 2, "", conv, free)
    if conv == "split":
        if bwd is None:
            raise SoftcheckError("--convention split needs --backward FILE.py:bwd")
        _check_signature(bwd, 4, "--backward", conv)
    return st


def _check_signature(fn, n: int, what: str, conv: str, free: tuple = ()) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    ps = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in ps):
        return
    pos = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in ps if p.default is p.empty and p.name not in free
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    shape = {4: "(logits, target, dloss, lse, **kw)", 3: "(x, weight, target, **kw)"}.get(
        n, "(logits, target, **kw)")
    if len(pos) < n or len(required) > n:
        names = ", ".join(p.name for p in ps)
        raise SoftcheckError(f"{what}{' ' if what else ''}{getattr(fn, '__name__', fn)}({names}) cannot be called "
                             f"as {shape} under --convention {conv}")


def _apply_order(fn, st: Settings) -> tuple[str, ...]:
    """``.apply``'s positional order: ``--args``, else ``forward``'s parameter names (after
    ctx: logits and target, then softcheck options, renamed ones included, up to the first
    other name, which must have a default)."""
    known = {st.kernel_name(o): o for o in KERNEL_OPTIONS}
    if st.args:
        for a in st.args:
            if "=" in a:
                _literal(a)
            elif a not in POSITIONAL and a not in KERNEL_OPTIONS and a not in known:
                raise SoftcheckError(f"--args: {a!r} is neither logits, target, a softcheck "
                                     f"option ({', '.join(KERNEL_OPTIONS)}) nor name=value")
        return tuple(known.get(a, a) for a in st.args)
    params = list(inspect.signature(fn.forward).parameters.values())[1:]     # after ctx
    order = list(POSITIONAL)
    for p in params[2:]:
        if p.name in known:
            order.append(known[p.name])
        elif p.default is p.empty:
            raise SoftcheckError(f"TARGET {fn.__name__}.forward takes {p.name!r}, which is no "
                                 "softcheck option: name .apply's arguments in order with --args "
                                 "logits,target,weight,...,name=value (or map it with --rename)")
        else:
            break
    return tuple(order)


def _literal(item: str):
    name, _, text = item.partition("=")
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise SoftcheckError(f"--args: {item!r}: the value after = must be a Python literal "
                             "(True, 0.5, 'mean', None)") from None


def _option_values(inputs: Inputs, fw: str, device: str) -> dict:
    s = inputs.spec
    return {"weight": to_framework(inputs.weight, fw, device),
            "ignore_index": -100 if s.ignore_index is None else s.ignore_index,
            "reduction": s.reduction, "label_smoothing": s.label_smoothing,
            "smoothing_convention": s.smoothing_convention, "temperature": s.temperature,
            "softcap": s.softcap, "z_loss": s.z_loss, "mean_over": s.mean_over,
            "logit_scale": s.logit_scale}


def _arguments(fn, st: Settings, lead: tuple, opts: dict) -> tuple[tuple, dict]:
    """Positional and keyword arguments: ``.apply`` order, or the keywords ``fn`` declares."""
    if st.args:
        pos = list(lead)
        for a in st.args[len(POSITIONAL):]:
            pos.append(_literal(a) if "=" in a else opts[a])
        return tuple(pos), {}
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        ps = {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in ps.values())
    kw = {}
    for o in KERNEL_OPTIONS:
        k = st.kernel_name(o)
        if k in NEVER:
            continue
        if k in ps or (var_kw and k == o):
            kw[k] = opts[o]
    return lead, kw


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


def _check_loss_shape(loss, inputs: Inputs) -> None:
    n = inputs.logits.shape[0]
    shape = tuple(getattr(loss, "shape", np.shape(loss)))
    want = (n,) if inputs.spec.reduction == "none" else ()
    if shape != want and not (want == () and shape == (1,)):
        raise CallFailed(f"returned a loss of shape {shape} for reduction "
                         f"{inputs.spec.reduction}; expected {want}")


def upstreams(inputs: Inputs) -> list[tuple[str, np.ndarray]]:
    """The upstream gradients each case runs: its own (a random scalar ≠ 1, or a random (N,)
    vector for ``none``), then g = 1 and (``none``) a random scalar broadcast to every row."""
    g = np.asarray(inputs.grad_output, np.float64)
    out = [("g=1", np.ones_like(g))]
    if g.ndim == 1:
        out.append(("g=scalar", np.full_like(g, float(np.mean(g)))))
    return out


def run(fn, st: Settings, inputs: Inputs, *, bwd=None, lse64=None, variants: bool = True
        ) -> Outputs:
    """Call ``fn`` by convention ``st`` on the case; ``lse64`` the exact lse (split);
    ``variants=False``: the case's own upstream gradient only (a metamorphic relation's call)."""
    if st.convention == "split":
        return _split(fn, bwd, st, inputs, lse64)
    apply = fn.apply if is_autograd_function(fn) else fn
    by_autograd = st.convention == "loss" or is_autograd_function(fn)
    gs = [("main", np.asarray(inputs.grad_output, np.float64))] + (
        upstreams(inputs) if variants else [])
    if st.convention == "inplace" and not by_autograd:
        gs = gs[:1]                  # softcheck applies g itself: one call says it all
    grads, first, notes = [], None, []
    for label, g in gs:
        grad, values, note = _one(apply, st, inputs, g, by_autograd)
        grads.append((label, g, grad))
        first = first or values
        notes += [x for x in note if x not in notes]
    loss = first.get("loss")
    return Outputs(grads[0][2], loss, first.get("z_loss"), first.get("lse"), tuple(grads[1:]),
                   tuple(notes))


def _one(apply, st: Settings, inputs: Inputs, g: np.ndarray, by_autograd: bool):
    fw, dev = st.framework, st.device
    z = to_framework(inputs.logits, fw, dev, requires_grad=by_autograd and fw == "torch")
    t = to_framework(inputs.target, fw, dev)
    opts = _option_values(inputs, fw, dev)
    args, kw = _arguments(apply, st, (z, t), opts)
    notes = []
    if fw == "jax":
        import jax
        import jax.numpy as jnp

        def f(zz):
            got = _returned(apply(zz, *args[1:], **kw), st, len(inputs.logits))
            return got["loss"], got

        try:
            loss, vjp, got = jax.vjp(f, z, has_aux=True)
        except CallFailed:
            raise
        _check_loss_shape(loss, inputs)
        (grad,) = vjp(jnp.broadcast_to(jnp.asarray(g, loss.dtype), loss.shape))
    else:
        got = _returned(apply(*args, **kw), st, len(inputs.logits))
        loss = got["loss"]
        _check_loss_shape(loss, inputs)
        if by_autograd:
            import torch

            if not getattr(loss, "requires_grad", False):
                raise CallFailed("returned a loss that does not require grad: it is not "
                                 "connected to the logits through autograd")
            loss.backward(torch.as_tensor(np.asarray(g).reshape(tuple(loss.shape)),
                                          dtype=loss.dtype, device=loss.device))
            grad = z.grad
            if grad is None:
                raise CallFailed("the logits received no gradient from loss.backward()")
        else:
            grad = to_numpy(z) * (g[:, None] if g.ndim else g)
        if st.convention == "loss" and not np.array_equal(to_numpy(z), inputs.logits64,
                                                          equal_nan=True):
            notes.append("wrote into its logits argument under --convention loss (declare "
                         "--convention inplace if that is the design)")
    _unchanged(t, inputs.target, "target")
    _unchanged(opts["weight"], inputs.weight, "weight")
    values = {k: to_numpy(v) for k, v in got.items() if v is not None}
    return to_numpy(grad), values, notes


def _unchanged(x, original, name: str) -> None:
    if x is not None and not np.array_equal(to_numpy(x), np.asarray(original, np.float64)
                                            if np.asarray(original).dtype.kind == "f"
                                            else original, equal_nan=True):
        raise CallFailed(f"modified its {name} argument in place")


def _split(fwd, bwd, st: Settings, inputs: Inputs, lse64) -> Outputs:
    fw, dev = st.framework, st.device
    opts = _option_values(inputs, fw, dev)
    z = to_framework(inputs.logits, fw, dev)
    t = to_framework(inputs.target, fw, dev)
    args, kw = _arguments(fwd, st, (z, t), opts)
    got = _returned(fwd(*args, **kw), st, len(inputs.logits))
    _check_loss_shape(got["loss"], inputs)
    if "lse" not in got:
        raise CallFailed("the forward of --convention split must return (loss, lse)")
    values = {k: to_numpy(v) for k, v in got.items() if v is not None}
    lse_dtype = np.float64 if inputs.logits.dtype == np.float64 else np.float32
    name = dtype_name(got["loss"])               # dloss in the loss's own dtype
    loss_dtype = numpy_dtype(name) if name in DTYPES else np.float64
    grads = []
    for label, g in [("main", np.asarray(inputs.grad_output, np.float64))] + upstreams(inputs):
        zb = to_framework(inputs.logits, fw, dev)
        tb = to_framework(inputs.target, fw, dev)
        dl = to_framework(np.asarray(g, loss_dtype), fw, dev)
        lse = to_framework(np.asarray(lse64, lse_dtype), fw, dev)
        bargs, bkw = _arguments(bwd, st, (zb, tb, dl, lse), opts)
        dx = bwd(*bargs, **bkw)
        if dx is None:
            raise CallFailed("the backward returned None instead of dlogits")
        _unchanged(tb, inputs.target, "target")
        grads.append((label, g, to_numpy(dx)))
    _unchanged(t, inputs.target, "target")
    _unchanged(opts["weight"], inputs.weight, "weight")
    return Outputs(grads[0][2], values.get("loss"), values.get("z_loss"), values.get("lse"),
                   tuple(grads[1:]))
