"""``--suite kernel``: a preset list of cases at the shapes CE kernels run at, and ``--huge``.

The preset (each case's ``tag`` says which regime it is; rows ``KERNEL_BATCH`` unless
``--batch``):

* ``padded-lanes``: V ∈ KERNEL_VOCABS, float32, normal, without and with ``--softcap 30``
  (``softcap30``).  None is a power of two, so a kernel's last vocabulary block has padded
  lanes; one that pads with −inf and then applies the softcap turns them into −30: mass leaks.
* ``softcap30-below``: float32, V = 50264, regime ``below-cap`` (every logit far below −S):
  after the softcap the real lanes sit just above −S, so padded lanes turned into −S carry
  as much probability as real ones — at cap 30 with normal logits they leak only ~e⁻³⁰.
* ``target-prob``: bfloat16, V = 128256, rows whose target probability is 0.9 / 0.99 / 0.999
  (the precision of p_t − 1).
* ``ignored-30%``: float32, V = 128256, exactly round(0.3·N) rows ignored (ignore_index −100
  unless ``--ignore-index`` gives another).
* ``strided``: float32, V = 50264, the candidate gets ``buf[:, :V]`` of an (N, V + 64) buffer.
* ``transposed`` (only with ``--shape btv``): float32, V = 50264, the (B, T, V) logits a view
  of a (T, B, V) buffer (TransformerEngine #2746: wrong on such a view).

With ``--hidden H`` (a fused kernel) the same cases at H, but ``strided`` and
``softcap30-below`` (no logits to lay out or place) are dropped with a note, and
``target-prob`` becomes ``confident`` (rows aligned with their target's row of W: p_t → 1).

How the options a user pins act on the preset:

* ``--batch`` replaces KERNEL_BATCH (a list: every case once per value);
* ``--dtype`` replaces each case's dtype (a list: every case once per dtype);
* ``--classes`` keeps the preset cases whose V is listed (none listed: an error); the default
  (10) keeps them all;
* ``--regime`` keeps the preset cases of the listed regimes (normal, below-cap, target-prob);
* ``--softcap S`` gives the ``softcap30`` cases S instead of 30; ``--layout strided`` makes
  every case strided; ``--targets``/``--reduction`` and the loss options apply to every case.

``--huge`` adds one case (any suite): HUGE_SHAPE bfloat16 (or each dtype ``--dtype`` pins),
N·V > 2^31 elements, past int32 flat offsets; the memory model refuses it (exit 2) on a
machine that cannot hold it.
"""

from __future__ import annotations

from ..spec import SoftcheckError
from .cases import Case, check_suite, suite
from .config import Config

#: vocabularies of real models, none a power of two (GPT-2/OPT 50264 padded, 65537 = 2^16+1,
#: Llama-3 128256, Gemma 262144 = 2^18: the one power of two, kept for its size)
KERNEL_VOCABS = (50264, 65537, 128256, 262144)
#: the preset's rows (256 × 262144 = 67M logits: streamed)
KERNEL_BATCH = 256
KERNEL_SOFTCAP = 30.0
#: the --huge case: 16400 × 131072 = 2 149 580 800 > 2^31 elements, bfloat16
HUGE_SHAPE = (16400, 131072)
HUGE_DTYPE = "bfloat16"


def _preset(cfg: Config) -> list[tuple[str, dict]]:
    """(tag, Case fields) of the preset, before the user's pins."""
    cap = cfg.softcap if cfg.softcap is not None else KERNEL_SOFTCAP
    out = []
    for v in KERNEL_VOCABS:
        out.append(("padded-lanes", dict(classes=v, dtype="float32", regime="normal",
                                         softcap=None)))
        out.append((f"softcap{cap:g}", dict(classes=v, dtype="float32", regime="normal",
                                            softcap=cap)))
    out.append((f"softcap{cap:g}-below", dict(classes=50264, dtype="float32",
                                              regime="below-cap", softcap=cap)))
    out.append(("target-prob", dict(classes=128256, dtype="bfloat16", regime="target-prob")))
    ii = cfg.ignore_index if cfg.ignore_index is not None else -100
    out.append(("ignored-30%", dict(classes=128256, dtype="float32", regime="normal",
                                    ignore_index=ii, ignored_fraction=0.3)))
    out.append(("strided", dict(classes=50264, dtype="float32", regime="normal",
                                layout="strided")))
    if cfg.shape == "btv" and cfg.hidden is None and not any(
            n % 2 for n in cfg.batch or (KERNEL_BATCH,)):    # a (B, T, V) kernel: TE #2746
        out.append(("transposed", dict(classes=50264, dtype="float32", regime="normal",
                                       layout="transposed")))
    return out


#: the fused preset (--hidden H): the logits preset's cases, but those a fused case cannot be
#: (a strided logits view: x and W arrive contiguous; below-cap logits; target-prob rows),
#: with the confident regime (rows aligned with their target's row of W) in bfloat16 for
#: target-prob's p_t → 1
FUSED_NOT = {"strided": "x and W are passed contiguous: there is no logits view to stride",
             "below-cap": "fused cases draw x and W, not logits placed below the cap"}


