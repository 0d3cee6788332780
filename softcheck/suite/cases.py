"""Cases: the suite's axes crossed (with the combinations left out, and why)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..spec import REDUCTIONS, TARGET_KINDS, LossSpec
from .config import (DEFAULT_BATCH, DTYPES, FD_BUDGET, FUSED_REGIMES, LAYOUT_PAD,
                     OPT_IN_REGIMES, REGIMES, Config, numpy_dtype)


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
    fd_budget: float = FD_BUDGET
    tag: str | None = None
    tolerance: str = "rounded"
    atol: float | None = None       # the user's tolerances (--atol/--rtol), None: derived
    rtol: float | None = None
    hidden: int | None = None       # fused linear cross-entropy (classes = V, batch = N)
    bias: bool = False
    shape: str = "nv"
    shift: int = 0
    layout: str = "contiguous"      # strided: the candidate gets buf[:, :C] of (N, C + pad)
    ignored_fraction: float | None = None   # exactly round(F·N) ignored rows (not N//3)
    weight_dtype: str | None = None         # the class weights' own dtype (None: dtype)
    upstream_check: str = "on"              # engine/saved_logits.py

    @property
    def pad(self) -> int:
        """Elements of padding after each row of the candidate's logits (0: contiguous)."""
        return LAYOUT_PAD if self.layout == "strided" else 0

    @property
    def name(self) -> str:
        s = self.spec
        name = f"C{self.classes}-B{self.batch}-{self.dtype}-{s.targets}-{s.reduction}-{self.regime}"
        if self.hidden is not None:
            name = f"FLCE-H{self.hidden}-" + name + ("-bias" if self.bias else "") + (
                "-btv" if self.shape == "btv" else "") + (f"-shift{self.shift}" if self.shift
                                                          else "")
        elif self.shape == "btv" or self.shift:
            name += ("-btv" if self.shape == "btv" else "") + (f"-shift{self.shift}"
                                                               if self.shift else "")
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
        if self.atol is not None or self.rtol is not None:
            d["user_tolerance"] = {"atol": self.atol, "rtol": self.rtol}
        if self.hidden is not None:
            d["fused"] = {"hidden": self.hidden, "bias": self.bias, "shape": self.shape,
                          "shift": self.shift}
        elif self.shape != "nv" or self.shift:
            d["sequence"] = {"shape": self.shape, "shift": self.shift}
        if self.layout == "strided":
            d["layout"] = {"kind": self.layout, "row_stride": self.classes + self.pad}
        elif self.layout != "contiguous":
            d["layout"] = {"kind": self.layout}
        if self.ignored_fraction is not None:
            d["ignored_fraction"] = self.ignored_fraction
        if self.weight_dtype is not None:
            d["weight_dtype"] = self.weight_dtype
        return d




#: the Case fields taken from the Config of the same name (the axes and spec aside)
CASE_KNOBS = ("group", "fd", "order", "probes", "fd_budget", "tag", "tolerance", "atol", "rtol",
              "hidden", "bias", "shape", "shift", "ignored_fraction", "weight_dtype",
              "upstream_check")


def default_regimes(cfg: Config) -> tuple[str, ...]:
    if cfg.hidden is not None:
        return FUSED_REGIMES if cfg.ignore_index is not None else FUSED_REGIMES[:2]
    regimes = [r for r in REGIMES if r not in OPT_IN_REGIMES]
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
        cases.append(Case(c, n, dt, reg, cfg.seed, spec, layout=cfg.layout or "contiguous",
                          **{k: getattr(cfg, k) for k in CASE_KNOBS}))
    return cases, skipped


def _dtype_skip(cfg: Config, dtype: str) -> str | None:
    """A gradient the dtype cannot hold is not a disagreement: entries reach ~1/T (times the
    class weights, ≤ 2 when random), beyond float16's 65504 for T below ~3e-5."""
    import ml_dtypes

    w = max(cfg.weight) if isinstance(cfg.weight, tuple) and cfg.weight else 2.0
    bound = 2.0 * max(w, 1.0) * cfg.logit_scale / cfg.temperature
    top = float(ml_dtypes.finfo(numpy_dtype(dtype)).max)
    if bound > top / 4:
        return (f"gradient entries up to ~{bound:.1e} (1/T = {1 / cfg.temperature:.1e}) "
                f"overflow {dtype} (max {top:.4g})")
    return None


def _skip_reason(cfg: Config, targets: str, regime: str) -> str | None:
    if cfg.hidden is not None:
        if regime not in FUSED_REGIMES:
            return f"not a fused linear cross-entropy regime ({', '.join(FUSED_REGIMES)})"
        if regime == "masked" and cfg.ignore_index is None:
            return "the masked regime (20 % ignored rows) needs --ignore-index"
        return None
    if regime == "all-ignored" and targets != "index":
        return "probability targets have no ignored rows"
    if regime == "target-prob" and targets != "index":
        return "the target probability is set through a class index"
    if targets != "index" and cfg.ignore_index is not None and cfg.ignore_index >= 0:
        return "PyTorch allows only a negative ignore index with probability targets"
    if regime == "masked" and cfg.label_smoothing > 0:
        return "label smoothing puts mass on -inf logits (loss +inf)"
    return None


def check_suite(cfg: Config) -> tuple[list[Case], list[str]]:
    """The cases a candidate is checked on: target kind ``index`` and reduction ``mean``
    unless pinned (they describe the function, they are not varied), dtypes float64 and
    float32 unless given."""
    return suite(cfg, targets=("index",), reduction=("mean",), dtypes=("float64", "float32"))
