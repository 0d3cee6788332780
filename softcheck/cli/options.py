"""Click declarations of the options; choices and names come from the library's constants."""

from __future__ import annotations

import click

from ..candidate.call import DEFAULT_TIMEOUT
from ..engine.results import DETAILS
from ..spec import ALL_IGNORED, CONVENTIONS, MEAN_OVER, REDUCTIONS, TARGET_KINDS
from ..suite.config import (BACKENDS, CALL_KEYS, CALLING_CONVENTIONS, CONFIG_KEYS, DEVICES,
                            DTYPES, FD_BUDGET, FD_METHODS, FRAMEWORKS, FUSED_SHAPES, LAYOUT_PAD,
                            LAYOUTS, REGIMES, RETURN_ITEMS, SPLITS, SUITES, TOLERANCE_MODES,
                            UPSTREAM_CHECKS)

#: --debug is read by the command group (app.Group) from the command line; commands ignore it
DEBUG = click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks.")


class CommaList(click.ParamType):
    """One value or a comma-separated list (an axis of the suite)."""

    def __init__(self, kind=str):
        self.kind = kind
        self.name = f"{kind.__name__}[,{kind.__name__}...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            try:
                out.append(self.kind(part))
            except ValueError:
                self.fail(f"{part!r} is not a valid {self.kind.__name__}", param, ctx)
        return tuple(out)


