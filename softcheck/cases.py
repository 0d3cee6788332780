"""Cases: the suite's axes crossed, and each case's inputs drawn reproducibly from the seed."""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from dataclasses import dataclass, field

import numpy as np

from .spec import CONVENTIONS, REDUCTIONS, TARGET_KINDS, Inputs, LossSpec, SoftcheckError

DTYPES = ("float64", "float32", "bfloat16", "float16")
REGIMES = ("normal", "large", "tied", "confident", "wrong", "masked", "all-ignored")
FD_METHODS = ("central", "richardson", "complex")
#: strict: low-precision candidates held to float32 arithmetic + one final rounding;
#: native: also allowed 4× the error of the closed form computed in the dtype itself
TOLERANCE_MODES = ("strict", "native")
DEFAULT_BATCH = (1, 6)


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise SoftcheckError(f"--dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return np.dtype(name)


@dataclass(frozen=True)
class Config:
    """What to run: each axis a tuple of values (crossed), plus the loss options and knobs.

    An axis left at ``None`` takes its default suite values; a given one is pinned.
    """

    classes: tuple[int, ...] = (10,)
    batch: tuple[int, ...] | None = None
    dtype: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    reduction: tuple[str, ...] | None = None
    regime: tuple[str, ...] | None = None
    seed: int = 0
    weight: tuple[float, ...] | str | None = None
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    smoothing_convention: str = "uniform"
    temperature: float = 1.0
    softcap: float | None = None
    z_loss: float = 0.0
    fd: str | None = None
    order: int = 1
    probes: int = 8
    fd_budget: float = 2e9
    tolerance: str = "strict"
    group: str | None = None
    tag: str | None = None     # what tells apart cases of one batch group with the same axes

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def loss_spec(self, targets: str, reduction: str) -> LossSpec:
        return LossSpec(
            targets=targets,
            reduction=reduction,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            smoothing_convention=self.smoothing_convention,
            temperature=self.temperature,
            softcap=self.softcap,
            z_loss=self.z_loss,
        )

    def validate(self) -> Config:
        for name in ("classes", "batch"):
            for v in getattr(self, name) or ():
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                    raise SoftcheckError(f"--{name} must be a whole number >= 1, got {v!r}")
        for name, allowed in (
            ("dtype", DTYPES),
            ("targets", TARGET_KINDS),
            ("reduction", REDUCTIONS),
            ("regime", REGIMES),
        ):
            for v in getattr(self, name) or ():
                if v not in allowed:
                    raise SoftcheckError(
                        f"--{name} must be one of {', '.join(allowed)}; got {v!r}"
                    )
        if self.smoothing_convention not in CONVENTIONS:
            raise SoftcheckError(
                f"--smoothing-convention must be one of {', '.join(CONVENTIONS)}; "
                f"got {self.smoothing_convention!r}"
            )
        if self.fd is not None and self.fd not in FD_METHODS:
            raise SoftcheckError(f"--fd must be one of {', '.join(FD_METHODS)}; got {self.fd!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise SoftcheckError(f"--seed must be a whole number >= 0, got {self.seed!r}")
        if self.tolerance not in TOLERANCE_MODES:
            raise SoftcheckError(f"--tolerance must be one of {', '.join(TOLERANCE_MODES)}; "
                                 f"got {self.tolerance!r}")
        if self.order not in (1, 2):
            raise SoftcheckError(f"--order must be 1 or 2, got {self.order!r}")
        if self.probes < 0:
            raise SoftcheckError(f"--probes must be >= 0, got {self.probes!r}")
        if self.regime and "all-ignored" in self.regime and self.ignore_index is None:
            raise SoftcheckError("--regime all-ignored needs --ignore-index")
        if self.regime and "masked" in self.regime and self.label_smoothing > 0:
            raise SoftcheckError(
                "--regime masked with --label-smoothing: smoothing puts mass on the -inf "
                "logits, so the loss is +inf; drop one of the two"
            )
        for c in self.classes:
            for t in self.targets or ("index",):
                self.loss_spec(t, "mean").validate(c)
        return self


@dataclass(frozen=True)
class Case:
    """One check: sizes, dtype, target kind, reduction, regime, seed, and the loss options."""

    classes: int
    batch: int
    dtype: str
    regime: str
    seed: int
    spec: LossSpec
    group: str | None = None
    fd: str | None = None
    order: int = 1
    probes: int = 8
    fd_budget: float = 2e9
    tag: str | None = None
    tolerance: str = "strict"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        s = self.spec
        name = f"C{self.classes}-B{self.batch}-{self.dtype}-{s.targets}-{s.reduction}-{self.regime}"
        return f"{name}[{self.tag}]" if self.tag else name

    def params(self) -> dict:
        d = {
            "classes": self.classes,
            "batch": self.batch,
            "dtype": self.dtype,
            "targets": self.spec.targets,
            "reduction": self.spec.reduction,
            "regime": self.regime,
            "seed": self.seed,
        }
        d.update({k: v for k, v in self.spec.to_dict().items() if k not in d})
        d["order"] = self.order
        d["tolerance"] = self.tolerance
        return d


def default_regimes(cfg: Config) -> tuple[str, ...]:
    regimes = [r for r in REGIMES if r != "all-ignored"]
    if cfg.ignore_index is not None:
        regimes.append("all-ignored")
    return tuple(regimes)


def suite(cfg: Config, *, targets=None, reduction=None, dtypes=None) -> tuple[list[Case], list[str]]:
    """Cross the axes; return the cases and a note for each combination left out (and why).

    ``targets``/``reduction``/``dtypes`` give the defaults of unpinned axes (``check`` fixes
    target kind and reduction, and narrows the dtypes).
    """
    cfg.validate()
    axes = dict(
        classes=cfg.classes,
        batch=cfg.batch or DEFAULT_BATCH,
        dtype=cfg.dtype or dtypes or DTYPES,
        targets=cfg.targets or targets or TARGET_KINDS,
        reduction=cfg.reduction or reduction or REDUCTIONS,
        regime=cfg.regime or default_regimes(cfg),
    )
    cases, skipped = [], []
    for c, n, dt, tk, red, reg in itertools.product(*axes.values()):
        why = _skip_reason(cfg, tk, reg)
        note = f"{tk}/{reg}: {why}" if why else None
        if not note and (why := _dtype_skip(cfg, dt)):
            note = f"{dt}: {why}"
        if note:
            if note not in skipped:
                skipped.append(note)
            continue
        spec = cfg.loss_spec(tk, red)
        cases.append(
            Case(c, n, dt, reg, cfg.seed, spec, cfg.group, cfg.fd, cfg.order, cfg.probes,
                 cfg.fd_budget, cfg.tag, cfg.tolerance)
        )
    return cases, skipped


def _dtype_skip(cfg: Config, dtype: str) -> str | None:
    """A gradient the dtype cannot hold is not a disagreement: entries reach ~1/T (times the
    class weights, ≤ 2 when random), beyond float16's 65504 for T below ~3e-5."""
    import ml_dtypes

    w = max(cfg.weight) if isinstance(cfg.weight, tuple) and cfg.weight else 2.0
    bound = 2.0 * max(w, 1.0) / cfg.temperature
    top = float(ml_dtypes.finfo(numpy_dtype(dtype)).max)
    if bound > top / 4:
        return (f"gradient entries up to ~{bound:.1e} (1/T = {1 / cfg.temperature:.1e}) "
                f"overflow {dtype} (max {top:.4g})")
    return None


def _skip_reason(cfg: Config, targets: str, regime: str) -> str | None:
    if regime == "all-ignored" and targets != "index":
        return "probability targets have no ignored rows"
    if targets != "index" and cfg.ignore_index is not None and cfg.ignore_index >= 0:
        return "PyTorch allows only a negative ignore index with probability targets"
    if regime == "masked" and cfg.label_smoothing > 0:
        return "label smoothing puts mass on -inf logits (loss +inf)"
    return None


# --------------------------------------------------------------------------------------
# Inputs


def _rng(case: Case, stream: str) -> np.random.Generator:
    s = case.spec
    key = f"{stream}|{case.classes}|{case.batch}|{s.targets}|{s.reduction}|{case.regime}"
    return np.random.default_rng([case.seed, zlib.crc32(key.encode())])


def class_weights(classes: int, seed: int) -> np.ndarray:
    """``--weight random``: positive weights drawn from the seed, the same for every case of C."""
    rng = np.random.default_rng([seed, zlib.crc32(f"weight|{classes}".encode())])
    return rng.uniform(0.25, 2.0, classes)


def make_inputs(case: Case, *, upstream: str = "auto") -> Inputs:
    """Draw the case's inputs (float64, seed-determined) and round them to the case dtype.

    ``upstream`` (the gradient flowing into the loss): ``"auto"`` is 1 for mean/sum and a
    random non-uniform (N,) vector for none; ``"random"`` also makes the mean/sum scalar
    random (a candidate that declares ``grad_output``); ``"one"`` is all ones (one that
    does not).
    """
    s = case.spec
    n, c = case.batch, case.classes
    rng = _rng(case, "inputs")
    dt = numpy_dtype(case.dtype)
    ii = s.ignore_index
    # class targets (never the ignore index, unless the row is meant to be ignored)
    choices = np.array([k for k in range(c) if k != ii] if ii is not None and 0 <= ii < c
                       else np.arange(c))
    y = choices[rng.integers(0, len(choices), n)] if len(choices) else np.full(n, ii)
    ignored = np.zeros(n, bool)
    if s.hard and ii is not None:
        if case.regime == "all-ignored":
            ignored[:] = True
        elif n > 1:
            ignored[rng.choice(n, max(1, n // 3), replace=False)] = True
    z = _logits(case.regime, rng, n, c, y)
    if s.hard:
        target = np.where(ignored, ii if ii is not None else 0, y).astype(np.int64)
    else:
        q = np.zeros((n, c))
        q[np.arange(n), y] = 1.0
        if s.targets == "probs":
            q = rng.random((n, c)) ** 3 + 1e-3
            q[np.arange(n), y] += np.max(q, -1)      # the target class is the most likely
            q[~np.isfinite(z)] = 0.0
            q /= np.sum(q, -1, keepdims=True)
            q[1::2] *= rng.uniform(0.5, 0.9, (len(q[1::2]), 1))  # rows that do not sum to one
        target = q.astype(dt)
    weight = None
    if isinstance(s.weight, str):
        weight = class_weights(c, case.seed).astype(dt)
    elif s.weight is not None:
        weight = np.asarray(s.weight, np.float64).astype(dt)
    if s.reduction == "none" and upstream != "one":
        go = rng.uniform(0.25, 2.0, n).astype(dt).astype(np.float64)
    elif s.reduction == "none":
        go = np.ones(n)
    elif upstream == "random":
        go = np.float64(np.float64(rng.uniform(0.5, 2.0)).astype(dt))
    else:
        go = np.float64(1.0)
    return Inputs(z.astype(dt), target, weight, go, s)


def _logits(regime: str, rng: np.random.Generator, n: int, c: int, y: np.ndarray) -> np.ndarray:
    """Logits of each regime; ``y`` are the (would-be) target classes."""
    rows = np.arange(n)
    z = rng.standard_normal((n, c)) * 2.0
    if regime == "large":
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
    elif regime == "masked" and c > 1:
        mask = rng.random((n, c)) < 0.3
        mask[rows, y] = False
        mask[rows, (y + 1) % c] = True              # at least one -inf per row
        z[mask] = -np.inf
    return z


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
        if weight is not None and not isinstance(weight, str):
            options["weight"] = tuple(float(x) for x in np.ravel(weight))
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
    w = None
    if isinstance(spec.weight, tuple):
        w = np.asarray(spec.weight, np.float64).astype(z.dtype)
    elif spec.weight == "random":
        w = class_weights(c, 0).astype(z.dtype)
    if grad_output is None:
        grad_output = np.ones(n) if spec.reduction == "none" else 1.0
    go = np.asarray(grad_output, np.float64)
    if spec.reduction == "none" and go.shape != (n,):
        raise SoftcheckError(f"grad_output for reduction none must have shape ({n},)")
    return Inputs(z, t if spec.hard else t.astype(z.dtype), w, go, spec)
