"""Float64 references of fused linear cross-entropy, in vocabulary blocks (never all logits).

z = x·Wᵀ (+ b) is computed one block of vocabulary columns at a time, twice: pass 1 keeps an
online log-sum-exp per row (and the two target terms the loss needs: v_y and Σ_j w_j v_j);
pass 2 forms G_b = ∂L/∂z on the block in closed form (analytic.py's formula (1): with
m_ij the target mass, ∂L/∂v_ij = α_i(Σm_i·p_ij − m_ij) + β_i·2·COEF·lse_i·p_ij, times the
softcap chain factor 1 − t² and 1/T) and accumulates grad_x += G_b·W_b, grad_W[b] = G_bᵀ·x,
grad_b[b] = Σ_rows G_b.  Alongside, the error-propagation bounds of ``tolerances.py``'s
fused entry: the same products with |G| replaced by the size of G's parts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..spec import FusedInputs
from .loss import params, reference_rows

#: float64 entries of one (N, block) slab of logits: 2^22 = 32 MiB
BLOCK_ELEMENTS = 1 << 22
#: the float32 bound products' rounding (a relative γ_N·2^-24, N ≤ 2^13) covered 16 times over
BOUND_MARGIN = np.float32(1.01)
#: jax.vjp of the materialized loss only up to this many logits
AUTODIFF_MAX_LOGITS = 1 << 21


@dataclass(frozen=True)
class FusedGrads:
    """One method's outputs; ``bound_*`` the references' error-propagation sizes (or None)."""

    loss: object            # float (mean/sum) or (N,) (none), the upstream gradient not applied
    grad_x: np.ndarray
    grad_w: np.ndarray
    grad_b: np.ndarray | None
    lse: np.ndarray | None = None
    bound_x: np.ndarray | None = None
    bound_w: np.ndarray | None = None
    bound_b: np.ndarray | None = None
    kappa: float = 1.0
    scale: float = 0.0      # max_i of row i's gradient scale S_i / T (tolerances.py)
    loss_rows: np.ndarray | None = None   # a_i·(Σm_i + 2·COEF·|lse_i|): row i's loss terms' size
    grad_x_parts: list | None = None      # ``shards``: each vocabulary shard's part of grad_x


class _Rows:
    """The per-row constants: target mass m (as y, w_y, the spread c), Σm, α, β."""

    def __init__(self, fi: FusedInputs):
        s = fi.spec
        n, v = fi.target.shape[0], fi.lm_weight.shape[0]
        self.valid = valid = fi.valid
        self.wv = np.ones(v) if fi.weight is None else np.asarray(fi.weight, np.float64)
        self.y = np.where(valid, fi.target, 0)
        self.eps = eps = s.label_smoothing
        self.others = s.smoothing_convention == "others"
        wsum = float(np.sum(self.wv))
        self.wy = self.wv[self.y] * valid
        if self.others:
            self.c = eps / (v - 1) if v > 1 else 0.0
            self.mass = (1 - eps) * self.wy + self.c * (wsum * valid - self.wy)
        else:
            self.c = eps / v
            self.mass = (1 - eps) * self.wy + self.c * wsum * valid
        denom, count = float(np.sum(self.wy)), float(np.sum(valid))
        if s.mean_over == "valid":
            denom = count
        if s.mean_over == "batch" or isinstance(s.mean_over, int):
            denom = count = float(n if s.mean_over == "batch" else s.mean_over)
        if s.reduction == "mean":
            a = np.full(n, 1 / denom if denom > 0 else 0.0)
            b = valid / count if count > 0 else np.zeros(n)
        else:
            a, b = np.ones(n), valid.astype(np.float64)
        go = np.broadcast_to(np.asarray(fi.grad_output, np.float64), (n,))
        self.a, self.b, self.ga, self.gb = a, b, a * go, b * go
        self.coef = s.z_loss

    def mass_block(self, j0: int, j1: int) -> np.ndarray:
        """m_ij for columns j0:j1 (N, j1 − j0)."""
        n = self.y.shape[0]
        m = np.outer(self.c * self.valid, self.wv[j0:j1])
        inb = (self.y >= j0) & (self.y < j1) & self.valid
        r = np.nonzero(inb)[0]
        cols = self.y[r] - j0
        m[r, cols] = (1 - self.eps) * self.wy[r] + (0.0 if self.others else m[r, cols])
        del n
        return m

    def mass_row(self, i: int) -> np.ndarray:
        """m_i over every column (one row)."""
        m = self.c * self.valid[i] * self.wv.copy()
        if self.valid[i]:
            y = self.y[i]
            m[y] = (1 - self.eps) * self.wy[i] + (0.0 if self.others else m[y])
        return m


def _transform(z, spec):
    u = z / spec.divisor
    if spec.softcap:
        t = np.tanh(u / spec.softcap)
        return spec.softcap * t, t
    return u, None


def _blocks(n: int, v: int, block: int | None, shards=None):
    """Vocabulary blocks (j0, j1, the shard they lie in: each lies in one of ``shards``)."""
    b = block or max(64, BLOCK_ELEMENTS // max(n, 1))
    return [(j, min(j + b, s1), k) for k, (s0, s1) in enumerate(shards or [(0, v)])
            for j in range(s0, s1, b)]


def _logits(x, w, bias, j0, j1):
    z = x @ np.asarray(w[j0:j1], np.float64).T
    return z if bias is None else z + bias[j0:j1]


def reference(fi: FusedInputs, *, row_error=None, block: int | None = None,
              chain: bool = True, shards: list | None = None) -> FusedGrads:
    """Loss, grad_x, grad_W, grad_b of float64 ``fi`` in vocabulary blocks.

    ``row_error(kappa)`` → (e (N,), γ_V, γ_N, c): the relative error a candidate may have in
    row i's G, its two accumulation lengths and the absolute error of its softcap factor
    1 − t² (``tolerances.fused_row_error``); with it the bounds are computed too.
    ``shards`` ([(a, b)], vocabulary ranges covering V): also each range's part of grad_x,
    Σ over its columns of G·W (what a vocab-parallel rank holds before the all-reduce).  ``chain=False`` leaves the softcap's chain factor out (what a
    kernel missing it computes: the diagnosis compares with it).
    """
    w = fi.lm_weight                                # cast to float64 one block at a time
    fi = _float64_but_w(fi)
    x, bias, spec = fi.x, fi.bias, fi.spec
    n, v = x.shape[0], w.shape[0]
    r = _Rows(fi)
    blocks = _blocks(n, v, block, shards)
    mx = np.full(n, -np.inf)
    tot = np.zeros(n)
    vy = np.zeros(n)
    swv = np.zeros(n)
    vmax = 0.0
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        for j0, j1, _ in blocks:                                # pass 1: online lse
            vb, _ = _transform(_logits(x, w, bias, j0, j1), spec)
            vmax = max(vmax, float(np.max(np.abs(vb))))
            new = np.maximum(mx, np.max(vb, 1))
            tot = tot * np.exp(mx - new) + np.sum(np.exp(vb - new[:, None]), 1)
            mx = new
            inb = np.nonzero((r.y >= j0) & (r.y < j1))[0]
            vy[inb] = vb[inb, r.y[inb] - j0]
            if r.eps:
                swv += vb @ r.wv[j0:j1]
        lse = mx + np.log(tot)
        mv = (1 - r.eps) * r.wy * vy + r.c * r.valid * (swv - (r.wv[r.y] * vy if r.others
                                                               else 0.0))
        ce = np.where(r.valid, r.mass * lse - mv, 0.0)
        zrow = r.coef * lse**2 if r.coef else np.zeros(n)
        rows = r.a * ce + r.b * np.where(r.valid, zrow, 0.0)
        loss = rows if spec.reduction == "none" else float(np.sum(rows))
        kappa = 1.0 + vmax + float(np.log(v))
        zpart = np.abs(r.gb * 2 * r.coef * lse)
        scale = float(np.max(np.abs(r.ga) * r.mass + zpart, initial=0.0)) / spec.divisor
        e = gv = gn = None
        slack = 0.0
        if row_error is not None:
            e, gv, gn, slack = row_error(kappa)
        gx = np.zeros_like(x)
        gw = np.zeros(w.shape)
        gb = np.zeros(v)
        # the bounds in float32 (2× faster matmuls), rounded up by BOUND_MARGIN: a bound needs
        # no more digits than that
        bx = np.zeros(x.shape, np.float32) if e is not None else None
        bw = np.zeros(w.shape, np.float32) if e is not None else None
        bb = np.zeros(v) if e is not None else None
        ax = np.abs(x).astype(np.float32) if e is not None else None
        parts = [np.zeros_like(x) for _ in shards] if shards else None
        for j0, j1, k in blocks:                                # pass 2: G per block
            vb, t = _transform(_logits(x, w, bias, j0, j1), spec)
            p = np.exp(vb - lse[:, None])
            m = r.mass_block(j0, j1)
            g = r.ga[:, None] * (r.mass[:, None] * p - m) + \
                (r.gb * 2 * r.coef * lse)[:, None] * p
            cf = (1 - t * t) / spec.divisor if t is not None and chain else 1 / spec.divisor
            g = g * cf
            wb = np.asarray(w[j0:j1], np.float64)
            gx += g @ wb
            if parts is not None:
                parts[k] += g @ wb
            gw[j0:j1] = g.T @ x
            gb[j0:j1] = np.sum(g, 0)
            if e is not None:
                sv = np.abs(r.ga)[:, None] * (r.mass[:, None] * p + m) + zpart[:, None] * p
                size = sv * cf
                # the softcap factor's own absolute error (slack), not scaled by e
                own = sv * (slack / spec.divisor) if t is not None and chain else 0.0
                aw = np.abs(wb).astype(np.float32)
                bx += ((size * (e + gv)[:, None] + own).astype(np.float32) @ aw) * BOUND_MARGIN
                sn = size * (e + gn)[:, None] + own
                bw[j0:j1] = (sn.T.astype(np.float32) @ ax) * BOUND_MARGIN
                bb[j0:j1] = np.sum(sn, 0)
    loss_rows = r.a * r.mass + r.b * 2 * r.coef * np.abs(lse)
    return FusedGrads(loss, gx, gw, gb if bias is not None else None, lse, bx, bw,
                      bb if bias is not None else None, kappa, scale, loss_rows, parts)


def _float64_but_w(fi: FusedInputs) -> FusedInputs:
    def up(a):
        return None if a is None else np.asarray(a, np.float64)

    return dataclasses.replace(fi, x=up(fi.x), bias=up(fi.bias), weight=up(fi.weight))


def _matvec(w: np.ndarray, d: np.ndarray) -> np.ndarray:
    """W·d in float64, W cast a block of rows at a time."""
    b = max(1, BLOCK_ELEMENTS // max(w.shape[1], 1))
    return np.concatenate([np.asarray(w[j:j + b], np.float64) @ d
                           for j in range(0, w.shape[0], b)]) if w.shape[0] else np.zeros(0)


def norms(fi: FusedInputs) -> tuple[np.ndarray, float, float]:
    """‖x_i‖₂ (N,), max_j ‖W_j‖₂ and max|b| in float64 (what the tolerances need)."""
    x = np.asarray(fi.x, np.float64)
    w = fi.lm_weight
    b = max(1, BLOCK_ELEMENTS // max(w.shape[1], 1))
    wmax = max((float(np.max(np.linalg.norm(np.asarray(w[j:j + b], np.float64), axis=1)))
                for j in range(0, w.shape[0], b)), default=0.0)
    bmax = float(np.max(np.abs(np.asarray(fi.bias, np.float64)))) if fi.bias is not None \
        and fi.bias.size else 0.0
    return np.linalg.norm(x, axis=1), wmax, bmax


def autodiff(fi: FusedInputs) -> FusedGrads | None:
    """``jax.vjp`` of the materialized composed loss (the reference loss of ``loss.py``) with
    respect to x, W and b; None when the logits exceed ``AUTODIFF_MAX_LOGITS``."""
    n, v = fi.x.shape[0], fi.lm_weight.shape[0]
    if n * v > AUTODIFF_MAX_LOGITS:
        return None
    from . import jaxsetup

    jax, jnp = jaxsetup.load()
    f = fi.float64()
    prm = params(fi.logits_inputs())
    b0 = np.zeros(v) if f.bias is None else f.bias

    def objective(x, w, b):
        z = x @ w.T + b
        return jnp.sum(reference_rows(jnp, z, fi.target, prm, True, jax.lax.stop_gradient))

    out, vjp = jax.vjp(objective, f.x, f.lm_weight, b0)
    gx, gw, gb = (np.asarray(a) for a in vjp(jnp.ones_like(out)))
    return FusedGrads(None, gx, gw, gb if f.bias is not None else None)


# ------------------------------------------------------------------ finite differences
#: complex-step size relative to the probe's largest logit change: the truncation error is
#: O(h²) (nil), rounding stays at u (no cancellation)
COMPLEX_STEP = 1e-20
#: the probes' rounding band per unit of u·κ·(size of the differentiated terms)
K_PROBE = 16.0


def project(g: np.ndarray, dirs, *, absolute: bool = False) -> np.ndarray:
    """⟨g, d_p⟩ for sparse directions ``dirs = (index, values)``: d_p is ``values[p]`` on row
    ``index[p]`` of g (a scalar for the bias); ``absolute``: ⟨|g|, |d_p|⟩."""
    idx, vals = dirs
    rows = np.asarray(g[idx], np.float64)
    if absolute:
        rows, vals = np.abs(rows), np.abs(vals)
    if g.ndim == 1:
        return rows * vals
    return np.sum(rows * vals, 1)


def _row_loss(r: _Rows, i: int, vrow: np.ndarray, m: np.ndarray) -> complex:
    mx = np.max(vrow.real)
    lse = mx + np.log(np.sum(np.exp(vrow - mx)))
    return r.ga[i] * (r.mass[i] * lse - np.sum(m * vrow)) + r.gb[i] * r.coef * lse * lse


def fd_probes(fi: FusedInputs, ref: FusedGrads, *, seed: int, count: int) -> dict:
    """Complex-step directional derivatives of the loss (times g): along random directions on
    single rows of x (a full row of logits, complex), on single vocabulary rows of W and
    entries of b (the column's change folded into each row's lse exactly:
    lse' = lse + log1p(p_ij·expm1(v'_ij − v_ij))).  {output: (dirs, values, band)}."""
    f = _float64_but_w(fi)
    x, w, bias, spec = f.x, f.lm_weight, f.bias, f.spec
    n, h = x.shape
    v = w.shape[0]
    r = _Rows(f)
    rng = np.random.default_rng([seed, 19])
    lse = ref.lse
    size = np.abs(r.ga) * 2 * r.mass + np.abs(r.gb * 2 * r.coef * lse)
    u = 2.0**-53
    out = {}
    rows = rng.choice(n, min(count, n), replace=False)
    vals = rng.standard_normal((len(rows), h))
    fd, band = [], []
    with np.errstate(all="ignore"):
        for i, d in zip(rows, vals):
            dz = _matvec(w, d)
            step = COMPLEX_STEP / max(float(np.max(np.abs(dz))), 1e-300)
            z = _matvec(w, x[i]) + (0.0 if bias is None else bias)
            vr, _ = _transform(z + 1j * step * dz, spec)
            m = r.mass_row(int(i))
            fd.append(_row_loss(r, int(i), vr, m).imag / step)
            band.append(K_PROBE * u * ref.kappa * size[i] * np.max(np.abs(dz)) / spec.divisor)
    out["grad_x"] = ((rows, vals), np.array(fd), np.array(band))
    cols = list(dict.fromkeys([int(r.y[k]) for k in range(min(2, n))] + [0, v - 1]))
    cols = (cols + [int(c) for c in rng.choice(v, count, replace=v < count)])[:count]
    cols = np.array(cols)
    for k in ("grad_w", "grad_b"):
        if k == "grad_b" and bias is None:
            continue
        dvals = rng.standard_normal((len(cols), h)) if k == "grad_w" else np.ones(len(cols))
        fd, band = [], []
        with np.errstate(all="ignore"):
            for j, d in zip(cols, dvals):
                dz = x @ d if k == "grad_w" else np.ones(n)
                step = COMPLEX_STEP / max(float(np.max(np.abs(dz))), 1e-300)
                z = x @ np.asarray(w[j], np.float64) + (0.0 if bias is None else bias[j])
                v0, _ = _transform(z, spec)
                v1, _ = _transform(z + 1j * step * dz, spec)
                dv = v1 - v0
                p = np.exp(v0 - lse)
                dl = np.log1p(p * np.expm1(dv))
                m = r.mass_block(j, j + 1)[:, 0]
                dloss = r.ga * (r.mass * dl - m * dv) + r.gb * r.coef * (2 * lse * dl + dl * dl)
                fd.append(float(np.sum(dloss.imag)) / step)
                band.append(K_PROBE * u * ref.kappa * float(np.sum(size * np.abs(dz)))
                            / spec.divisor)
        out[k] = ((cols, dvals), np.array(fd), np.array(band))
    return out


def torch_errors(fi: FusedInputs, ref: FusedGrads) -> dict:
    """PyTorch's own largest error per output in the case dtype (F.linear, then the loss
    composed of torch ops, autograd): the extra allowance of ``--tolerance torch``."""
    import torch

    from ..spec import SoftcheckError

    s = fi.spec
    if s.smoothing_convention != "uniform" or s.mean_over != "weight":
        raise SoftcheckError("--tolerance torch composes PyTorch's F.cross_entropy: it needs "
                             "--smoothing-convention uniform and --mean-over weight")

    def t(a, grad=False):
        if a is None:
            return None
        arr = np.asarray(a)
        if arr.dtype.name == "bfloat16":
            out = torch.from_numpy(arr.view(np.uint16).copy()).view(torch.bfloat16)
        else:
            out = torch.from_numpy(np.array(arr, copy=True))
        return out.requires_grad_(grad)

    x, w, b = t(fi.x, True), t(fi.lm_weight, True), t(fi.bias, True)
    y = torch.from_numpy(fi.target)
    z = torch.nn.functional.linear(x, w, b) * (s.logit_scale / s.temperature)
    if s.softcap:
        z = s.softcap * torch.tanh(z / s.softcap)
    ii = -100 if s.ignore_index is None else s.ignore_index
    wt = t(fi.weight)
    loss = torch.nn.functional.cross_entropy(z, y, weight=wt, ignore_index=ii,
                                             reduction=s.reduction,
                                             label_smoothing=s.label_smoothing)
    if s.z_loss:
        valid = (y != ii).to(z.dtype)
        zl = s.z_loss * torch.logsumexp(z, -1) ** 2 * valid
        loss = loss + (zl if s.reduction == "none" else zl.sum() / (
            valid.sum().clamp(min=1) if s.reduction == "mean" else 1))
    g = np.asarray(fi.grad_output, np.float64)
    loss.backward(torch.as_tensor(g, dtype=loss.dtype).expand(loss.shape))

    def err(a, r):
        return float(np.max(np.abs(a.detach().double().numpy() - r), initial=0.0))

    out = {"loss": err(loss, np.asarray(ref.loss)), "grad_x": err(x.grad, ref.grad_x),
           "grad_w": err(w.grad, ref.grad_w)}
    if b is not None:
        out["grad_b"] = err(b.grad, ref.grad_b)
    return out
