"""Each case's inputs, drawn reproducibly from the seed per regime, or taken from user arrays."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ..spec import Inputs, LossSpec, SoftcheckError
from .cases import Case
from .config import STREAM_REGIMES, normalize_weight, numpy_dtype  # noqa: F401

def _rng(case: Case, stream: str) -> np.random.Generator:
    s = case.spec
    key = f"{stream}|{case.classes}|{case.batch}|{s.targets}|{s.reduction}|{case.regime}"
    return np.random.default_rng([case.seed, zlib.crc32(key.encode())])


def class_weights(classes: int, seed: int) -> np.ndarray:
    """``--weight random``: positive weights drawn from the seed, the same for every case of C."""
    rng = np.random.default_rng([seed, zlib.crc32(f"weight|{classes}".encode())])
    return rng.uniform(0.25, 2.0, classes)


def weight_array(weight, classes: int, seed: int, dtype) -> np.ndarray | None:
    """The class-weight array of a (normalized) ``--weight`` value, rounded to ``dtype``."""
    if weight is None:
        return None
    w = class_weights(classes, seed) if weight == "random" else np.asarray(weight, np.float64)
    return w.astype(dtype)


def weight_dtype(case: Case) -> np.dtype:
    """The class weights' dtype: ``--weight-dtype``, else the case's."""
    return numpy_dtype(getattr(case, "weight_dtype", None) or case.dtype)


def upstream_gradient(rng: np.random.Generator, reduction: str, upstream: str, n: int, dt):
    """The gradient flowing into the loss (see ``make_inputs``): a random non-uniform (N,)
    vector for none, else 1 or (``upstream="random"``) a random scalar, rounded to ``dt``."""
    if reduction == "none" and upstream != "one":
        return rng.uniform(0.25, 2.0, n).astype(dt).astype(np.float64)
    if reduction == "none":
        return np.ones(n)
    if upstream == "random":
        return np.float64(np.float64(rng.uniform(0.5, 2.0)).astype(dt))
    return np.float64(1.0)


def make_inputs(case: Case, *, upstream: str = "auto") -> Inputs:
    """Draw the case's inputs (float64, seed-determined) and round them to the case dtype.

    ``upstream`` (the gradient flowing into the loss): ``"auto"`` is 1 for mean/sum and a
    random non-uniform (N,) vector for none; ``"random"`` also makes the mean/sum scalar
    random (a candidate that declares ``grad_output``); ``"one"`` is all ones (one that
    does not).
    """
    user = getattr(case, "inputs", None)            # the user's arrays (suite/user.py)
    if user is not None:
        if upstream != "one":
            return user
        return dataclasses.replace(user, grad_output=np.ones_like(user.grad_output))
    pre = _prelude(case, upstream)
    n, c = case.batch, case.classes
    z = np.empty((n, c))
    q = None if case.spec.hard else np.empty((n, c))
    for k, (r0, r1) in enumerate(draw_blocks(n, c)):
        z[r0:r1], qb = _block(case, pre, k, r0, r1)
        if q is not None:
            q[r0:r1] = qb
    target = pre.target if q is None else q.astype(pre.dt)
    return Inputs(z.astype(pre.dt), target, pre.weight, pre.go, case.spec,
                  getattr(case, "pad", 0), getattr(case, "layout", "contiguous") == "transposed")


#: the seeded inputs' scheme (every report's environment records it).  2 (from 2026-12-07):
#: the targets, ignored rows and upstream gradient come from the case's generator, then each
#: block of DRAW_ELEMENTS logits from a generator of its own (seed, case key, block index),
#: so whole and streamed cases draw the same numbers and blocks can be drawn in parallel.
#: 1 drew everything from one sequential generator (other numbers for the same seed).
SEED_SCHEME = 2
#: logits per drawing block (rows: DRAW_ELEMENTS // C, at least one)
DRAW_ELEMENTS = 1 << 20
#: threads a large case's draw uses (numpy's generators release the GIL while they fill)
DRAW_THREADS = 2


def draw_blocks(n: int, c: int) -> list[tuple[int, int]]:
    """The drawing blocks of an (N, C) case: rows [r0, r1), DRAW_ELEMENTS logits each."""
    step = max(1, DRAW_ELEMENTS // max(c, 1))
    return [(r, min(n, r + step)) for r in range(0, n, step)]


@dataclasses.dataclass(frozen=True)
class _Prelude:
    """What the case's own generator draws before any logits: the would-be target classes
    y, the targets, the class weights, the upstream gradient, spread's two end rows."""

    y: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None
    go: object
    ends: tuple[int, int] | None
    dt: np.dtype


