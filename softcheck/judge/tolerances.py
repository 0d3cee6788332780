"""Every tolerance in one per-dtype table, each entry derived.

Notation: ``u`` is a format's unit roundoff (half an ulp at 1: 2^-53 for float64, 2^-24 for
float32, 2^-8 for bfloat16, 2^-11 for float16).

**The gradient's scale.**  Every entry of ∂L/∂z is a difference ``α(Σm·p_j − m_j)`` (plus the
z-loss term) whose two parts are each at most ``S_i = |α_i|Σ_c m_ic + 2|β_i|·COEF·|lse_i|``
(divided by T, times the softcap factor ≤ 1).  Rounding errors scale with those *parts*, not
with the difference: in the ``confident`` regime the gradient is ~1e-13·S while any float64
computation of ``p_y − 1`` errs by ~1e-16·S.  So errors are measured against
``scale = max_i S_i / T`` — "relative to the gradient's scale" everywhere in softcheck means
``max_abs_error / scale``.

**Condition.**  ``p_j = exp(v_j − lse)`` turns an absolute error δ in its argument into a relative
error δ; computing ``v_j − lse`` errs by about ``u·(|v_j| + |lse|)`` and ``|lse| ≤ max|v| + ln C``.
So the case's condition number is ``κ = 1 + max|v| + ln C`` (finite v; v the logits after the
temperature and softcap): the ``large`` regime (|v| ~ 1e3) loses three digits in any precision.

**Allowed error per entry**, for a gradient in dtype d judged against a float64 reference r::

    |x_ij − r_ij| ≤ K_ABS·u_compute(d)·κ·scale  +  K_REL·u(d)·|r_ij|  +  floor(d)  [+ FD band]

* ``u_compute``: the arithmetic's roundoff.  float64 and float32 compute in their own format;
  bfloat16/float16 results are expected from float32 arithmetic rounded once at the end (what
  fused kernels do; TransformerEngine even requires the bf16 result to equal the fp32
  reference rounded), so their u_compute is float32's.
* ``K_ABS = 8``: the closed form performs ~5 roundings per entry on quantities bounded by the
  scale (shift, exp, division by Σexp, product with Σm, difference with m) on top of the κ
  amplification; 8 leaves headroom for a different but correct order of operations (log_softmax
  then exp, as PyTorch does).  Measured: every correct implementation in the test suite stays
  below 1/4 of this bound (``tests/test_tolerances.py``).
* ``K_REL = 2`` (float32, float64): the final rounding to dtype d costs at most u(d)·|r|; 2
  allows one more rounding (e.g. the upstream-gradient product in the output dtype).
* bfloat16/float16, the relative part ``rel(d, mode)`` counts the roundings to d a *correct*
  kernel makes after its float32 arithmetic.  Each costs a factor (1 + u(d)) on |r|, each
  float32 product or quotient on the way (the upstream gradient g, 1/N) a factor
  (1 + u_compute)::

      rel = (1 + u)^k·(1 + u_compute)^2 − 1          (≈ k·u)

  ``--tolerance strict``: k = 1 — the gradient computed in float32 (times g) and rounded once
  when stored, as TransformerEngine requires ("the fp32 reference rounded").
  ``--tolerance rounded`` (the default): k = 2 — the gradient for g = 1 stored in the dtype
  and scaled by g in the dtype later (Liger stores dL/dz in its bfloat16 input during forward
  and multiplies by g in backward: round(round(G)·g)), or g/N rounded to the dtype before
  it multiplies p − y (PyTorch's nll_loss backward); and one more stored value, the
  **log-probabilities**: PyTorch's (CUDA) log_softmax saves its output ℓ = log p in the dtype for the backward, which computes exp(ℓ̃) with
  |ℓ̃ − ℓ| ≤ u·|ℓ|, so each p_ij errs relatively by e^{u·|log p_ij|} − 1.  That adds, per entry::

      STORED(i, j) = S_i·p_ij·(e^{u·|log p_ij|} − 1)          (S_i the row's parts' bound)

  which is at most u·S_i/e + O(u²) (p·|log p| ≤ 1/e) and vanishes at the target entry as
  p_t → 1 (|log p_t| ≈ 1 − p_t): it never admits Liger #1329 (p_t rounded to bfloat16 before
  subtracting 1, target entry off by 100 % at p_t = 0.999, 20 % at 0.99), whose error is
  ~u·p_t·S there, while its STORED is u·p_t·(1 − p_t)·S.  Nor does it admit a log-softmax
  that rounds its intermediates (x − max, the normaliser log Σ exp) to the dtype: rounding
  log Σ ≈ 1 − p_t at a confident row zeroes ℓ_t, which is #1329's error at the target entry —
  no per-entry bound can pass the one and fail the other.  PyTorch's CPU bf16/f16
  log_softmax does so (its output at p_t = 0.999 is exactly 0 in bfloat16); its CUDA kernel
  computes ℓ in float32 and rounds it once, which this bound admits.
  Measured (``tests/test_shipped_bugs.py``'s kernels, ``tests/candidates/shipped_bugs.py``;
  8 regimes × none/mean/sum × (8, 5), (32, 1000) × ignore_index or not, random g):
  Liger's arithmetic (G stored in the dtype, then × g there) reaches 0.60 of this bound in
  bf16, 0.59 in f16, and fails k = 1 (1.75×); PyTorch's CUDA arithmetic 0.74 / 0.72; Liger
  #1329 fails (up to 640×, 170× in ``target-prob``); PyTorch's CPU ``F.cross_entropy``
  fails where p_t is near 1 (bf16 58×, f16 17×) and, in bf16, by 1.2× at C = 1000 (its
  ℓ rounded two or three times: plain bf16 arithmetic, ``--tolerance native``).
* ``floor``: half the smallest subnormal spacing: entries below it round to zero legitimately
  (float16: 2^-25 ≈ 3e-8, the usual victim being p_j/N for tiny p_j).
* FD band: the finite-difference judge's own predicted error (``references.py``), added to
  every pair that involves ``finite_difference``.

With these, float64 flags a relative error of 1e-9 in any single entry larger than ~1e-5 of
the scale (normal regime, κ ≈ 8: bound ≈ 7e-15·scale); torch.autograd.gradcheck's defaults
(atol 1e-5, rtol 1e-3) cannot see errors below ~1e-3 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

K_ABS = 8.0
# ``--tolerance native`` (16-bit candidates only): also allow K_NATIVE times the largest error of
# the closed form computed with every intermediate in the dtype itself (analytic.gradient with
# native=True).  A kernel built from a framework's plain bf16/f16 ops rounds about as often as
# that closed form (~5 roundings per entry, one more in the mean's denominator); 4 is the
# margin of Liger-Kernel's rule (its error ≤ 4 × torch's own same-dtype error).
K_NATIVE = 4.0
#: the dtypes whose closed form the reference computes in float32 and rounds
LOW_PRECISION = ("bfloat16", "float16")
K_REL = 2.0
#: --tolerance mode → the roundings to the dtype a correct 16-bit kernel may make (docstring);
#: ``native`` and ``torch`` start from the default's bound
ROUNDINGS = {"strict": 1, "rounded": 2, "native": 2, "torch": 2}
DEFAULT_MODE = "rounded"


@dataclass(frozen=True)
class DtypeTolerance:
    u: float          # the format's unit roundoff: rounding of the result
    u_compute: float  # roundoff of the arithmetic that produced it
    floor: float      # half the smallest subnormal spacing


TABLE: dict[str, DtypeTolerance] = {
    "float64": DtypeTolerance(u=2.0**-53, u_compute=2.0**-53, floor=2.0**-1075),
    "float32": DtypeTolerance(u=2.0**-24, u_compute=2.0**-24, floor=2.0**-150),
    "bfloat16": DtypeTolerance(u=2.0**-8, u_compute=2.0**-24, floor=2.0**-134),
    "float16": DtypeTolerance(u=2.0**-11, u_compute=2.0**-24, floor=2.0**-25),
}


def condition(logits64: np.ndarray, temperature: float, softcap: float | None) -> float:
    """κ = 1 + max|v| + ln C over the finite transformed logits v (see the module docstring)."""
    z = logits64[np.isfinite(logits64)]
    return condition_of(float(np.max(np.abs(z), initial=0.0)), logits64.shape[-1], temperature,
                        softcap)


def condition_of(zmax: float, classes: int, temperature: float, softcap: float | None) -> float:
    """κ from the largest finite |z| (a streamed case finds it a block at a time)."""
    vmax = zmax / temperature
    if softcap:
        vmax = min(vmax, softcap)
    return 1.0 + vmax + math.log(max(classes, 1))


def rel(dtype: str, mode: str = DEFAULT_MODE) -> float:
    """The relative part of the bound: K_REL·u, or for 16-bit dtypes the roundings of
    ``mode`` (docstring: (1 + u)^k·(1 + u_compute)^2 − 1)."""
    t = TABLE[dtype]
    if dtype not in LOW_PRECISION:
        return K_REL * t.u
    return (1 + t.u) ** ROUNDINGS.get(mode, 2) * (1 + t.u_compute) ** 2 - 1


def stores_logp(dtype: str, mode: str = DEFAULT_MODE) -> bool:
    """Whether the bound has the STORED term (the log-probabilities kept in the dtype)."""
    return dtype in LOW_PRECISION and ROUNDINGS.get(mode, 2) >= 2


def stored(dtype: str, p: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """STORED(i, j) = S_i·p_ij·(e^{u·|log p_ij|} − 1) (docstring); ``p`` (N, C) the float64
    probabilities, ``parts`` (N,) the rows' S_i."""
    u = TABLE[dtype].u
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.log(p)
        np.abs(t, out=t)
        t *= u
        np.expm1(t, out=t)
        t *= p
    if not np.isfinite(np.sum(t)):         # a finite sum: every entry finite (a pass saved)
        t = np.where(np.isfinite(t), t, 0.0)
    t *= np.asarray(parts, np.float64)[:, None]
    return t


