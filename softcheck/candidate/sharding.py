"""How ``--tensor-parallel W`` splits the vocabulary, and a JAX TARGET called inside
``jax.shard_map`` over W XLA host devices (``--framework jax``; ``shard_main`` serves it).

The JAX contract: ``fn(logits_shard, target, *, axis_name, **options)`` runs inside
``shard_map`` over a 1-D mesh of W CPU devices whose axis is named ``axis_name``; the logits
are sharded on the class axis (``P(None, axis_name)``), the targets (global class ids) and
array options (``weight``, ``grad_output``) replicated (``P()``).  ``vocab_size=V`` is passed
too when ``fn`` declares it.  Under ``--convention loss`` each device differentiates its own
loss with respect to its own shard (``jax.vjp`` inside the body, the upstream gradient as the
cotangent), so a ``psum`` transposes as JAX types it (check_vma: the identity per device, what
Megatron's ``_ReduceFromModelParallelRegion`` writes by hand); every device's loss comes back
(``out_specs P(axis)``) for ``ranks_agree_on_loss``.  Under ``grad`` ``fn`` returns its
shard's gradient.

shard_map needs equal blocks: ``--split uneven`` pads the vocabulary at its end with ``-inf``
logits up to W·⌈V/W⌉ columns (as Megatron pads its vocabulary to a multiple of the TP size), so
device r holds global ids ``[r·s, min((r+1)·s, V))``, s = ⌈V/W⌉; the padded columns' gradient
is dropped.  A kernel finds its first global id as ``axis_index(axis_name) * shard width``.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..spec import Inputs, SoftcheckError
from .conventions import (Outputs, Settings, _arguments, _check_loss_shape, _option_values,
                          _returned, upstreams)
from .frameworks import to_numpy

#: the mesh's axis name (the TARGET gets it as ``axis_name``)
AXIS = "tp"


def shards(classes: int, world: int, split: str = "even") -> list[tuple[int, int]]:
    """Each torch rank's columns [start, stop): ``even`` W equal shards (V divisible by W, as
    Megatron requires); ``uneven`` rank r starts at r*(V//W) + min(r, V%W)."""
    if world > classes:
        raise SoftcheckError(f"--tensor-parallel {world} needs at least {world} classes; "
                             f"got {classes}")
    if split == "even" and classes % world:
        raise SoftcheckError(f"--split even needs the classes ({classes}) divisible by "
                             f"--tensor-parallel {world}: pick --classes or --split uneven")
    q, r = divmod(classes, world)
    starts = [k * q + min(k, r) for k in range(world + 1)]
    return list(zip(starts[:-1], starts[1:]))


def layout(classes: int, world: int, split: str = "even") -> tuple[list[tuple[int, int]], int]:
    """Each JAX device's real columns [start, stop) and the width s every device holds
    (``uneven``: the vocabulary padded at its end to W·s columns, s = ⌈V/W⌉)."""
    if split == "even":
        return shards(classes, world, split), classes // world
    shards(classes, world, split)                 # at least W classes
    s = -(-classes // world)
    if (world - 1) * s >= classes:
        raise SoftcheckError(f"--split uneven with --framework jax pads the vocabulary at its "
                             f"end to W*ceil(V/W) = {world * s} columns: with --classes "
                             f"{classes} device {world - 1} would hold none of them; pick "
                             "--classes or --tensor-parallel")
    return [(r * s, min((r + 1) * s, classes)) for r in range(world)], s


def check(fn, st: Settings) -> None:
    """One line (exit 2) unless this JAX TARGET can run so: on CPU host devices (no --device
    cuda, no torch --backend nccl), taking ``axis_name`` (by name or ``**kwargs``)."""
    if st.device != "cpu" or st.backend != "gloo":
        what = f"--device {st.device}" if st.device != "cpu" else f"--backend {st.backend}"
        raise SoftcheckError(f"{what} cannot be combined with --tensor-parallel for a JAX "
                             "kernel: it runs inside jax.shard_map over W host (CPU) devices "
                             "of one process")
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if "axis_name" not in ps and not any(p.kind is p.VAR_KEYWORD for p in ps.values()):
        raise SoftcheckError(f"{getattr(fn, '__name__', fn)}({', '.join(ps)}) takes no "
                             "axis_name: --tensor-parallel with --framework jax calls it inside "
                             "jax.shard_map as fn(logits_shard, target, *, axis_name, **options)")


def mesh(world: int):
    """A 1-D mesh of W XLA host devices (the worker's XLA_FLAGS asked for them)."""
    from jax.sharding import Mesh

    from ..reference.jaxsetup import load

    jax, _ = load()
    devices = jax.devices("cpu")
    if len(devices) < world:
        raise SoftcheckError(f"--tensor-parallel {world}: JAX sees {len(devices)} CPU "
                             f"device(s) in the worker (XLA_FLAGS={world} host devices was not "
                             "honoured: JAX started before the flag was read?)")
    return Mesh(np.array(devices[:world]), (AXIS,))


def _shard_map():
    import jax

    if hasattr(jax, "shard_map"):
        return jax.shard_map
    from jax.experimental.shard_map import shard_map  # JAX before 0.6

    return shard_map


def _keywords(fn, kw: dict, classes: int) -> tuple[dict, dict]:
    """``kw`` with axis_name (and vocab_size if declared), split into the arrays (replicated
    inputs of the shard_map) and the rest (Python values, closed over)."""
    try:
        declared = "vocab_size" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        declared = False
    kw = {**kw, "axis_name": AXIS, **({"vocab_size": classes} if declared else {})}
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in kw.items() if k not in arrays}


def _pad(logits: np.ndarray, cols, width: int) -> np.ndarray:
    out = np.full((logits.shape[0], len(cols) * width), -np.inf, logits.dtype)
    for r, (a, b) in enumerate(cols):
        out[:, r * width:r * width + b - a] = logits[:, a:b]
    return out


def _unpad(grad, cols, width: int) -> np.ndarray:
    grad = to_numpy(grad)
    return np.concatenate([grad[:, r * width:r * width + b - a] for r, (a, b) in enumerate(cols)],
                          axis=1)


def _varying(g, loss):
    """The cotangent typed like the loss: varying over the axis when the loss is (the
    devices disagree), else JAX refuses it."""
    import jax

    aval = jax.typeof(loss) if hasattr(jax, "typeof") else jax.core.get_aval(loss)
    vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    if vma is None:
        vma = getattr(aval, "vma", frozenset())
    if AXIS not in vma:
        return g
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(g, AXIS, to="varying")
    return jax.lax.pvary(g, AXIS)


def run(fn, st: Settings, inputs: Inputs, *, mesh, bwd=None, lse64=None,
        variants: bool = True) -> Outputs:
    """``--convention loss`` inside shard_map (``conventions.run``'s contract): per upstream
    gradient g, every device's loss and its shard's ∂(g·loss)/∂shard; rank 0's values are the
    loss, every device's loss is in ``Outputs.ranks``."""
    from jax.sharding import PartitionSpec as P

    from ..reference.jaxsetup import load

    jax, jnp = load()
    n, v = inputs.logits.shape
    cols, width = layout(v, mesh.size, st.split)
    _, kw = _arguments(fn, st, (None, None), _option_values(inputs, "numpy", "cpu"))
    arrays, static = _keywords(fn, kw, v)
    z = _pad(inputs.logits, cols, width)
    grads, first = [], None
    for label, g in [("main", np.asarray(inputs.grad_output, np.float64))] + (
            upstreams(inputs) if variants else []):
        def body(zs, t, gg, arrs):
            def f(zz):
                got = _returned(fn(zz, t, **static, **arrs), st, n)
                return got["loss"], got

            loss, vjp, got = jax.vjp(f, zs, has_aux=True)
            _check_loss_shape(loss, inputs)
            (gz,) = vjp(_varying(jnp.broadcast_to(gg.astype(loss.dtype), loss.shape), loss))
            return {k: jnp.asarray(x)[None] for k, x in got.items() if x is not None}, gz

        sm = _shard_map()(body, mesh=mesh, in_specs=(P(None, AXIS), P(), P(), P()),
                          out_specs=(P(AXIS), P(None, AXIS)))
        values, gz = jax.jit(sm)(z, inputs.target, np.asarray(g), arrays)
        grads.append((label, g, _unpad(gz, cols, width)))
        first = first or {k: to_numpy(x) for k, x in values.items()}
    ranks = tuple((r, a, b, first["loss"][r], width) for r, (a, b) in enumerate(cols))
    return Outputs(grads[0][2], first["loss"][0], *(first[k][0] if k in first else None
                                                    for k in ("z_loss", "lse")),
                   tuple(grads[1:]), (), ranks)


def grad_fn(fn, st: Settings, mesh):
    """``--convention grad``: a function of the full (N, V) logits that runs ``fn`` inside
    shard_map (each device returns its shard's gradient) and returns the (N, V) gradient."""
    from jax.sharding import PartitionSpec as P

    from ..reference.jaxsetup import load

    def call(logits, target, **kw):
        jax, _ = load()
        v = logits.shape[1]
        cols, width = layout(v, mesh.size, st.split)
        arrays, static = _keywords(fn, kw, v)
        sm = _shard_map()(lambda zs, t, arrs: fn(zs, t, **static, **arrs), mesh=mesh,
                          in_specs=(P(None, AXIS), P(), P()), out_specs=P(None, AXIS))
        return _unpad(jax.jit(sm)(_pad(logits, cols, width), target, arrays), cols, width)

    return call
