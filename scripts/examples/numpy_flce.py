"""A chunked numpy fused linear cross-entropy: never builds the (N, V) logits.

Two passes over vocabulary chunks (online log-sum-exp, then the gradient chunk by chunk), as
Liger's and Apple's kernels do; mean/sum reduction, ignore_index, label smoothing, softcap, a
bias.  Returns (loss, grad_x, grad_W[, grad_b]):

    softcheck check scripts/examples/numpy_flce.py:flce --hidden 64 --classes 507 --batch 16 \\
        --ignore-index -100 --bias --convention grad
    softcheck check scripts/examples/numpy_flce.py:flce_skips_last_chunk ...   # seeded bug
"""

import numpy as np

#: vocabulary columns per chunk: 128, or V/8 for a large vocabulary (fewer, faster matmuls)
CHUNK = 128


def _flce(x, weight, target, bias, ignore_index, label_smoothing, softcap, reduction,
          grad_output, skip_last=False):
    cd = np.float64 if x.dtype == np.float64 else np.float32
    xc, wc = x.astype(cd), weight.astype(cd)
    bc = None if bias is None else bias.astype(cd)
    n, v = x.shape[0], weight.shape[0]
    valid = target != ignore_index
    y = np.where(valid, target, 0)
    eps = cd(label_smoothing)
    step = max(CHUNK, v // 8)
    chunks = [(j, min(j + step, v)) for j in range(0, v, step)]

    def logits(j0, j1):
        z = xc @ wc[j0:j1].T
        if bc is not None:
            z = z + bc[j0:j1]
        if softcap:
            t = np.tanh(z / cd(softcap))
            return cd(softcap) * t, t
        return z, None

    mx = np.full(n, -np.inf, cd)
    tot = np.zeros(n, cd)
    zy = np.zeros(n, cd)
    zsum = np.zeros(n, cd)
    for j0, j1 in chunks:                              # pass 1: online lse
        z, _ = logits(j0, j1)
        new = np.maximum(mx, z.max(1))
        tot = tot * np.exp(mx - new) + np.exp(z - new[:, None]).sum(1)
        mx = new
        rows = np.nonzero((y >= j0) & (y < j1))[0]
        zy[rows] = z[rows, y[rows] - j0]
        zsum += z.sum(1)
    lse = mx + np.log(tot)
    ce = lse - (1 - eps) * zy - eps / v * zsum
    count = max(int(valid.sum()), 1)
    loss = np.sum(ce * valid)
    scale = cd(grad_output) / (count if reduction == "mean" else 1)
    if reduction == "mean":
        loss = loss / count
    gx = np.zeros_like(xc)
    gw = np.zeros_like(wc)
    gb = np.zeros(v, cd)
    if skip_last:                                      # the seeded bug: an off-by-one range
        chunks = chunks[:-1] if v % step else chunks
    for j0, j1 in chunks:                              # pass 2: the gradient per chunk
        z, t = logits(j0, j1)
        g = np.exp(z - lse[:, None]) - eps / v
        rows = np.nonzero((y >= j0) & (y < j1))[0]
        g[rows, y[rows] - j0] -= 1 - eps
        g *= (valid * scale)[:, None]
        if t is not None:
            g *= 1 - t * t
        gx += g @ wc[j0:j1]
        gw[j0:j1] = g.T @ xc
        gb[j0:j1] = g.sum(0)
    out = (np.asarray(loss), gx.astype(x.dtype), gw.astype(weight.dtype))
    return out + ((gb.astype(bias.dtype),) if bias is not None else ())


def flce(x, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0, softcap=None,
         reduction="mean", grad_output=1.0):
    return _flce(x, weight, target, bias, ignore_index, label_smoothing, softcap, reduction,
                 grad_output)


def flce_skips_last_chunk(x, weight, target, bias=None, ignore_index=-100,
                          label_smoothing=0.0, softcap=None, reduction="mean", grad_output=1.0):
    """Seeded bug: the backward's chunk loop stops before the last, partial vocabulary chunk
    (``range(0, V - CHUNK, CHUNK)``): grad_W's last rows stay zero, grad_x misses them."""
    return _flce(x, weight, target, bias, ignore_index, label_smoothing, softcap, reduction,
                 grad_output, skip_last=True)
