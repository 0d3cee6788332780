"""How the candidate is called: :class:`Settings` (picklable: a worker process receives it)
and :func:`settings`, which builds them from option values (the CLI's, the API's, a batch
group's) and validates each: one line and exit 2 for what cannot be.  ``--kwarg`` constants and
``--off-value`` replacements are parsed here (``signatures.pairs``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import SoftcheckError
from ..suite.config import BACKENDS, CALLING_CONVENTIONS, DEVICES, FRAMEWORKS, RETURN_ITEMS, SPLITS
from .frameworks import require
from .signatures import KERNEL_OPTIONS, pairs

#: what --rename maps: the options, and (--tensor-parallel) the process group's keyword
RENAMABLE = (*KERNEL_OPTIONS, "group")
#: the built-in --rank-setup functions (candidate/rank_setup.py)
RANK_SETUPS = ("megatron",)
#: PyTorch's deprecated arguments: never passed
NEVER = ("size_average", "reduce")
#: what a --tensor-parallel JAX TARGET is given besides the options (candidate/sharding.py)
SHARD_KEYWORDS = ("axis_name", "vocab_size")
#: the class weights' keyword of a fused kernel (``weight`` is the LM head's, as in Liger's
#: LigerFusedLinearCrossEntropyFunction; ``--rename weight=NAME`` overrides)
CLASS_WEIGHT = "ce_weight"
#: the options that can be off (``--off-value``): off = LossSpec's default value
SWITCHABLE = ("weight", "ignore_index", "label_smoothing", "temperature", "softcap", "z_loss",
              "logit_scale")


@dataclass(frozen=True)
class Settings:
    """How to call the candidate (picklable: a worker process receives it)."""

    convention: str = "grad"
    framework: str | None = None            # None: detected from the TARGET
    args: tuple[str, ...] | None = None     # positional order for autograd.Function.apply
    rename: tuple[tuple[str, str], ...] = ()
    returns: tuple[str, ...] | None = None  # None: ("loss",), split ("loss", "lse")
    backward: str | None = None             # split: the backward's TARGET
    device: str = "cpu"
    tensor_parallel: int = 1                # W > 1: W torch ranks / JAX devices (engine/ranks.py)
    backend: str = "gloo"
    split: str = "even"
    fused: bool = False                     # fused linear cross-entropy: fn(x, weight, target)
    kwargs: tuple[tuple[str, object], ...] = ()      # --kwarg: constants passed on every call
    off_values: tuple[tuple[str, object], ...] = ()  # --off-value: an option's value when off
    rank_setup: str | None = None           # --rank-setup FILE.py:fn | megatron (each rank)
    shape: str = "nv"                       # --shape btv: logits (B, T, V), targets (B, T)
    shift: int = 0                          # --shift 1: the labels unshifted (t scores t+1)
    autograd: bool = False                  # the TARGET is a torch.autograd.Function (resolve)

    @property
    def returned(self) -> tuple[str, ...]:
        if self.returns:
            return self.returns
        return ("loss", "lse") if self.convention == "split" else ("loss",)

    def kernel_name(self, option: str) -> str:
        default = CLASS_WEIGHT if self.fused and option == "weight" else option
        return dict(self.rename).get(option, default)

    def supplied(self, options=KERNEL_OPTIONS) -> set:
        """The keyword names a call passes when the function declares them (``options`` by
        their kernel names, the ``--kwarg`` constants; bias and shift for fused kernels, shift
        under --shift 1)."""
        out = {self.kernel_name(o) for o in options} - set(NEVER) | {k for k, _ in self.kwargs}
        return out | ({"bias", "shift"} if self.fused else {"shift"} if self.shift else set())



def settings(convention=None, framework=None, args=None, rename=(), returns=None,
             backward=None, device="cpu", tensor_parallel=1, backend="gloo",
             split="even", fused=False, kwarg=(), off_value=(), shape="nv",
             shift=0, rank_setup=None) -> Settings:
    """Validated :class:`Settings` from option values (comma strings or sequences)."""
    def listed(v):
        if v is None or isinstance(v, tuple):
            return v
        return tuple(x.strip() for x in (v.split(",") if isinstance(v, str) else v) if x.strip())

    conv = convention or "grad"
    for name, v, allowed in (("convention", conv, CALLING_CONVENTIONS),
                             ("framework", framework, FRAMEWORKS), ("device", device, DEVICES)):
        if v is not None and v not in allowed:
            raise SoftcheckError(f"--{name} must be one of {', '.join(allowed)}; got {v!r}")
    ren = []
    for r in (rename.split(";") if isinstance(rename, str) else rename or ()):
        if isinstance(r, tuple):
            ren.append(r)
            continue
        a, sep, b = str(r).partition("=")
        if not sep or a.strip() not in RENAMABLE or not b.strip().isidentifier():
            raise SoftcheckError(f"--rename {r!r}: write OPTION=kernel_name with OPTION one of "
                                 f"{', '.join(RENAMABLE)}")
        ren.append((a.strip(), b.strip()))
    ret = listed(returns)
    for x in ret or ():
        if x not in RETURN_ITEMS and x != "_":
            raise SoftcheckError(f"--returns: {x!r} is not one of {', '.join(RETURN_ITEMS)} "
                                 "(or _ for an item to skip)")
    if ret and ret[0] != "loss":
        raise SoftcheckError("--returns must start with loss (the first returned item)")
    if backward and conv != "split":
        raise SoftcheckError("--backward is the backward kernel of --convention split")
    if conv == "split" and not backward:
        raise SoftcheckError("--convention split needs --backward FILE.py:bwd "
                             "(bwd(logits, target, dloss, lse, **kw) -> dlogits)")
    tp = _tensor_parallel(tensor_parallel, backend, split, conv, framework)
    if fused and conv not in ("loss", "grad"):
        raise SoftcheckError(f"--convention {conv} is not available with --hidden (fused "
                             "linear cross-entropy): use loss or grad")
    if fused and tp > 1 and framework == "jax":
        raise SoftcheckError("--tensor-parallel with --hidden runs torch.distributed ranks "
                             "(each holding its rows of W): not --framework jax")
    kw = pairs(kwarg, "--kwarg")
    clash = [k for k, _ in kw if k in {b for _, b in ren} | set(KERNEL_OPTIONS) - set(dict(ren))]
    if clash:
        raise SoftcheckError(f"--kwarg {clash[0]}: softcheck passes that option itself (each "
                             "case's value); --kwarg is for the kernel's other keywords")
    off = _off_values(off_value, ren)
    if rank_setup is not None and (tp < 2 or framework == "jax"):
        raise SoftcheckError("--rank-setup runs in each torch.distributed rank: it needs "
                             "--tensor-parallel W >= 2 (not --framework jax)")
    if rank_setup is not None and rank_setup not in RANK_SETUPS and ":" not in rank_setup:
        raise SoftcheckError(f"--rank-setup {rank_setup!r}: write FILE.py:fn (called as "
                             f"fn(rank, world_size, group)) or one of {', '.join(RANK_SETUPS)}")
    return Settings(conv, framework, listed(args), tuple(ren), ret, backward, device,
                    tensor_parallel=tp, backend=backend or "gloo", split=split or "even",
                    fused=fused, kwargs=kw, off_values=off, shape=shape or "nv",
                    shift=int(shift or 0), rank_setup=rank_setup)


def _off_values(value, ren) -> tuple:
    """--off-value OPTION=VALUE (OPTION softcheck's name or its --rename'd kernel name)."""
    back = {b: a for a, b in ren}
    out = []
    for name, v in pairs(value, "--off-value"):
        o = back.get(name, name)
        if o not in SWITCHABLE:
            raise SoftcheckError(f"--off-value {name}: write OPTION=VALUE with OPTION one of "
                                 f"{', '.join(SWITCHABLE)} (the value the kernel takes when "
                                 "that option is off)")
        out.append((o, v))
    return tuple(out)


def _tensor_parallel(w, backend, split, conv: str, framework) -> int:
    """--tensor-parallel W (with --backend, --split) validated: torch installed (unless
    --framework jax: ``sharding.check`` at resolve), a loss or grad kernel, W >= 1."""
    w = 1 if w is None else int(w)
    if w < 1:
        raise SoftcheckError(f"--tensor-parallel must be at least 1; got {w}")
    for name, v, allowed in (("backend", backend, BACKENDS), ("split", split, SPLITS)):
        if v is not None and v not in allowed:
            raise SoftcheckError(f"--{name} must be one of {', '.join(allowed)}; got {v!r}")
    if w == 1:
        return 1
    if framework not in (None, "torch", "jax"):
        raise SoftcheckError(f"--tensor-parallel runs torch.distributed ranks or JAX shard_map: "
                             f"--framework {framework} cannot be checked so (use torch or jax)")
    if conv not in ("grad", "loss"):
        raise SoftcheckError(f"--tensor-parallel checks --convention loss or grad kernels; "
                             f"got --convention {conv}")
    if framework == "jax":
        return w
    require("torch", what="--tensor-parallel starts torch.distributed ranks")
    return w
