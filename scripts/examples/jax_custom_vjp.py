"""A JAX loss with a hand-written backward (``jax.custom_vjp``): softcheck differentiates it
with ``jax.vjp`` (detected: ``--convention loss``) and judges its loss value too.

    softcheck check scripts/examples/jax_custom_vjp.py:ce_loss --ignore-index -100

``ce_loss_forward_bug`` carries a seeded bug: its forward divides the summed loss by the batch
size N instead of the non-ignored count (TransformerEngine PR #2476), while its backward is
right: only the loss-value pair catches it.
"""

from functools import partial

import jax
import jax.numpy as jnp


def _parts(logits, target, ignore_index):
    valid = target != ignore_index
    y = jnp.where(valid, target, 0)
    lse = jax.nn.logsumexp(logits, -1)
    zy = jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    return valid, y, lse, jnp.where(valid, lse - zy, 0.0)


def _make(forward_bug: bool):
    @partial(jax.custom_vjp, nondiff_argnums=(2,))
    def loss(logits, target, ignore_index=-100):
        valid, _, _, rows = _parts(logits, target, ignore_index)
        n = logits.shape[0] if forward_bug else jnp.sum(valid)
        return jnp.sum(rows) / n

    def fwd(logits, target, ignore_index):
        return loss(logits, target, ignore_index), (logits, target)

    def bwd(ignore_index, res, g):
        logits, target = res
        valid, y, lse, _ = _parts(logits, target, ignore_index)
        p = jnp.exp(logits - lse[:, None])
        d = (p - jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)) * valid[:, None]
        count = jnp.maximum(jnp.sum(valid), 1)
        return (g * d / count).astype(logits.dtype), None

    loss.defvjp(fwd, bwd)
    return loss


ce_loss = _make(False)
ce_loss_forward_bug = _make(True)