class WeightType(click.ParamType):
    name = "random|w1,w2,..."

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple) or value == "random":
            return value
        try:
            return tuple(float(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is neither 'random' nor a comma list of numbers", param, ctx)


REPORT_OPTIONS = [
    click.option("--json", "json_path", type=str, default=None,
                 help="Write the JSON report to PATH ('-': stdout, nothing else there)."),
    click.option("--junit", "junit_path", type=str, default=None, help="Write JUnit XML to PATH."),
    click.option("--markdown", "markdown_path", type=str, default=None,
                 help="Write a Markdown summary to PATH."),
    click.option("--json-detail", type=click.Choice(DETAILS), default=None,
                 help="summary: per case the verdict, max errors and reasons (no worst-entry "
                      "lists for passing cases); full: everything.  [default: summary for "
                      "batch, full otherwise]"),
    click.option("-v", "--verbose", is_flag=True,
                 help="Also print every case's row (the summary lists groups and failures)."),
    click.option("--fail-fast", is_flag=True, help="Stop at the first failing case."),
    click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
                 help="Worker processes for independent cases (used when the work repays "
                      "their start-up, ~1.5 s each)."),
    click.option("--devices", type=click.IntRange(1), default=None,
                 help="The number of XLA host devices JAX starts with (CPU; a GPU backend uses "
                      "its own devices).  [default: JAX's]"),
    DEBUG,
]


def report_options(fn):
    for o in reversed(REPORT_OPTIONS):
        fn = o(fn)
    return fn


def suite_options(fn):
    """The options of ``run``, ``check`` (and the keys of batch files)."""
    opts = [
        click.option("--classes", type=CommaList(int), default="10", show_default=True,
                     help="Number of classes C (comma list: one value per case)."),
        click.option("--batch", type=CommaList(int), help="Batch sizes N [default: 1,6]."),
        click.option("--dtype", type=CommaList(str),
                     help=f"{', '.join(DTYPES)} [run default: all; check: float64,float32]."),
        click.option("--targets", type=CommaList(str),
                     help=f"{', '.join(TARGET_KINDS)} [run default: all; check: index]."),
        click.option("--reduction", type=CommaList(str),
                     help=f"{', '.join(REDUCTIONS)} [run default: all; check: mean]."),
        click.option("--regime", type=CommaList(str),
                     help=f"{', '.join(REGIMES)} [default: all but all-ignored, "
                          "target-prob (p_target 0.9/0.99/0.999 by row) and below-cap "
                          "(logits far below -softcap)]."),
        click.option("--suite", type=click.Choice(SUITES), default="default",
                     show_default=True,
                     help="kernel: a preset of cases at kernel shapes (V 50264, 65537, 128256, "
                          "262144 with and without softcap 30; bfloat16 target-prob; 30% "
                          "ignored rows; a strided logits view), 256 rows.  Pinned options act "
                          "on it: --batch and --dtype replace the preset's, --classes and "
                          "--regime keep the cases listed."),
        click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                     help=f"strided: the candidate gets logits as buf[:, :C] of an (N, C+"
                          f"{LAYOUT_PAD}) buffer (row stride != C, padding NaN), numpy and "
                          "torch alike.  [default: contiguous; the kernel preset: its own]"),
        click.option("--ignored-fraction", type=click.FloatRange(0, 1), default=None,
                     help="With --ignore-index: exactly round(F*N) rows ignored [default: "
                          "N//3]."),
        click.option("--huge", is_flag=True,
                     help="Add one case with N*C > 2^31 elements (16400 x 131072 bfloat16: "
                          "int32 offsets overflow); refused (exit 2) when the memory model "
                          "says it does not fit."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of every input."),
        click.option("--weight", type=WeightType(), default=None,
                     help="Class weights: 'random' or C comma-separated values."),
        click.option("--weight-dtype", type=click.Choice(DTYPES), default=None,
                     help="The class weights' own dtype (e.g. float32 with bfloat16 logits) "
                          "[default: the case's dtype]."),
        click.option("--ignore-index", type=int, default=None,
                     help="Targets equal to it contribute nothing (PyTorch ignore_index)."),
        click.option("--label-smoothing", type=float, default=0.0, show_default=True,
                     help="EPS in [0, 1]."),
        click.option("--smoothing-convention", type=click.Choice(CONVENTIONS),
                     default="uniform", show_default=True,
                     help="uniform: EPS/C on every class (PyTorch); others: EPS/(C-1) off-target."),
        click.option("--temperature", type=float, default=1.0, show_default=True,
                     help="Logits divided by T (> 0)."),
        click.option("--softcap", type=float, default=None, help="Logits -> S*tanh(z/S) (> 0)."),
        click.option("--z-loss", type=float, default=0.0, show_default=True,
                     help="Adds COEF*lse^2 per non-ignored row (>= 0)."),
        click.option("--mean-over", default="weight", show_default=True,
                     help=f"The mean's denominator: {'|'.join(MEAN_OVER)}|K: weight = Σ w[y] "
                          "of non-ignored rows (PyTorch), valid = their count even with weights "
                          "(chainer), batch = all N rows, K = a global count (n_items)."),
        click.option("--all-ignored", type=click.Choice(ALL_IGNORED), default="nan",
                     show_default=True,
                     help="The loss of a mean over zero non-ignored rows: nan (0/0, PyTorch) "
                          "or zero (Liger-Kernel, TransformerEngine)."),
        click.option("--logit-scale", type=float, default=1.0, show_default=True,
                     help="Logits multiplied by S (> 0) before the softcap, beside --temperature."),
        click.option("--fd", type=click.Choice(FD_METHODS), default=None,
                     help="Finite-difference method [default: most accurate affordable]."),
        click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
                     help="2: check Hessian-vector products."),
        click.option("--probes", type=click.IntRange(0), default=8, show_default=True,
                     help="Directional probes when FD covers a subset of columns."),
        click.option("--upstream-check", type=click.Choice(UPSTREAM_CHECKS), default="on",
                     show_default=True,
                     help="A torch autograd kernel (a loss, an autograd.Function) is also "
                          "given logits that relu, upstream, saved for its backward: a kernel "
                          "that writes into them behind autograd's back corrupts that op's "
                          "gradient (Liger-Kernel #272)."),
        click.option("--tolerance", type=click.Choice(TOLERANCE_MODES), default="rounded",
                     show_default=True,
                     help="bfloat16/float16 candidates: rounded = float32 arithmetic, the "
                          "gradient rounded when stored and again when scaled by the upstream "
                          "gradient, log-probabilities stored in the dtype; strict = float32 "
                          "arithmetic and one final rounding (fused kernels); native = also 4x "
                          "the error of the closed form computed in the dtype itself (plain "
                          "framework ops); torch (--hidden only) = also PyTorch's own error in "
                          "the dtype (unfused F.linear + F.cross_entropy)."),
        click.option("--fd-budget", type=float, default=FD_BUDGET, show_default=True,
                     help="Element evaluations FD may spend per case before sampling columns."),
        click.option("--atol", type=float, default=None,
                     help="Your own absolute tolerance: replaces the derived one for the pairs "
                          "under check (recorded beside it in the report)."),
        click.option("--rtol", type=float, default=None,
                     help="Your own relative tolerance (|x - ref| <= atol + rtol*|ref|)."),
        click.option("--hidden", type=int, default=None,
                     help="Fused linear cross-entropy: TARGET(x, weight, target) with hidden "
                          "size H; --classes is the vocabulary V, --batch the rows N."),
        click.option("--bias", is_flag=True, help="--hidden: an LM-head bias (V,)."),
        click.option("--shape", type=click.Choice(FUSED_SHAPES), default="nv",
                     show_default=True, help="logits as (N, V) with (N,) targets, or (B, T, V) "
                                             "with (B, T) (--hidden: x as (N, H) or (B, T, H))."),
        click.option("--shift", type=click.IntRange(0, 1), default=0, show_default=True,
                     help="1 = causal shift: target holds the labels and position t is scored "
                          "against label t+1 (the last position ignored; a (B, T-1) loss is "
                          "accepted); needs --ignore-index."),
        click.option("--inputs", type=str, default=None,
                     help="FILE.npz with logits, target (optional weight, grad_output): judged "
                          "as one more case beside the seeded suite."),
    ] + REPORT_OPTIONS
    for o in reversed(opts):
        fn = o(fn)
    return fn


