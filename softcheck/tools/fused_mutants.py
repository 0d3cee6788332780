"""Wrong fused linear cross-entropy kernels (``--hidden``), numpy, for ``softcheck mutants``.

Each is ``fn(x, weight, target, bias=None, **options) -> (loss, grad_x, grad_W[, grad_b])``
(``--convention grad``) built on softcheck's blockwise reference, with one bug of the kind
real fused kernels have: grad_W transposed or scaled, the bias gradient not reduced over rows,
ignored rows leaking into grad_W, a vocabulary chunk skipped, the softcap chain factor missing.
"""

from __future__ import annotations

import numpy as np

from ..reference import analytic, fused
from ..spec import FusedInputs, LossSpec

#: the options every fused mutant is checked under (a bias, ignored rows, V = 507 not a
#: multiple of the 128-column chunk)
OPTIONS = {"hidden": 16, "classes": (507,), "batch": (16,), "bias": True,
           "ignore_index": -100, "dtype": ("float64", "float32")}
CHUNK = 128


def _inputs(x, weight, target, bias, ignore_index, softcap, grad_output):
    spec = LossSpec(ignore_index=ignore_index, softcap=softcap)
    return FusedInputs(x, weight, bias, np.asarray(target), None,
                       np.asarray(grad_output, np.float64), spec)


def _out(fi, r, gx=None, gw=None, gb=None):
    gx = r.grad_x if gx is None else gx
    gw = r.grad_w if gw is None else gw
    gb = r.grad_b if gb is None else gb
    dt = fi.x.dtype
    out = (np.asarray(r.loss), gx.astype(dt), gw.astype(dt))
    return out + ((np.asarray(gb).astype(dt),) if fi.bias is not None else ())


def correct(x, weight, target, bias=None, ignore_index=-100, softcap=None, grad_output=1.0):
    """Correct: the blockwise closed form."""
    fi = _inputs(x, weight, target, bias, ignore_index, softcap, grad_output)
    return _out(fi, fused.reference(fi))


def grad_w_transposed(x, weight, target, bias=None, ignore_index=-100, grad_output=1.0):
    fi = _inputs(x, weight, target, bias, ignore_index, None, grad_output)
    r = fused.reference(fi)
    return _out(fi, r, gw=r.grad_w.T)


def grad_w_halved(x, weight, target, bias=None, ignore_index=-100, grad_output=1.0):
    fi = _inputs(x, weight, target, bias, ignore_index, None, grad_output)
    r = fused.reference(fi)
    return _out(fi, r, gw=r.grad_w * 0.5)


def bias_not_reduced(x, weight, target, bias=None, ignore_index=-100, grad_output=1.0):
    fi = _inputs(x, weight, target, bias, ignore_index, None, grad_output)
    g = analytic.gradient(fi.logits_inputs())
    return _out(fi, fused.reference(fi), gb=g)


def ignored_rows_leak(x, weight, target, bias=None, ignore_index=-100, grad_output=1.0):
    fi = _inputs(x, weight, target, bias, ignore_index, None, grad_output)
    valid = np.asarray(target) != ignore_index
    every = _inputs(x, weight, np.where(valid, target, 0), bias, ignore_index, None,
                    grad_output)
    g = analytic.gradient(every.logits_inputs()) * len(valid) / max(int(valid.sum()), 1)
    return _out(fi, fused.reference(fi), gw=g.T @ np.asarray(x, np.float64))


def chunk_skipped(x, weight, target, bias=None, ignore_index=-100, grad_output=1.0):
    fi = _inputs(x, weight, target, bias, ignore_index, None, grad_output)
    r = fused.reference(fi)
    gw, gb = r.grad_w.copy(), None if r.grad_b is None else r.grad_b.copy()
    gw[CHUNK:2 * CHUNK] = 0
    if gb is not None:
        gb[CHUNK:2 * CHUNK] = 0
    return _out(fi, r, gw=gw, gb=gb)


def softcap_no_chain(x, weight, target, bias=None, ignore_index=-100, softcap=None,
                     grad_output=1.0):
    fi = _inputs(x, weight, target, bias, ignore_index, softcap, grad_output)
    return _out(fi, fused.reference(fi, chain=False))


#: (name, description, fn, extra options, the diagnosis words that name it)
FUSED = (
    ("flce-gradW-transposed", "fused: grad_W returned as (H, V)", grad_w_transposed, {},
     "transposed"),
    ("flce-gradW-halved", "fused: grad_W scaled by 1/2 (the mean applied twice)", grad_w_halved,
     {}, "grad_W is the reference times 0.5"),
    ("flce-bias-not-reduced", "fused: grad_b is G (N, V), not its sum over rows",
     bias_not_reduced, {}, "not reduced over rows"),
    ("flce-ignored-leak", "fused: ignored rows' G not zeroed before grad_W = Gᵀx",
     ignored_rows_leak, {"regime": ("masked",)}, "ignored rows leak into grad_W"),
    ("flce-chunk-skipped", "fused: the second vocabulary chunk's grad_W/grad_b never written",
     chunk_skipped, {}, "one contiguous block"),
    ("flce-softcap-no-chain", "fused: the softcap chain factor 1 - tanh² missing",
     softcap_no_chain, {"softcap": 5.0, "regime": ("confident",)}, "softcap chain factor"),
)