def _prelude(case: Case, upstream: str) -> _Prelude:
    s = case.spec
    n, c = case.batch, case.classes
    rng = _rng(case, "inputs")
    dt = numpy_dtype(case.dtype)
    ii = s.ignore_index
    # class targets (never the ignore index, unless the row is meant to be ignored)
    if ii is not None and 0 <= ii < c:
        y = rng.integers(0, c - 1, n) if c > 1 else np.full(n, ii)
        y = y + (y >= ii) if c > 1 else y          # every class but ii, in order
    else:
        y = rng.integers(0, c, n)
    ignored = _ignored(case, rng, n) if s.hard and ii is not None else np.zeros(n, bool)
    if getattr(case, "shift", 0) and ii is not None:   # --shift 1: a sequence's last position
        b, t = sequences(n, case.shape)                  # has no next token (ignored)
        ignored.reshape(b, t)[:, -1] = True
    target = np.where(ignored, ii if ii is not None else 0, y).astype(np.int64)
    ends = tuple(int(e) for e in rng.choice(n, 2, replace=False)) \
        if case.regime == "spread" and n > 1 else None
    go = upstream_gradient(rng, s.reduction, upstream, n, dt)
    return _Prelude(y, target, weight_array(s.weight, c, case.seed, weight_dtype(case)), go,
                    ends, dt)


def rounded_into(out: np.ndarray, x: np.ndarray) -> None:
    """``out[...] = x`` (float64 rounded to ``out``'s dtype once, to nearest even, as astype
    rounds).  bfloat16 goes through float32 rounded to odd (truncated, its last bit set where
    inexact: 24 bits keep the information a second rounding to 8 needs, so no double
    rounding), five times faster than ml_dtypes' own cast from float64."""
    if out.dtype.name != "bfloat16":
        out[...] = x
        return
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float32)
        back = y.astype(np.float64)
        bits = y.view(np.uint32)
        # rounded away from zero: one step back (sign and magnitude: the magnitude less 1)
        bits -= (np.abs(back) > np.abs(x)).view(np.uint8)
        bits |= (back != x).view(np.uint8)          # inexact: the odd neighbour
    out[...] = y


def _block(case: Case, pre: _Prelude, k: int, r0: int, r1: int):
    """Block k (rows r0..r1) of the case's float64 logits, from its own generator, and of its
    probability targets (None for index targets)."""
    s = case.spec
    c = case.classes
    key = f"logits|{c}|{case.batch}|{s.targets}|{s.reduction}|{case.regime}"
    rng = np.random.default_rng([case.seed, zlib.crc32(key.encode()), k])
    y = pre.y[r0:r1]
    z = _logits(case.regime, rng, r1 - r0, c, y, s.softcap, r0)
    if case.regime == "spread" and pre.ends is not None:
        for e, (off, sc) in zip(pre.ends, ((-1e4, 1e2), (1e4, 1e-3))):
            if r0 <= e < r1:
                z[e - r0] = off + sc * rng.standard_normal(c)
    if s.hard:
        return z, None
    rows = np.arange(r1 - r0)
    q = np.zeros((r1 - r0, c))
    q[rows, y] = 1.0
    if s.targets == "probs":
        q = rng.random((r1 - r0, c)) ** 3 + 1e-3
        q[rows, y] += np.max(q, -1)                  # the target class is the most likely
        q[~np.isfinite(z)] = 0.0
        q /= np.sum(q, -1, keepdims=True)
        odd = (r0 + rows) % 2 == 1                   # rows that do not sum to one
        q[odd] *= rng.uniform(0.5, 0.9, (int(np.sum(odd)), 1))
    return z, q


def sequences(n: int, shape: str = "btv") -> tuple[int, int]:
    """(B, T) of N rows: under --shape btv B = 2 when N is even (and > 1), else 1; under
    --shape nv one sequence (B = 1: what --shift counts positions along)."""
    b = 2 if shape == "btv" and n % 2 == 0 and n > 1 else 1
    return b, n // b