@dataclass(frozen=True)
class Tolerance:
    """|x − ref| ≤ atol + rtol·|ref|: a derived pair, or the user's where ``override`` put it
    (the one rule for --atol/--rtol: each replaces its side of the derived pair, a None keeps
    it; every judge — compare, streaming, relations, probes — asks here)."""

    atol: float
    rtol: float

    def override(self, user: tuple[float | None, float | None] | None) -> Tolerance:
        if user is None:
            return self
        return Tolerance(self.atol if user[0] is None else float(user[0]),
                         self.rtol if user[1] is None else float(user[1]))

    def allowed(self, ref) -> np.ndarray:
        return self.atol + self.rtol * np.abs(ref)


def allowed(dtype: str, kappa: float, scale: float, reference: np.ndarray,
            mode: str = DEFAULT_MODE, extra=0.0) -> tuple[np.ndarray, float, float]:
    """Per-entry allowed error, and the (atol, rtol) that make it up; ``extra``: the STORED
    term where it applies (``stored``; compare.py computes it from the inputs)."""
    t = TABLE[dtype]
    atol = K_ABS * t.u_compute * kappa * scale + t.floor
    rtol = rel(dtype, mode)
    return atol + rtol * np.abs(reference) + extra, atol, rtol


#: the lower-precision member of a pair decides the table entry
PRECISION_ORDER = ("float64", "float32", "float16", "bfloat16")