def call_options(fn):
    """How ``check`` calls TARGET: the calling convention and what it needs."""
    opts = [
        click.option("--convention", type=click.Choice(CALLING_CONVENTIONS), default=None,
                     help="grad: fn returns dL/dlogits; loss: fn returns the loss, softcheck "
                          "differentiates it; inplace: loss returned, gradient left in the "
                          "logits; split: TARGET is fwd -> (loss, lse), --backward the bwd "
                          "[default: detected (autograd.Function: inplace, custom_vjp: loss), "
                          "else grad]."),
        click.option("--framework", type=click.Choice(FRAMEWORKS), default=None,
                     help="Tensors TARGET receives [default: from its module's imports]."),
        click.option("--args", "args", default=None,
                     help="autograd.Function.apply's positional order: logits,target,OPTION,"
                          "...,name=value [default: forward's parameter names]."),
        click.option("--rename", multiple=True,
                     help="OPTION=kernel_name: pass softcheck's option under the kernel's "
                          "keyword (repeatable), e.g. z_loss=lse_square_scale; group=NAME: "
                          "the process group's keyword (--tensor-parallel)."),
        click.option("--kwarg", multiple=True,
                     help="NAME=VALUE: a constant keyword on every call (repeatable; VALUE a "
                          "Python literal, else a string), e.g. impl=torch_compile."),
        click.option("--off-value", multiple=True,
                     help="OPTION=VALUE: what the kernel takes when OPTION is off (repeatable), "
                          "e.g. softcap=0 [default: softcheck's own: None, 0, 1]."),
        click.option("--returns", default=None,
                     help=f"The returned tuple's items in order, from {', '.join(RETURN_ITEMS)} "
                          "(_ skips one) [default: loss; split: loss,lse]."),
        click.option("--backward", default=None,
                     help="split: FILE.py:bwd computing bwd(logits, target, dloss, lse, **kw)."),
        click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
                     help="Where torch/JAX inputs are created (results brought back)."),
        click.option("--tensor-parallel", type=click.IntRange(1), default=1, show_default=True,
                     help="W: run TARGET on W torch.distributed ranks, each given its column "
                          "shard of the logits, the global targets and group= (needs "
                          "softcheck[torch]); --framework jax: inside jax.shard_map over W "
                          "host devices, given axis_name=."),
        click.option("--backend", type=click.Choice(BACKENDS), default="gloo",
                     show_default=True, help="torch.distributed backend of the ranks."),
        click.option("--rank-setup", default=None,
                     help="FILE.py:fn called once in each rank as fn(rank, world_size, group) "
                          "before the first call, or megatron (megatron-core's parallel_state "
                          "initialised with tensor-parallel size W)."),
        click.option("--split", type=click.Choice(SPLITS), default="even", show_default=True,
                     help="even: V/W columns per rank; uneven: rank r starts at "
                          "r*(V//W)+min(r, V%W) (JAX: V padded with -inf to W*ceil(V/W))."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def to_settings(kw: dict):
    """The call options of ``check``, validated by the library (candidate/conventions);
    ``--hidden`` makes TARGET a fused linear cross-entropy kernel."""
    from ..candidate.conventions import settings

    return settings(**{k: kw.pop(k) for k in CALL_KEYS}, fused=kw.get("hidden") is not None,
                    shape=kw.get("shape"), shift=kw.get("shift"))


def to_config(kw: dict):
    """The suite options of a command's keywords, validated by the library (suite.config)."""
    from ..suite.config import config

    return config(**{k: kw[k] for k in CONFIG_KEYS})


def candidate_options(fn):
    """How a candidate is called (``check`` and ``batch``): ``CallPolicy``'s fields."""
    opts = [
        click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT,
                     show_default=True,
                     help="Seconds one call of the candidate may take before its process is "
                          "stopped and the case fails (0: no limit; a batch group's 'timeout' "
                          "overrides it)."),
        click.option("--repeat", type=click.IntRange(1), default=2, show_default=True,
                     help="Calls per case on identical inputs (determinism; 1: off)."),
        click.option("--nondet-tol", type=click.FloatRange(min=0), default=None,
                     help="Difference allowed between repeated calls [default: the case's "
                          "absolute tolerance]."),
        click.option("--memory-limit", default=None, metavar="SIZE",
                     help="Memory the candidate's process may allocate, such as 8G or 512M "
                          "(0: none); past it an allocation fails and so does the case "
                          "[default: 3/4 of the machine's memory]."),
        click.option("--in-process", is_flag=True,
                     help="Call the candidate in softcheck's own process (for pdb and "
                          "profilers): no isolation, a timeout only stops waiting."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def to_policy(kw: dict):
    """The candidate options of a command's keywords (popped) as a CallPolicy."""
    from ..candidate import CallPolicy

    from ..candidate.sandbox import parse_size

    memory = kw.pop("memory_limit")
    return CallPolicy(kw.pop("timeout"), kw.pop("repeat"), kw.pop("nondet_tol"),
                      not kw.pop("in_process"),
                      None if memory is None else parse_size(memory))
