"""Logits cases called as sequences: ``--shape btv`` and ``--shift 1`` for any convention.

Under ``--shape btv`` the candidate gets the (N, V) logits as (B, T, V) and the targets as
(B, T) (``suite.inputs.sequences``: B = 2 when N is even); under ``--shift 1`` it gets the
*unshifted* labels and must score position t against label t + 1 of its sequence, as HF's
``ForCausalLMLoss``, TransformerEngine, Unsloth and Apple CCE's ``shift=1`` do.  softcheck's
references see the shifted targets row by row (the case's target), each sequence's last
position ignored (no next token).  A per-position loss (reduction none) may come back as
(B, T), (N,) or, shifted, without the last position ((B, T-1)); softcheck reads it back as
(N,) rows, 0 at the dropped positions, and gives the upstream gradient in the loss's shape.
"""

from __future__ import annotations

import numpy as np

from ..suite.inputs import sequences, unshifted


def _bt(n: int, st) -> tuple[int, int]:
    return sequences(n, st.shape)


def as_called(logits, target, st, transposed: bool = False):
    """The logits and targets as the candidate is given them (numpy); ``transposed``
    (--layout transposed): the (B, T, V) logits a view of a fresh (T, B, V) buffer, as
    TransformerEngine gets a (B, SQ, V) view of Megatron's (SQ, B, V) output."""
    if st is None or st.fused or (st.shape == "nv" and not st.shift):
        return logits, target
    n = len(logits)
    b, t = _bt(n, st)
    lab = unshifted(target, b, t) if st.shift else np.asarray(target).reshape(b, t)
    if st.shape == "btv":
        z = logits.reshape(b, t, *logits.shape[1:])
        if transposed:
            z = np.ascontiguousarray(z.transpose(1, 0, 2)).transpose(1, 0, 2)
        return z, lab
    return logits, lab.reshape(-1)


def loss_shapes(n: int, st) -> list[tuple]:
    """The per-position loss shapes accepted for reduction none."""
    if st is None or st.fused or (st.shape == "nv" and not st.shift):
        return [(n,)]
    b, t = _bt(n, st)
    out = [(b, t), (n,)] if st.shape == "btv" else [(n,)]
    if st.shift:
        out += [(b, t - 1)] if st.shape == "btv" else [(n - 1,)]
    return out


def upstream_for(g, shape: tuple, st) -> np.ndarray:
    """The upstream gradient (scalar, or (N,) rows) in the loss's ``shape``."""
    g = np.asarray(g)
    if g.ndim == 0 or int(np.prod(shape)) == g.size:
        return g.reshape(shape)
    b, t = _bt(g.size, st)
    return g.reshape(b, t)[:, :shape[-1]].reshape(shape)       # (B, T-1): the last dropped


def per_row(value, n: int, st):
    """A returned per-position value as (N,) rows (0 where a shifted loss has none)."""
    v = np.asarray(value)
    if st is None or st.fused or v.ndim == 0 or v.size == n or v.size == 1:
        return v.reshape(n) if v.ndim and v.size == n else v
    b, t = _bt(n, st)
    if v.size != b * (t - 1):
        return v
    out = np.zeros((b, t), v.dtype)
    out[:, :-1] = v.reshape(b, t - 1)
    return out.reshape(n)