def coarser(a: str, b: str) -> str:
    return max(a, b, key=PRECISION_ORDER.index)


def loss_allowed(dtype: str, kappa: float, scale, n: int, reference) -> tuple[np.ndarray, float, float]:
    """Allowed error of a forward value (loss, z-loss) in dtype ``dtype`` against float64.

    Row i's cross-entropy ``Σ_c m_ic (lse_i − v_ic)`` is made of terms each at most
    ``Σm_i·κ`` in size (|lse − v| ≤ |lse| + |v| ≤ κ), so computing it errs by about
    ``K_ABS·u_compute·κ·Σm_i`` (the gradient's argument: a handful of roundings, κ the
    amplification); the z-loss ``COEF·lse²`` inherits lse's error u·κ times its derivative
    ``2·COEF·|lse|``.  So row i errs by at most ``K_ABS·u_compute·κ·P_i``, P_i = Σm_i +
    2·COEF·|lse_i|.  Reducing rows with factors a_i (1/D, 1/n, 1) adds the summation's error:
    a tree (pairwise) sum of N terms — what NumPy, PyTorch, JAX and GPU reductions do — errs by
    at most ``⌈log2 N⌉·u·Σ|terms|``, and |term_i| ≤ a_i·κ·P_i.  Hence::

        atol = K_ABS·u_compute·κ·(1 + ⌈log2 N⌉)·Σ_i a_i P_i     (reduction mean / sum)
             = K_ABS·u_compute·κ·P_i                           (none: per row)
        rtol = K_REL·u(dtype)                                  (the loss rounded to its dtype)

    ``scale`` is Σ a_i P_i (or P_i per row): errors are reported relative to it.  Float32,
    normal regime (κ ≈ 8, N = 6): atol ≈ 1.7e-5·scale, while a forward bug (a missing
    smoothing term, a wrong divisor) is off by a fraction of the loss itself.
    """
    t = TABLE[dtype]
    sums = 1 + math.ceil(math.log2(n)) if np.ndim(scale) == 0 and n > 1 else 1
    atol = K_ABS * t.u_compute * kappa * sums * np.asarray(scale, np.float64) + t.floor
    rtol = K_REL * t.u
    return atol + rtol * np.abs(np.asarray(reference, np.float64)), float(np.max(atol)), rtol


