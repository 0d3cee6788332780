"""The loss options every stage shares, validated once.

A :class:`LossSpec` says *which* softmax cross-entropy is meant: PyTorch
``F.cross_entropy`` options (weight, ignore_index, reduction, label_smoothing, probability
targets) plus what fused LLM kernels add (smoothing convention, temperature, soft-capping,
z-loss).  It holds no arrays of logits; a :class:`Case` pairs it with concrete inputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

REDUCTIONS = ("mean", "sum", "none")
TARGET_KINDS = ("index", "onehot", "probs")
CONVENTIONS = ("uniform", "others")
#: the mean's denominator (--mean-over): weight = Σ w[y] over non-ignored rows (PyTorch; the
#: count without weights), valid = the non-ignored count even with weights (chainer, mygrad),
#: batch = every row, ignored ones included; a whole number = a fixed global count (n_items)
MEAN_OVER = ("weight", "valid", "batch")
#: the loss of a mean over zero non-ignored rows (--all-ignored): nan = 0/0, as PyTorch;
#: zero = 0, as Liger-Kernel and TransformerEngine return (their gradient is 0 either way)
ALL_IGNORED = ("nan", "zero")
#: the loss options a candidate may declare as keywords (``check``'s calling convention)
OPTION_NAMES = ("weight", "ignore_index", "reduction", "label_smoothing", "smoothing_convention",
                "temperature", "softcap", "z_loss", "grad_output", "mean_over", "logit_scale")


class SoftcheckError(ValueError):
    """An invocation the check cannot run: the CLI turns it into one line and exit code 2."""


#: temperature and softcap: the FD error bounds (references.py) use T⁵ and S⁻⁴ in float64
SCALE_RANGE = (1e-30, 1e30)


@dataclass(frozen=True)
class LossSpec:
    """Which cross-entropy: every option of the composed loss (see ``losses.reference_rows``).

    ``weight`` is a tuple of C floats, the string ``"random"`` (drawn per case from the seed),
    or ``None``.  ``ignore_index`` is ``None`` when no target is ignored.
    """

    targets: str = "index"
    reduction: str = "mean"
    weight: tuple[float, ...] | str | None = None
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    smoothing_convention: str = "uniform"
    temperature: float = 1.0
    softcap: float | None = None
    z_loss: float = 0.0
    mean_over: str | int = "weight"
    logit_scale: float = 1.0
    all_ignored: str = "nan"

    @property
    def divisor(self) -> float:
        """The logits are multiplied by ``logit_scale`` and divided by ``temperature``, before
        the softcap: one division by T/S (what every stage computes with)."""
        return self.temperature / self.logit_scale

    def replace(self, **changes) -> LossSpec:
        return dataclasses.replace(self, **changes)

    @property
    def hard(self) -> bool:
        """Integer class targets (``index``); otherwise a dense (N, C) target matrix."""
        return self.targets == "index"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(self.weight, tuple):
            d["weight"] = list(self.weight)
        return d

    def validate(self, classes: int | None = None) -> LossSpec:
        """Raise :class:`SoftcheckError` naming the bad option and what is allowed."""
        _choice("targets", self.targets, TARGET_KINDS)
        _choice("reduction", self.reduction, REDUCTIONS)
        _choice("smoothing-convention", self.smoothing_convention, CONVENTIONS)
        eps = self.label_smoothing
        if not (_finite(eps) and 0.0 <= eps <= 1.0):
            raise SoftcheckError(f"--label-smoothing must lie in [0, 1], got {eps!r}")
        if not (_finite(self.temperature) and self.temperature > 0):
            raise SoftcheckError(f"--temperature must be a finite number > 0, got {self.temperature!r}")
        if not SCALE_RANGE[0] <= self.temperature <= SCALE_RANGE[1]:
            raise SoftcheckError(f"--temperature must lie in [1e-30, 1e30], got "
                                 f"{self.temperature!r} (the finite-difference error bounds "
                                 "take T to the 5th power, which must stay within float64)")
        if self.softcap is not None and not (_finite(self.softcap) and self.softcap > 0):
            raise SoftcheckError(f"--softcap must be a finite number > 0, got {self.softcap!r}")
        if self.softcap is not None and not SCALE_RANGE[0] <= self.softcap <= SCALE_RANGE[1]:
            raise SoftcheckError(f"--softcap must lie in [1e-30, 1e30], got {self.softcap!r} "
                                 "(the finite-difference error bounds take (1/S)^4, which must "
                                 "stay within float64)")
        if not (_finite(self.logit_scale) and self.logit_scale > 0) or not (
                SCALE_RANGE[0] <= self.divisor <= SCALE_RANGE[1]):
            raise SoftcheckError(f"--logit-scale must be a finite number > 0 with "
                                 f"--temperature / --logit-scale in [1e-30, 1e30], got "
                                 f"{self.logit_scale!r}")
        _choice("all-ignored", self.all_ignored, ALL_IGNORED)
        m = self.mean_over
        if not (m in MEAN_OVER or (isinstance(m, int) and not isinstance(m, bool) and m >= 1)):
            raise SoftcheckError(f"--mean-over must be one of {', '.join(MEAN_OVER)} or a whole "
                                 f"number >= 1 (a global count), got {m!r}")
        if not (_finite(self.z_loss) and self.z_loss >= 0):
            raise SoftcheckError(f"--z-loss must be a finite number >= 0, got {self.z_loss!r}")
        if self.ignore_index is not None and not self.hard and self.ignore_index >= 0:
            raise SoftcheckError(
                f"--ignore-index {self.ignore_index} is not allowed with --targets "
                f"{self.targets}: probability targets accept only a negative ignore index "
                "(as PyTorch)"
            )
        if isinstance(self.weight, str) and self.weight != "random":
            raise SoftcheckError(f"--weight must be 'random' or a comma list, got {self.weight!r}")
        if isinstance(self.weight, tuple):
            w = self.weight
            if not all(_finite(x) and x >= 0 for x in w):
                raise SoftcheckError("--weight values must be finite and >= 0")
            if classes is not None and len(w) != classes:
                raise SoftcheckError(
                    f"--weight has {len(w)} values but --classes is {classes}: give one per class"
                )
        if (
            classes is not None
            and classes < 2
            and eps > 0
            and self.smoothing_convention == "others"
        ):
            raise SoftcheckError(
                "--smoothing-convention others spreads EPS over the C-1 other classes: "
                "it needs --classes >= 2"
            )
        return self


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SoftcheckError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class Inputs:
    """Concrete arrays for one case, already rounded to the case dtype.

    ``logits`` and float ``target``/``weight`` hold values representable in ``dtype``; the
    float64 references use their exact float64 upcasts (``*64`` properties).
    ``grad_output`` is the upstream gradient: a scalar for mean/sum, (N,) for none.
    """

    logits: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None
    grad_output: np.ndarray
    spec: LossSpec
    #: the candidate's logits arrive as a view of rows padded by this many elements (row
    #: stride C + pad, --layout strided); the references see the same values, contiguous
    pad: int = 0
    #: --layout transposed: a --shape btv candidate's (B, T, V) logits are a view of a
    #: (T, B, V) buffer (candidate/sequences.py)
    transposed: bool = False

    @property
    def logits64(self) -> np.ndarray:
        return np.asarray(self.logits, dtype=np.float64)

    @property
    def target64(self) -> np.ndarray:
        t = self.target
        return t if self.spec.hard else np.asarray(t, dtype=np.float64)

    @property
    def weight64(self) -> np.ndarray | None:
        return None if self.weight is None else np.asarray(self.weight, dtype=np.float64)

    @property
    def valid(self) -> np.ndarray:
        """Rows that contribute (not ignored): shape (N,) bool."""
        if self.spec.hard and self.spec.ignore_index is not None:
            return self.target != self.spec.ignore_index
        return np.ones(self.logits.shape[0], dtype=bool)

    def float64(self) -> Inputs:
        """The same inputs in float64 (exact): what the references differentiate (made once
        per Inputs: the references memoize their results on it, see ``memo``)."""
        if "_float64" not in self.__dict__:
            t = self.target if self.spec.hard else self.target64
            self.__dict__["_float64"] = dataclasses.replace(
                self, logits=self.logits64, target=t, weight=self.weight64)
        return self.__dict__["_float64"]

    def memo(self, key, compute):
        """``compute()`` once per Inputs and key: a case's float64 references (the closed form,
        the row statistics) are asked for by several judges.  Results are made read-only, so
        a caller that would change one in place fails loudly instead of corrupting the next."""
        cache = self.__dict__.setdefault("_memo", {})
        if key not in cache:
            value = compute()
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            cache[key] = value
        return cache[key]


@dataclass(frozen=True)
class FusedInputs:
    """Fused linear cross-entropy inputs: logits z = x·Wᵀ (+ bias) are never stored.

    ``x`` (N, H) hidden states, ``lm_weight`` W (V, H), ``bias`` (V,) or None, ``target`` (N,)
    class indices; ``shape`` (B, T) when the candidate sees x as (B, T, H) (``--shape btv``).
    """

    x: np.ndarray
    lm_weight: np.ndarray
    bias: np.ndarray | None
    target: np.ndarray
    weight: np.ndarray | None
    grad_output: np.ndarray
    spec: LossSpec
    shape: tuple[int, int] | None = None
    labels: np.ndarray | None = None     # --shift 1: the unshifted labels the candidate gets

    @property
    def valid(self) -> np.ndarray:
        if self.spec.ignore_index is not None:
            return self.target != self.spec.ignore_index
        return np.ones(self.target.shape[0], dtype=bool)

    def float64(self) -> FusedInputs:
        def up(a):
            return None if a is None else np.asarray(a, dtype=np.float64)

        return dataclasses.replace(self, x=up(self.x), lm_weight=up(self.lm_weight),
                                   bias=up(self.bias), weight=up(self.weight))

    def logits_inputs(self) -> Inputs:
        """The materialized float64 logits as ordinary Inputs (small cases and tests only)."""
        f = self.float64()
        z = f.x @ f.lm_weight.T + (0.0 if f.bias is None else f.bias)
        return Inputs(z, self.target, f.weight, np.asarray(self.grad_output, np.float64),
                      self.spec)
