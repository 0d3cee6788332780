"""Vocab-parallel cross-entropy in JAX, Megatron-style, for ``softcheck check --tensor-parallel
W --framework jax``.

softcheck calls it inside ``jax.shard_map`` over a 1-D mesh of W host devices:
``fn(logits_shard, target, *, axis_name, vocab_size, **options)``, the logits sharded on the
class axis (``P(None, axis_name)``, device r holding global ids ``[r*s, (r+1)*s)``, s the shard
width), the targets (global ids) and ``weight`` replicated.  With ``--split uneven`` the
vocabulary is padded at its end with ``-inf`` logits up to W*s columns: the columns at or past
``vocab_size`` are padding.  The forward all-reduces the row max (``pmax``), the sum of exps
and the target logit (``psum``; 0 on the devices that do not own it); the loss is the same on
every device.  Under shard_map's type checking (check_vma, the default) the transpose of a
``psum`` is the identity on each device, so each device's gradient is its own columns of the
full gradient, with no hand-written backward (Megatron's ``_ReduceFromModelParallelRegion``).

    softcheck check scripts/examples/jax_vocab_parallel_ce.py:vocab_parallel_ce \\
        --framework jax --convention loss --tensor-parallel 2 --classes 64

Two seeded bugs, as in ``vocab_parallel_ce.py`` (torch): ``smoothing_shard_v`` spreads label
smoothing over the shard's width instead of V (Megatron-LM #737); ``local_max`` shifts by the
shard's own max, never all-reduced, so the log-sum-exp (m_r + log Σ_all exp(z − m_r) with a
different m_r on each device) and the loss differ from device to device.
"""

import jax.numpy as jnp
from jax import lax


def _loss(logits, target, axis_name, vocab_size, weight, label_smoothing,
          smoothing_convention, ignore_index, reduction, *, all_reduce_max=True,
          global_v=True):
    z = logits if logits.dtype == jnp.float64 else logits.astype(jnp.float32)  # fp32 at least
    n, width = z.shape
    start = lax.axis_index(axis_name) * width          # this device's first global id
    vocab = vocab_size if vocab_size is not None else width * lax.axis_size(axis_name)
    ids = start + jnp.arange(width)
    real = ids < vocab                                 # past V: softcheck's -inf padding
    w_all = jnp.ones(vocab, z.dtype) if weight is None else weight.astype(z.dtype)
    w = jnp.where(real, jnp.take(w_all, jnp.minimum(ids, vocab - 1)), 0.0)   # (width,)
    m = lax.stop_gradient(z.max(axis=-1))              # the shift: a constant for autodiff
    if all_reduce_max:
        m = lax.pmax(m, axis_name)
    lse = m + jnp.log(lax.psum(jnp.exp(z - m[:, None]).sum(-1), axis_name))
    valid = target != ignore_index
    local = target - start
    owned = valid & (local >= 0) & (local < width)
    idx = jnp.clip(local, 0, width - 1)[:, None]
    z_y = lax.psum(jnp.where(owned, jnp.take_along_axis(z, idx, 1)[:, 0], 0.0), axis_name)
    w_y = jnp.where(valid, jnp.take(w_all, jnp.clip(target, 0, vocab - 1)), 0.0)
    # ce = Σ_c w_c q_c (lse − z_c) = A·lse − B with q the smoothed target
    a, b = w_y, w_y * z_y
    if label_smoothing:
        eps = label_smoothing
        k = vocab if global_v else width               # the bug: the shard's width
        w_sum = lax.psum(w.sum(), axis_name)
        wz_sum = lax.psum(jnp.where(real, w * z, 0.0).sum(-1), axis_name)
        if smoothing_convention == "uniform":          # EPS/V on every class
            a = (1 - eps) * w_y + eps / vocab * w_sum
            b = (1 - eps) * w_y * z_y + eps / k * wz_sum
        else:                                          # EPS/(V-1) on the other classes
            a = (1 - eps) * w_y + eps / (vocab - 1) * (w_sum - w_y)
            b = (1 - eps) * w_y * z_y + eps / (k - 1) * (wz_sum - w_y * z_y)
    per_row = jnp.where(valid, a * lse - b, 0.0)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / w_y.sum()                   # Σ w[y] over the valid rows (PyTorch)


def vocab_parallel_ce(logits, target, *, axis_name, vocab_size=None, weight=None,
                      label_smoothing=0.0, smoothing_convention="uniform", ignore_index=-100,
                      reduction="mean"):
    """Correct: every reduction over the vocabulary all-reduced, V the global vocabulary."""
    return _loss(logits, target, axis_name, vocab_size, weight, label_smoothing,
                 smoothing_convention, ignore_index, reduction)


def smoothing_shard_v(logits, target, *, axis_name, vocab_size=None, weight=None,
                      label_smoothing=0.0, smoothing_convention="uniform", ignore_index=-100,
                      reduction="mean"):
    """Seeded bug: label smoothing divides by the shard's width V/W (Megatron-LM #737)."""
    return _loss(logits, target, axis_name, vocab_size, weight, label_smoothing,
                 smoothing_convention, ignore_index, reduction, global_v=False)


def local_max(logits, target, *, axis_name, vocab_size=None, weight=None,
              label_smoothing=0.0, smoothing_convention="uniform", ignore_index=-100,
              reduction="mean"):
    """Seeded bug: the row max is the shard's own, never all-reduced: the devices disagree."""
    return _loss(logits, target, axis_name, vocab_size, weight, label_smoothing,
                 smoothing_convention, ignore_index, reduction, all_reduce_max=False)


def vocab_parallel_grad(logits, target, *, axis_name, vocab_size=None, weight=None,
                        label_smoothing=0.0, smoothing_convention="uniform", ignore_index=-100,
                        reduction="mean", grad_output=1.0):
    """``--convention grad``: this shard's gradient, by autodiff of the replicated loss with
    respect to the shard (inside shard_map)."""
    import jax

    def f(z):
        return _loss(z, target, axis_name, vocab_size, weight, label_smoothing,
                     smoothing_convention, ignore_index, reduction)

    loss, vjp = jax.vjp(f, logits)
    return vjp(jnp.broadcast_to(jnp.asarray(grad_output, loss.dtype), loss.shape))[0]


def crash(logits, target, *, axis_name, reduction="mean"):
    """For the tests: the worker hosting every device is killed in the middle of the call."""
    import os

    os.kill(os.getpid(), 9)