def lse_allowed(dtype: str, kappa: float, reference) -> tuple[np.ndarray, float, float]:
    """Allowed error of a returned lse: ``lse = m + log Σ exp(v − m)`` errs by about
    ``K_ABS·u_compute·κ`` (the same roundings as the softmax's argument, tolerances above),
    then ``K_REL·u`` relative for the rounding to the dtype it is returned in."""
    t = TABLE[dtype]
    atol = K_ABS * t.u_compute * kappa + t.floor
    rtol = K_REL * t.u
    return atol + rtol * np.abs(np.asarray(reference, np.float64)), atol, rtol


# --------------------------------------------------------------- fused linear cross-entropy
#: the G entries' error from an error δv in the transformed logits: p = exp(v − lse) moves by
#: a relative e^{2δv} − 1 ≤ 2δv(1 + δv) ≤ 3δv (δv ≤ 1/2: beyond it nothing is judged anyway),
#: the softcap chain factor 1 − t² by a relative 2|t|δv/S; K_FUSED = 4 covers both parts
#: with one rounding of headroom.
K_FUSED = 4.0
#: the softcap factor's cancellation: tanh's ~2u relative, squared (4u), the subtraction (1u),
#: doubled for a different formula (1/cosh², 4·e^{-2a}/(1 + e^{-2a})²)
K_CHAIN = 10.0


