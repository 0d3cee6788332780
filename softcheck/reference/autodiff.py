"""The autodiff reference: ``jax.grad`` (and ``jax.jvp`` of it) of the reference loss."""

from __future__ import annotations

import functools

import numpy as np

from ..spec import Inputs
from . import jaxsetup
from .loss import ALL_FEATURES, features, params, rows_of, sparse_targets, target_terms


@functools.cache
def _jitted(hard: bool, what: str, feats: tuple = ALL_FEATURES, sparse: bool = False):
    """``jax.grad`` of the reference loss, compiled for the features in use (``features``:
    a softcap, temperature or z-loss left out where its value is neutral, the same numbers
    without a tanh per entry) and, for index targets without smoothing, the target's
    weight gathered (``sparse_targets``) instead of a one-hot matrix (N, C)."""
    jax, jnp = jaxsetup.load()

    def objective(z, target, prm):
        c = z.shape[-1]
        tt = target_terms(jnp, target, prm, hard, c, sparse)
        index = jnp.clip(target, 0, c - 1) if sparse else None
        return jnp.sum(rows_of(jnp, z, tt, prm, jax.lax.stop_gradient, feats=feats,
                               index=index))

    grad = jax.grad(objective)
    if what == "grad":
        return jax.jit(grad)

    def hvp(z, target, prm, d):
        return jax.jvp(lambda x: grad(x, target, prm), (z,), (d,))[1]

    return jax.jit(hvp)


def autodiff(inputs: Inputs, totals=None) -> np.ndarray:
    """``jax.grad`` of the reference loss (the upstream gradient folded in), float64;
    ``totals``: the batch's mean denominators when ``inputs`` is a block of its rows."""
    jaxsetup.load()                       # x64 on (a caller may have restored it off)
    prm = params(inputs, totals)
    fn = _jitted(inputs.spec.hard, "grad", features(prm), sparse_targets(inputs, prm))
    return np.asarray(fn(inputs.logits64, inputs.target64, prm))


def autodiff_hvp(inputs: Inputs, direction: np.ndarray) -> np.ndarray:
    """Hessian-vector product by ``jax.jvp`` of ``jax.grad``, float64."""
    jaxsetup.load()
    fn = _jitted(inputs.spec.hard, "hvp")
    return np.asarray(fn(inputs.logits64, inputs.target64, params(inputs), direction))
