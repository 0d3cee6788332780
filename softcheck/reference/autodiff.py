"""The autodiff reference: ``jax.grad`` (and ``jax.jvp`` of it) of the reference loss."""

from __future__ import annotations

import functools

import numpy as np

from ..spec import Inputs
from . import jaxsetup
from .loss import params, reference_rows




@functools.cache
def _jitted(hard: bool, what: str):
    jax, jnp = jaxsetup.load()

    def objective(z, target, prm):
        return jnp.sum(reference_rows(jnp, z, target, prm, hard, jax.lax.stop_gradient))

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
    fn = _jitted(inputs.spec.hard, "grad")
    return np.asarray(fn(inputs.logits64, inputs.target64, params(inputs, totals)))


def autodiff_hvp(inputs: Inputs, direction: np.ndarray) -> np.ndarray:
    """Hessian-vector product by ``jax.jvp`` of ``jax.grad``, float64."""
    jaxsetup.load()
    fn = _jitted(inputs.spec.hard, "hvp")
    return np.asarray(fn(inputs.logits64, inputs.target64, params(inputs), direction))