def _fused(preset: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], list[str]]:
    out, skipped = [], []
    for tag, f in preset:
        why = FUSED_NOT.get(f.get("layout")) or FUSED_NOT.get(f["regime"])
        if why:
            skipped.append(f"kernel/{tag} dropped with --hidden: {why}")
        elif f["regime"] == "target-prob":
            out.append(("confident", dict(f, regime="confident")))
        else:
            out.append((tag, f))
    return out, skipped


def _not_for(candidate, tag: str, f: dict, cfg: Config) -> str | None:
    """Why a preset case does not apply to ``candidate`` (None: it does): a kernel that
    declares no softcap keyword (or, an autograd.Function, has none in its --args) cannot be
    asked for one (it would compute without it); --tensor-parallel ranks get column shards,
    not the strided or transposed view; a --shape btv kernel gets the transposed view, not
    the strided rows.  An option the user pins (--softcap, --layout) keeps its cases."""
    if f.get("layout") == "strided" and cfg.shape == "btv" and cfg.layout is None:
        return (f"kernel/{tag} dropped: --shape btv takes contiguous rows; a (B, T, V) kernel "
                "gets kernel/transposed instead")
    if candidate is None:
        return None
    st = getattr(candidate, "settings", None)
    takes = getattr(candidate, "takes", None)
    name = st.kernel_name("softcap") if hasattr(st, "kernel_name") else "softcap"
    args = getattr(st, "args", None)                # an autograd.Function: its .apply order
    declares = (name in args) if args else (takes is None or takes(name))
    if f.get("softcap") and cfg.softcap is None and not declares:
        return (f"kernel/{tag} (V = {f['classes']}) dropped: the function takes no softcap "
                "keyword (declare one to be checked with the softcap)")
    ranks = getattr(st, "tensor_parallel", None) or 1
    if f.get("layout") in ("strided", "transposed") and cfg.layout is None and ranks > 1:
        return (f"kernel/{tag} dropped: --tensor-parallel ranks get their column shards, "
                f"not the {f['layout']} view")
    return None


def kernel_cases(cfg: Config, *, check: bool = False, candidate=None
                 ) -> tuple[list[Case], list[str]]:
    """The preset's cases with the user's pins applied (see the module's docstring), less
    those that do not apply to ``candidate`` (each named in the skipped notes)."""
    preset, skipped = _preset(cfg), []
    if cfg.hidden is not None:
        preset, skipped = _fused(preset)
    if cfg.classes != (10,):
        preset = [p for p in preset if p[1]["classes"] in cfg.classes]
        if not preset:
            raise SoftcheckError(f"--suite kernel: --classes keeps the preset's vocabularies "
                                 f"listed ({', '.join(map(str, KERNEL_VOCABS))}); none of "
                                 f"{', '.join(map(str, cfg.classes))} is one")
    if cfg.regime:
        preset = [p for p in preset if p[1]["regime"] in cfg.regime]
        if not preset:
            raise SoftcheckError("--suite kernel: --regime keeps the preset's cases of the "
                                 "regimes listed (normal, below-cap, target-prob; with "
                                 "--hidden normal, confident); none is one")
    cases = []
    for tag, f in preset:
        why = _not_for(candidate, tag, f, cfg)
        if why:
            skipped.append(why)
            continue
        base = cfg.replace(
            classes=(f["classes"],), batch=cfg.batch or (KERNEL_BATCH,),
            dtype=cfg.dtype or (f["dtype"],), regime=(f["regime"],),
            softcap=f.get("softcap", cfg.softcap),
            ignore_index=f.get("ignore_index", cfg.ignore_index),
            ignored_fraction=f.get("ignored_fraction", cfg.ignored_fraction),
            layout=cfg.layout or f.get("layout"), suite="default", huge=False,
            tag=f"{cfg.tag}/{tag}" if cfg.tag else f"kernel/{tag}")
        found, skip = check_suite(base)     # index targets, mean unless pinned, in run too
        cases += found
        skipped += [s for s in skip if s not in skipped]
    return cases, skipped


def huge_cases(cfg: Config) -> list[Case]:
    """The --huge case: HUGE_SHAPE in HUGE_DTYPE (or in each dtype ``--dtype`` pins), regime
    normal, index targets, mean."""
    n, v = HUGE_SHAPE
    base = cfg.replace(classes=(v,), batch=(n,), dtype=cfg.dtype or (HUGE_DTYPE,),
                       regime=("normal",), targets=("index",), reduction=("mean",),
                       suite="default", huge=False,
                       tag=f"{cfg.tag}/huge-int32" if cfg.tag else "huge-int32")
    return check_suite(base)[0]


def select(cfg: Config, *, check: bool = False, candidate=None) -> tuple[list[Case], list[str]]:
    """The cases of ``cfg``'s suite (``check``: the check suite's defaults; ``candidate``:
    the kernel preset leaves out what does not apply to it), ``--huge``'s case last."""
    if cfg.suite == "kernel":
        cases, skipped = kernel_cases(cfg, check=check, candidate=candidate)
    else:
        cases, skipped = (check_suite if check else suite)(cfg)
    if cfg.huge:
        cases = cases + huge_cases(cfg)
    return cases, skipped