def fused_row_error(dtype: str, kappa: float, dv: np.ndarray, vocab: int, rows: int,
                    softcap: float | None, ranks: int = 1):
    """(e (N,), γ_V, γ_N, c): row i's relative error allowed in G = ∂L/∂z, the error of the
    two accumulations that follow, and the absolute error c of the softcap factor, for a fused
    kernel in ``dtype``; ``dv`` the logits' error (``fused_logit_error``).

    Derivation.  The kernel computes z_ij = x_i·W_j in its compute arithmetic: a length-H dot
    product errs by at most γ_H·Σ_k |x_ik||W_jk| ≤ γ_H·‖x_i‖₂·‖W_j‖₂ (Cauchy–Schwarz;
    γ_H = H·u_compute, the worst-case recursive-sum bound, which also covers blocked/pairwise
    orders), and a kernel that keeps its logits chunk in the input dtype (Liger) rounds once
    more: u(d)·|z_ij| ≤ u(d)·(‖x_i‖·‖W_j‖ + |b_j|).  So the transformed logits err by
    δv_i = (γ_H + u(d))·(‖x_i‖·max_j‖W_j‖ + max|b|) / (T/s) (the softcap's slope is ≤ 1).
    G_ij is then a sum of parts each ≤ size_ij = |α_i|(Σm_i·p_ij + m_ij) + 2|β_i|·COEF·|lse_i|·
    p_ij (times the chain factor): each part errs relatively by the closed form's own
    K_ABS·u_compute·κ (module docstring), K_FUSED·δv_i·(1 + 1/S) from the logits, and u(d)
    when G is rounded to the dtype before the matmuls (Liger casts it).  Then
    grad_x = G·W sums V products: γ_V = V·u_compute; grad_W = Gᵀ·x and grad_b = Σ_rows G sum
    N: γ_N = N·u_compute.  The reference (reference/fused.py) forms
    |grad_x − ref| ≤ Σ_j size_ij (e_i + γ_V) |W_jk|,  |grad_W − ref| ≤ Σ_i size_ij (e_i + γ_N) |x_ik|.
    The softcap factor 1 − t² cancels where |t| → 1 (a confident row under a small S): t =
    tanh(·) errs relatively by ~2u, t² by ~4u, so 1 − t² errs by up to c = K_CHAIN·u_compute
    absolutely — each part also errs by its size before the factor times c.
    On W vocab-parallel ranks (``ranks``) grad_x is W parts, each rank's sum over its rows of
    W, all-reduced: in float32/64 that is one more order of the same V-term sum (inside γ_V);
    a 16-bit kernel rounds each part to its dtype and sums the W of them in it, W·u(d) more.
    Float32, H = 1024, κ ≈ 12, ‖x‖‖W‖ ≈ 64: e ≈ 4·1024·6e-8·64 ≈ 1.6e-2 of the parts' size
    — a transposed, scaled, leaking or missing-chain-factor gradient is off by O(1).
    """
    t = TABLE[dtype]
    e = K_ABS * t.u_compute * kappa + K_FUSED * dv * (1 + (1 / softcap if softcap else 0)) \
        + (t.u if dtype in LOW_PRECISION else 0.0)
    gv = vocab * t.u_compute + (ranks * t.u if ranks > 1 and dtype in LOW_PRECISION else 0.0)
    return e, gv, rows * t.u_compute, K_CHAIN * t.u_compute


def fused_logit_error(dtype: str, hidden: int, xnorm: np.ndarray, wnorm: float, bmax: float,
                      divisor: float) -> np.ndarray:
    """δv_i of ``fused_row_error``: (γ_H + u(d))·(‖x_i‖·max_j‖W_j‖ + max|b|)/(T/s)."""
    t = TABLE[dtype]
    return (hidden * t.u_compute + t.u) * (xnorm * wnorm + bmax) / divisor


def fused_allowed(dtype: str, extra: float = 0.0) -> tuple[float, float]:
    """(rtol, const) of grad_x / grad_W / grad_b: an entry may err by the propagated bound
    (above) + rtol·|ref| (the final rounding K_REL·u(d)) + const (the subnormal floor and
    ``extra``: --tolerance torch's PyTorch error in the same dtype, Apple's criterion)."""
    t = TABLE[dtype]
    return K_REL * t.u, t.floor + extra


def fused_loss_allowed(dtype: str, kappa: float, loss_rows: np.ndarray, dv: np.ndarray,
                       reduction: str, extra: float = 0.0):
    """The loss of a fused kernel: ``loss_allowed``'s bound with P_i = ``loss_rows`` (a_i
    folded in), plus the logits' error: ce_i = Σm_i·lse_i − m_i·v_i moves by ≤ 2·Σm_i·δv_i
    (K_FUSED/2 per unit) — so K_FUSED·δv_i·P_i more per row.  Returns (bound, rtol, const)
    as ``fused_allowed``."""
    t = TABLE[dtype]
    n = loss_rows.shape[0]
    rows = (K_ABS * t.u_compute * kappa + K_FUSED * dv) * loss_rows
    if reduction != "none":
        rows = np.sum(rows) * (1 + (math.ceil(math.log2(n)) if n > 1 else 0))
    return rows, K_REL * t.u, t.floor + extra
