"""What to run: the suite's axes and options as a validated :class:`Config`, defined once.

Every option name, choice list and validation lives here; the CLI, the Python API and batch
files all end in :func:`config`, which names an unknown option with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

import numpy as np

from ..spec import CONVENTIONS, REDUCTIONS, TARGET_KINDS, LossSpec, SoftcheckError

DTYPES = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Regime:
    """One regime's facts, stated once: what its logits are (suite/inputs.py draws them, a
    block of rows at a time), whether a suite runs it unasked, whether a large case streams
    (is judged a block of rows at a time: engine/stream.py), and whether fused linear
    cross-entropy cases have it."""

    name: str
    what: str
    default: bool = True
    streams: bool = False
    fused: bool = False


REGIME_TABLE = (
    Regime("normal", "N(0, 4) logits", streams=True, fused=True),
    Regime("large", "groups at +1000, 0, -1000: exp overflows without the max shift"),
    Regime("tied", "every logit of a row equal (p = 1/C)"),
    Regime("confident", "the target logit 30 above the row's max (p_t -> 1); fused: rows "
           "aligned with their target's row of W", streams=True, fused=True),
    Regime("wrong", "another class 30 above the max (p_t -> 0)", streams=True),
    Regime("masked", "30 % of the logits -inf (fused: 20 % of the rows ignored)",
           streams=True, fused=True),
    Regime("spread", "row maxima from -1e4 to 1e4, scales from 1e-3 to 1e2 in one batch"),
    Regime("all-ignored", "every row ignored (with --ignore-index: the default suite adds it)",
           default=False),
    Regime("target-prob", "each row's target logit set so that p_t is 0.9 / 0.99 / 0.999 "
           "(rows cycling) in float64 before rounding: the precision of p_t - 1",
           default=False, streams=True),
    Regime("below-cap", "every logit far below -S (S the --softcap, 30 without one): padded "
           "lanes (-inf -> -S) weigh as much as real ones", default=False, streams=True),
)
REGIMES = tuple(r.name for r in REGIME_TABLE)
#: regimes a suite runs only when asked (--regime, or the kernel preset)
OPT_IN_REGIMES = tuple(r.name for r in REGIME_TABLE if not r.default)
#: regimes a large case streams (judged a block of rows at a time; the same numbers as whole)
STREAM_REGIMES = tuple(r.name for r in REGIME_TABLE if r.streams)
#: the regimes of fused linear cross-entropy (--hidden)
FUSED_REGIMES = tuple(r.name for r in REGIME_TABLE if r.fused)
#: --suite: default = the axes crossed; kernel = a preset list of cases at kernel shapes
#: (suite/kernel.py)
SUITES = ("default", "kernel")
#: --layout: how the candidate receives the logits; strided = a view buf[:, :C] of an
#: (N, C + LAYOUT_PAD) buffer (row stride != C), the padding filled with NaN; transposed
#: (--shape btv) = the (B, T, V) logits a view of a (T, B, V) buffer (TransformerEngine #2746)
LAYOUTS = ("contiguous", "strided", "transposed")
LAYOUT_PAD = 64
FD_METHODS = ("central", "richardson", "complex")
#: low-precision candidates (judge/tolerances.py derives each): rounded (the default) =
#: float32 arithmetic, the gradient rounded when stored and again when scaled by g, the
#: log-probabilities stored in the dtype; strict = float32 arithmetic + one final rounding;
#: native: rounded, also allowed 4× the error of the closed form computed in the dtype itself
#: torch (fused linear cross-entropy, --hidden): also allowed the error PyTorch makes in the
#: same dtype (Apple Cut Cross-Entropy's test criterion)
TOLERANCE_MODES = ("rounded", "strict", "native", "torch")
#: fused linear cross-entropy (--hidden): x as (N, H) or (B, T, H) (--shape btv)
FUSED_SHAPES = ("nv", "btv")
DEFAULT_BATCH = (1, 6)
#: how a candidate is called (candidate/conventions.py): grad(logits, target) -> dL/dlogits;
#: loss differentiated by softcheck; inplace: loss returned, gradient left in the logits;
#: split: fwd -> (loss, lse) and a separate bwd(logits, target, dloss, lse) -> dlogits
CALLING_CONVENTIONS = ("grad", "loss", "inplace", "split")
FRAMEWORKS = ("torch", "jax", "numpy")
#: --upstream-check: a torch autograd kernel also given logits an op upstream saved for its
#: backward (engine/saved_logits.py; Liger #272), or not
UPSTREAM_CHECKS = ("on", "off")
DEVICES = ("cpu", "cuda")
#: what a loss-returning candidate's tuple holds, in order (--returns)
RETURN_ITEMS = ("loss", "z_loss", "lse")
#: the options on how a TARGET is called (check's, and keys of a batch group with a target)
CALL_KEYS = ("convention", "framework", "args", "rename", "returns", "backward", "device",
             "tensor_parallel", "backend", "split", "kwarg", "off_value", "rank_setup")
#: the call keys that repeat (a list on the command line and in batch files)
REPEATED_CALL_KEYS = ("rename", "kwarg", "off_value")
#: --tensor-parallel: the torch.distributed backend of the ranks, and how the vocabulary is
#: split (even: W equal shards, V divisible by W; uneven: rank r starts at r*(V//W)+min(r, V%W);
#: JAX shard_map: V padded with -inf to W*ceil(V/W), see candidate/sharding.py)
BACKENDS = ("gloo", "nccl")
SPLITS = ("even", "uneven")


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise SoftcheckError(f"--dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return np.dtype(name)


#: --fd-budget: element evaluations the finite differences may spend on one case before they
#: sample columns (one entry of a swept column costs 2 real, 4 complex: see
#: reference/finite_difference.py); sized so a 4096×131072 case sweeps a sample in seconds
FD_BUDGET = 2.5e8


#: the LossSpec fields a Config holds under the same names (targets and reduction are axes)
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(LossSpec)
                    if f.name not in ("targets", "reduction"))


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
    weight_dtype: str | None = None  # the class weights' own dtype (None: the case's)
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    smoothing_convention: str = "uniform"
    temperature: float = 1.0
    softcap: float | None = None
    z_loss: float = 0.0
    mean_over: str | int = "weight"
    logit_scale: float = 1.0
    all_ignored: str = "nan"
    fd: str | None = None
    order: int = 1
    probes: int = 8
    fd_budget: float = FD_BUDGET
    tolerance: str = "rounded"
    upstream_check: str = "on"     # --upstream-check on|off (engine/saved_logits.py)
    atol: float | None = None      # the user's own tolerances (None: the derived one)
    rtol: float | None = None
    inputs: str | None = None      # FILE.npz of the user's arrays: one more case
    hidden: int | None = None      # fused linear cross-entropy: the hidden size H (--hidden)
    bias: bool = False             # ... with an LM-head bias (--bias)
    shape: str = "nv"              # ... x as (N, H) or (B, T, H) (--shape btv)
    shift: int = 0                 # ... targets shifted by this many positions (--shift 1)
    suite: str = "default"         # --suite default|kernel (suite/kernel.py)
    layout: str | None = None      # --layout contiguous|strided (None: contiguous, the
    #                                kernel preset's own choice per case)
    ignored_fraction: float | None = None   # exactly round(F·N) ignored rows (not N//3)
    huge: bool = False             # --huge: one more case with N·C > 2^31 (suite/kernel.py)
    group: str | None = None
    tag: str | None = None     # what tells apart cases of one batch group with the same axes

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def loss_spec(self, targets: str, reduction: str) -> LossSpec:
        """The case's loss: the axes' target kind and reduction, every other LossSpec field
        this Config's field of the same name (one list: LossSpec's)."""
        return LossSpec(targets=targets, reduction=reduction,
                        **{k: getattr(self, k) for k in SPEC_FIELDS})

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
        if self.weight_dtype is not None and (self.weight_dtype not in DTYPES
                                              or self.weight is None):
            raise SoftcheckError(f"--weight-dtype must be one of {', '.join(DTYPES)}, with "
                                 f"--weight; got {self.weight_dtype!r}")
        if self.upstream_check not in UPSTREAM_CHECKS:
            raise SoftcheckError(f"--upstream-check must be one of {', '.join(UPSTREAM_CHECKS)}"
                                 f"; got {self.upstream_check!r}")
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
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise SoftcheckError(f"--{name} must be a finite number >= 0, got {v!r}")
        if self.hidden is not None and (isinstance(self.hidden, bool) or not isinstance(
                self.hidden, (int, np.integer)) or self.hidden < 1):
            raise SoftcheckError(f"--hidden must be a whole number >= 1, got {self.hidden!r}")
        if self.shape not in FUSED_SHAPES:
            raise SoftcheckError(f"--shape must be one of {', '.join(FUSED_SHAPES)}; "
                                 f"got {self.shape!r}")
        if not isinstance(self.shift, (int, np.integer)) or not 0 <= self.shift <= 1:
            raise SoftcheckError(f"--shift must be 0 or 1, got {self.shift!r}")
        if self.hidden is None and (self.bias or self.tolerance == "torch"):
            raise SoftcheckError("--bias and --tolerance torch are for fused linear "
                                 "cross-entropy: give --hidden H")
        if self.hidden is None and (self.shape != "nv" or self.shift) and (
                (self.targets or ("index",)) != ("index",) or self.order != 1
                or self.layout == "strided" or self.inputs):
            raise SoftcheckError("--shape btv and --shift take class-index targets, "
                                 "first-order gradients, contiguous seeded logits (not "
                                 "--targets probs, --order 2, --layout strided, --inputs)")
        if self.layout == "transposed" and (self.hidden is not None or self.shape != "btv"
                                            or any(n % 2 for n in self.batch or (2,))):
            raise SoftcheckError("--layout transposed hands a --shape btv kernel its (B, T, V) "
                                 "logits as a view of a (T, B, V) buffer: it needs --shape "
                                 "btv and an even --batch (B = 2), not --hidden")
        if self.shift and self.ignore_index is None:
            raise SoftcheckError("--shift 1 needs --ignore-index (the last position of each "
                                 "sequence has no next token and is ignored)")
        if self.hidden is not None and (self.order != 1 or (self.targets or ("index",)) != (
                "index",)):
            raise SoftcheckError("--hidden (fused linear cross-entropy) takes class-index "
                                 "targets and first-order gradients only")
        if self.order not in (1, 2):
            raise SoftcheckError(f"--order must be 1 or 2, got {self.order!r}")
        if self.probes < 0:
            raise SoftcheckError(f"--probes must be >= 0, got {self.probes!r}")
        if self.suite not in SUITES:
            raise SoftcheckError(f"--suite must be one of {', '.join(SUITES)}; "
                                 f"got {self.suite!r}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise SoftcheckError(f"--layout must be one of {', '.join(LAYOUTS)}; "
                                 f"got {self.layout!r}")
        f = self.ignored_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float))
                              or not 0 <= f <= 1):
            raise SoftcheckError(f"--ignored-fraction must be a number in [0, 1], got {f!r}")
        if f is not None and self.ignore_index is None:
            raise SoftcheckError("--ignored-fraction needs --ignore-index (the value of the "
                                 "ignored rows' targets)")
        if self.hidden is not None and (self.layout == "strided" or self.huge):
            raise SoftcheckError("--layout and --huge are for logits cases: not with --hidden "
                                 "(x and W are passed contiguous)")
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


#: the axes of the suite: each takes one value or a sequence (crossed)
AXES = ("classes", "batch", "dtype", "targets", "reduction", "regime")
#: the options of ``run``/``check`` (and the keys of a batch group), in CLI order
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in ("group", "tag"))


def normalize_weight(value):
    """``--weight`` in its one form: ``None``, ``"random"`` or a tuple of floats (from a
    list, an array or a comma string)."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        if value == "random":
            return value
        try:
            return tuple(float(x) for x in value.split(","))
        except ValueError:
            raise SoftcheckError(f"--weight must be 'random' or a comma list of numbers, "
                                 f"got {value!r}") from None
    try:
        return tuple(float(x) for x in np.ravel(np.asarray(value, dtype=np.float64)))
    except (TypeError, ValueError):
        raise SoftcheckError(f"--weight must be 'random' or a list of numbers, "
                             f"got {value!r}") from None


def unknown_option(name: str, known=CONFIG_KEYS) -> str:
    """'unknown option X (did you mean Y?)' for any spelling (dashes or underscores)."""
    near = difflib.get_close_matches(str(name).replace("-", "_"), known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown option {name!r}{hint}"


def config(**options) -> Config:
    """A validated :class:`Config` from keyword options; an axis may be one value or a
    sequence.  The one validator behind the CLI, the Python API and batch files."""
    fields = {f.name for f in dataclasses.fields(Config)}
    for k in options:
        if k not in fields:
            raise SoftcheckError(unknown_option(k))
    for k in AXES:
        v = options.get(k)
        if v is not None:
            options[k] = tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else (v,)
    if "weight" in options:
        options["weight"] = normalize_weight(options["weight"])
    if isinstance(options.get("mean_over"), str) and options["mean_over"].isdigit():
        options["mean_over"] = int(options["mean_over"])     # --mean-over 4096: a global count
    return Config(**options).validate()