def unshifted(target: np.ndarray, b: int, t: int) -> np.ndarray:
    """The (B, T) labels a ``--shift 1`` kernel is given for the shifted targets ``target``
    (row (s, k) scored against label k + 1 of sequence s): labels[:, k + 1] = target[:, k];
    label 0 is no row's target (the first's kept)."""
    lab = np.asarray(target).reshape(b, t)
    return np.concatenate([lab[:, :1], lab[:, :-1]], 1)


def _ignored(case: Case, rng: np.random.Generator, n: int) -> np.ndarray:
    """The ignored rows (a case with an ignore index): every row (all-ignored), exactly
    round(F·N) of them (``ignored_fraction`` F), else N//3 (at least one when N > 1)."""
    ignored = np.zeros(n, bool)
    f = getattr(case, "ignored_fraction", None)
    if case.regime == "all-ignored":
        ignored[:] = True
    elif f is not None:
        ignored[rng.choice(n, round(f * n), replace=False)] = True
    elif n > 1:
        ignored[rng.choice(n, max(1, n // 3), replace=False)] = True
    return ignored


#: target-prob: the target probabilities the rows cycle through (p_t − 1 in the dtype)
TARGET_PROBS = (0.9, 0.99, 0.999)


def set_target_prob(z: np.ndarray, y: np.ndarray, row0: int = 0) -> None:
    """In place, float64: each row's target logit set so that softmax p_target is exactly
    TARGET_PROBS[row % 3] (z_t = log(q/(1−q)) + logsumexp_{j≠t} z_j); rows from ``row0``."""
    rows = np.arange(len(z))
    q = np.asarray(TARGET_PROBS)[(row0 + rows) % len(TARGET_PROBS)]
    z[rows, y] = -np.inf
    m = np.max(z, -1)
    rest = m + np.log(np.sum(np.exp(z - m[:, None]), -1))
    z[rows, y] = np.log(q / (1 - q)) + rest


#: below-cap's logits without a softcap (the kernel preset's cap)
BELOW_CAP_DEFAULT = 30.0


def below_cap(z: np.ndarray, softcap: float | None) -> np.ndarray:
    """In place: the normal draw z (N(0, 4)) moved to −S·(3 + z/4), within (−5S, −S) to 4σ:
    after S·tanh(·/S) 98 % of the lanes lie in (−S, −0.96·S), so p varies by a few × across
    lanes and a padded lane at exactly −S carries about as much as a real one.  Without
    a softcap S = BELOW_CAP_DEFAULT (then just logits shifted far down)."""
    s = softcap or BELOW_CAP_DEFAULT
    z *= -s / 4
    z -= 3 * s
    return z


def _logits(regime: str, rng: np.random.Generator, n: int, c: int, y: np.ndarray,
            softcap: float | None = None, row0: int = 0) -> np.ndarray:
    """Logits of each regime for n rows from ``row0``; ``y`` their (would-be) targets."""
    rows = np.arange(n)
    z = rng.standard_normal((n, c)) * 2.0
    if regime == "below-cap":
        below_cap(z, softcap)
    elif regime == "large":
        # groups at +1000, 0, -1000 (spread >= 1e3: exp overflows without the max shift);
        # every row has a top-group entry, so p spreads over several classes there.
        grp = rng.integers(-1, 2, (n, c)).astype(float)
        grp[rows, rng.integers(0, c, n)] = 1.0
        if c > 1:
            k = (np.argmax(grp, -1) + 1 + rng.integers(0, c - 1, n)) % c
            grp[rows, k] = -1.0
        z = 1000.0 * grp + rng.standard_normal((n, c))
    elif regime == "tied":
        z = np.repeat(rng.standard_normal((n, 1)), c, axis=1)
    elif regime == "confident":
        z[rows, y] = np.max(z, -1) + 30.0           # p_target -> 1 (1 - p ~ 1e-13)
    elif regime == "wrong" and c > 1:
        other = (y + 1 + rng.integers(0, c - 1, n)) % c
        z[rows, other] = np.max(z, -1) + 30.0       # p_target -> 0
    elif regime == "spread":
        z = _spread(rng, n, c)
    elif regime == "target-prob" and c > 1:
        set_target_prob(z, y, row0)
    elif regime == "masked" and c > 1:
        mask = rng.random((n, c)) < 0.3
        mask[rows, y] = False
        mask[rows, (y + 1) % c] = True              # at least one -inf per row
        z[mask] = -np.inf
    return z


def _spread(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Rows whose offsets and scales differ by orders of magnitude in one batch: row maxima
    from -1e4 to 1e4 (both ends present when N > 1), scales from 1e-3 to 1e2.  A softmax
    shifted by anything but each row's own maximum (the batch's, a column's) underflows to
    0/0 on the rows far below it, overflows on those far above (the batch's two end rows,
    at -1e4 and 1e4, are set by ``_block``)."""
    offset = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(0, 4, n)
    scale = 10.0 ** rng.uniform(-3, 2, n)
    return offset[:, None] + scale[:, None] * rng.standard_normal((n, c))


def make_inputs_from_arrays(logits, target, spec: LossSpec | None = None, *, weight=None,
                            grad_output=None, **options) -> Inputs:
    """Inputs from user arrays (the Python API): infers the target kind from its shape."""
    z = np.asarray(logits)
    if z.ndim != 2:
        raise SoftcheckError(f"logits must have shape (N, C), got {z.shape}")
    if z.dtype.kind != "f":
        z = z.astype(np.float64)
    t = np.asarray(target)
    if spec is None:
        if "targets" not in options:
            options["targets"] = "index" if t.ndim == 1 else "probs"
        options["weight"] = normalize_weight(weight)
        spec = LossSpec(**options)
    spec.validate(z.shape[1])
    n, c = z.shape
    if spec.hard:
        if t.shape != (n,) or t.dtype.kind not in "iu":
            raise SoftcheckError(f"index targets must be integers of shape ({n},), got {t.dtype} {t.shape}")
        bad = (t != (spec.ignore_index if spec.ignore_index is not None else -1)) & ((t < 0) | (t >= c))
        if np.any(bad):
            raise SoftcheckError(f"target {int(t[bad][0])} is out of range [0, {c})")
        t = t.astype(np.int64)
    elif t.shape != (n, c):
        raise SoftcheckError(f"probability targets must have shape ({n}, {c}), got {t.shape}")
    w = weight_array(spec.weight, c, 0, z.dtype)
    if grad_output is None:
        grad_output = np.ones(n) if spec.reduction == "none" else 1.0
    go = np.asarray(grad_output, np.float64)
    if spec.reduction == "none" and go.shape != (n,):
        raise SoftcheckError(f"grad_output for reduction none must have shape ({n},)")
    return Inputs(z, t if spec.hard else t.astype(z.dtype), w, go, spec)


def make_inputs_into(case: Case, out: np.ndarray, *, upstream: str = "auto",
                     ready=None) -> Inputs:
    """``make_inputs`` for a large case (a regime of STREAM_REGIMES), its logits written into
    ``out`` (N, C) of the case dtype one drawing block at a time by DRAW_THREADS threads:
    the same numbers (tests/test_stream.py), float64 only a few blocks at a time.
    ``ready(inputs, r0, r1)``: called here, in row order, once rows ..r1 hold their final
    values, so a reader can follow the draw."""
    from concurrent.futures import ThreadPoolExecutor

    pre = _prelude(case, upstream)
    n, c = case.batch, case.classes
    inputs = Inputs(out, pre.target, pre.weight, pre.go, case.spec, getattr(case, "pad", 0),
                    getattr(case, "layout", "contiguous") == "transposed")

    def fill(k: int, r0: int, r1: int) -> None:
        rounded_into(out[r0:r1], _block(case, pre, k, r0, r1)[0])

    blocks = draw_blocks(n, c)
    window: list = []
    with ThreadPoolExecutor(DRAW_THREADS) as pool:
        for k, (r0, r1) in enumerate(blocks):
            window.append((pool.submit(fill, k, r0, r1), r1))
            while window and (len(window) > 2 * DRAW_THREADS or k == len(blocks) - 1):
                done, upto = window.pop(0)
                done.result()
                if ready is not None:
                    ready(inputs, 0, upto)
    return inputs
