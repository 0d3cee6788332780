"""A catalog of plausible wrong gradients, from how real cross-entropy code goes wrong.

``softcheck mutants`` checks each one under the options where its bug shows, and the correct
implementation under the same options: the proof that the checker catches what it should and
nothing else.  Each mutant is an ordinary candidate ``fn(logits, target, **kw)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..reference.analytic import softmax
from ..spec import OPTION_NAMES
from . import convention_mutants as cm
from . import fused_mutants as fm


def correct(logits, target, **kw):
    """A correct gradient (softcheck's closed form) for the options in ``kw``."""
    from ..reference import analytic
    from ..suite.inputs import make_inputs_from_arrays

    opts = {k: v for k, v in kw.items() if k in OPTION_NAMES and v is not None}
    if np.asarray(target).ndim == 2:
        opts["targets"] = "probs"
    go = opts.pop("grad_output", None)
    return analytic.gradient(make_inputs_from_arrays(logits, target, grad_output=go, **opts)).copy()


def _plain(z, y, axis=-1, shift=True):
    z = np.asarray(z, np.float64)
    if shift:
        p = softmax(z, axis)
    else:
        with np.errstate(all="ignore"):
            p = np.exp(z) / np.sum(np.exp(z), axis=axis, keepdims=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1
    return (p - onehot) / len(y)


def _upstream(fn):
    """The mutant with grad_output applied as it should be: each mutant has one bug only."""
    def with_go(logits, target, grad_output=None, **kw):
        g = np.asarray(fn(logits, target, **kw), np.float64)
        if grad_output is None:
            return g
        go = np.asarray(grad_output, np.float64)
        return g * (go[:, None] if go.ndim else go)
    return with_go


def _one_entry(logits, target, **kw):
    g = np.array(correct(logits, target, **kw))
    g[0, int(target[0])] *= 1 + 1e-9
    return g


def _smoothing_unmasked(logits, target, ignore_index=-100, label_smoothing=0.0, **kw):
    """pytorch#73205: the smoothing term was not masked for ignored rows."""
    g = correct(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing, **kw)
    z = np.asarray(logits, np.float64)
    c = z.shape[1]
    ign = target == ignore_index
    n_valid = max(int((~ign).sum()), 1)
    p = softmax(z)
    g = np.array(g)
    g[ign] = label_smoothing / c * (c * p[ign] - 1) / n_valid
    return g


def _softcap_no_chain(logits, target, softcap=None, **kw):
    return correct(np.asarray(logits, np.float64), target, softcap=softcap, **kw) / (
        1 - np.tanh(np.asarray(logits, np.float64) / softcap) ** 2)


def _p_minus_q(logits, target, **kw):
    return (softmax(logits) - target) / len(target)


def _ignores_grad_output(logits, target, grad_output=None, **kw):
    return correct(logits, target, **kw)


def _float32_inside(logits, target, **kw):
    return np.asarray(correct(np.asarray(logits, np.float32), target, **kw), np.float64)


def _zloss_weighted(logits, target, weight=None, z_loss=0.0, **kw):
    g0 = correct(logits, target, weight=weight, **kw)
    z = np.asarray(logits, np.float64)
    p = softmax(z)
    m = z.max(1, keepdims=True)
    lse = m + np.log(np.sum(np.exp(z - m), 1, keepdims=True))
    wy = np.asarray(weight, np.float64)[target][:, None]
    return g0 + 2 * z_loss * lse * p * wy / len(z)


def _batch_max_shift(logits, target, **kw):
    """Shifts by the batch's maximum, not each row's (a small framework did exactly this)."""
    z = np.asarray(logits, np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(z - z.max())
        p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def _log_of_softmax(logits, target, **kw):
    """−log(softmax(z)[y]) differentiated through a separate softmax: NaN where p_y = 0."""
    z = np.asarray(logits, np.float64)
    p = softmax(z)
    rows = np.arange(len(target))
    py = p[rows, target]
    with np.errstate(all="ignore"):
        # d/dz of -log p_y through p: -(1/p_y)·p_y(e_y − p) = p − e_y, but 0·inf = NaN at p_y = 0
        g = -(1.0 / py)[:, None] * (py[:, None] * (np.eye(z.shape[1])[target] - p))
    return g / len(target)


def _clipped_log(logits, target, **kw):
    """log(max(p, 1e-15)): the clip cuts the gradient off where p_y < 1e-15."""
    g = np.array(correct(logits, target, **kw))
    py = softmax(logits)[np.arange(len(target)), target]
    g[py < 1e-15] = 0.0
    return g


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    fn: Callable
    options: dict = field(default_factory=dict)
    convention: str = "grad"          # how it is called (candidate/conventions.py)
    backward: Callable | None = None  # split: its backward
    hint: str = ""         # words of the diagnosis that name this bug (``named`` in the table)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("sign-flip", "returns y - p instead of p - y",
           lambda z, y, **kw: -correct(z, y, **kw),
           hint='sign flipped'),
    Mutant("sum-not-mean", "forgets the mean's division by the row count",
           lambda z, y, reduction="mean", **kw: correct(z, y, reduction="sum", **kw),
           hint="reduction 'sum'"),
    Mutant("mean-over-ignored", "with ignore_index, divides by N instead of the non-ignored count",
           lambda z, y, reduction="mean", **kw: correct(z, y, reduction="sum", **kw) / len(z),
           {"ignore_index": -100},
           hint='divides by the batch size N'),
    Mutant("no-max-shift", "softmax without the max shift: exp overflows for large logits",
           _upstream(lambda z, y, **kw: _plain(z, y, shift=False)),
           hint='lacks the max shift'),
    Mutant("off-by-one-target", "subtracts the one-hot at class y+1",
           _upstream(lambda z, y, **kw: _plain(z, (y + 1) % np.asarray(z).shape[1])),
           hint='at the wrong class'),
    Mutant("wrong-axis", "softmax over the batch axis instead of the classes",
           _upstream(lambda z, y, **kw: _plain(z, y, axis=0)),
           hint='wrong axis'),
    Mutant("no-label-smoothing", "ignores label smoothing",
           lambda z, y, label_smoothing=0.0, **kw: correct(z, y, **kw), {"label_smoothing": 0.1},
           hint='label smoothing is not applied'),
    Mutant("smoothing-convention", "EPS/(C-1) off-target (fairseq) where PyTorch's EPS/C is asked",
           lambda z, y, smoothing_convention="uniform", **kw:
           correct(z, y, smoothing_convention="others", **kw), {"label_smoothing": 0.1},
           hint="convention 'others'"),
    Mutant("smoothing-on-ignored-rows", "label smoothing not masked on ignored rows (pytorch#73205)",
           _upstream(_smoothing_unmasked), {"label_smoothing": 0.1, "ignore_index": -100},
           hint='pytorch#73205'),
    Mutant("weights-denominator", "weighted loss, but the mean divides by the count, not Σ w[y]",
           _upstream(lambda z, y, weight=None, **kw: correct(z, y, weight=weight, reduction="sum") / len(z)),
           {"weight": "random"},
           hint='instead of the weight sum'),
    Mutant("z-loss-half", "z-loss gradient COEF·lse·p instead of 2·COEF·lse·p",
           lambda z, y, z_loss=0.0, **kw: correct(z, y, z_loss=z_loss / 2, **kw), {"z_loss": 1e-3},
           hint='lacks its factor 2'),
    Mutant("z-loss-weighted", "applies the class weights to the z-loss term",
           _upstream(_zloss_weighted), {"weight": "random", "z_loss": 1e-2},
           hint='z-loss term is weighted'),
    Mutant("softcap-no-chain", "forgets the softcap chain factor 1 - tanh²(z/S)",
           _softcap_no_chain, {"softcap": 5.0},
           hint='softcap chain factor'),
    Mutant("temperature-no-chain", "forgets the temperature's chain factor 1/T",
           lambda z, y, temperature=1.0, **kw: correct(z, y, temperature=temperature, **kw) * temperature,
           {"temperature": 2.0},
           hint='chain factor 1/T'),
    Mutant("assumes-normalized-targets", "p - y for probability targets that need not sum to one",
           _upstream(_p_minus_q), {"targets": "probs"},
           hint='uses p - y'),
    Mutant("ignores-grad-output", "reduction none, but the upstream gradient is dropped",
           _ignores_grad_output, {"reduction": "none"},
           hint='(grad_output) is ignored'),
    Mutant("float32-inside", "computes in float32 and returns float64",
           _float32_inside, {"dtype": "float64"},
           hint="float32's rounding level"),
    Mutant("one-entry-1e-9", "correct except one entry off by a relative 1e-9",
           _one_entry, {"dtype": "float64"},
           hint='only one entry'),
    Mutant("batch-max-shift", "shifts the softmax by the batch's maximum, not each row's own",
           _upstream(_batch_max_shift), hint="batch-wide maximum"),
    Mutant("log-of-softmax", "differentiates log(p) of a separate softmax: NaN where p_y underflows",
           _upstream(_log_of_softmax), hint="log(p) of a separately computed softmax"),
    Mutant("clipped-log", "log(max(p, 1e-15)): rows with p_y below the clip get no gradient",
           _clipped_log, hint="a clip or eps inside log(p)"),
    Mutant("inplace-loss-unsmoothed", "in-place kernel: right gradient, loss without smoothing",
           cm.inplace_loss_unsmoothed, {"label_smoothing": 0.1}, "inplace",
           hint="loss ignores label smoothing"),
    Mutant("inplace-never-writes", "in-place kernel: returns the loss, leaves the logits",
           cm.inplace_never_writes, {}, "inplace"),
    Mutant("split-lse-unshifted", "split forward: lse without the max shift's constant",
           cm.fwd_lse_unshifted, {}, "split", cm.bwd, hint="lse lacks the max shift"),
    Mutant("split-bwd-first-dloss", "split backward: dloss[0] for every row (Liger #678)",
           cm.fwd, {"reduction": "none"}, "split", cm.bwd_first_dloss),
) + tuple(Mutant(name, text, fn, {**fm.OPTIONS, **opts}, hint=hint)
          for name, text, fn, opts, hint in fm.FUSED)


@dataclass(frozen=True)
class MutantResult:
    mutant: Mutant
    caught: tuple[str, ...]
    total: int
    correct_passed: bool
    regimes: tuple[str, ...] = ()      # the regimes of the caught cases (carried as data)
    named: tuple[str, ...] = ()        # the caught cases whose diagnosis names the bug (its hint)

    @property
    def ok(self) -> bool:
        return bool(self.caught) and bool(self.named) and self.correct_passed

    @property
    def verdict(self) -> str:
        if not self.caught:
            return "MISSED"
        if not self.correct_passed:
            return "CORRECT ONE FAILS"
        return "CAUGHT, NAMED" if self.named else "CAUGHT, NOT NAMED"

    def row(self) -> tuple[str, str, str, str, str]:
        """The ``softcheck mutants`` table row: mutant, options, caught, named, verdict."""
        opts = ", ".join(f"{k}={v}" for k, v in self.mutant.options.items()) or "-"
        caught = f"{len(self.caught)}/{self.total} cases" + (
            f" ({', '.join(self.regimes)})" if self.regimes else "")
        named = f"{len(self.named)}/{len(self.caught)}"
        return self.mutant.name, opts, caught, named, self.verdict


def run_mutants(classes=(10,), seed: int = 0, names=None) -> list[MutantResult]:
    from ..engine.suites import check_candidate
    from ..suite.config import config

    out = []
    baseline: dict = {}
    for m in MUTANTS:
        if names and m.name not in names:
            continue
        cfg = config(**{"classes": classes, "seed": seed, **m.options})
        rep = check_candidate(_candidate(m.fn, m.convention, m.backward, m.name,
                                         "hidden" in m.options), cfg)
        key = (m.convention, *sorted(m.options.items()))
        if key not in baseline:
            ok = cm.CORRECT.get(m.convention, cm.Kernel(correct))
            if "hidden" in m.options:
                ok = cm.Kernel(fm.correct)
            good = check_candidate(_candidate(ok.fn, m.convention, ok.backward, "correct",
                                              "hidden" in m.options), cfg)
            baseline[key] = good.passed
        failed = [c for c in rep.cases if not c.passed]
        regimes = tuple(sorted({c.params["regime"] for c in failed}))
        named = tuple(c.name for c in failed if any(m.hint in d for d in c.diagnosis)
                      or (c.error and m.hint and m.hint in c.error))
        out.append(MutantResult(m, tuple(c.name for c in failed), len(rep.cases), baseline[key],
                                regimes, named))
    return out


def _candidate(fn, convention: str, backward, label: str, fused: bool = False):
    """A mutant as a candidate of its calling convention (numpy kernels; ``fused``: a fused
    linear cross-entropy kernel, --hidden)."""
    import dataclasses

    from ..candidate import Candidate
    from ..candidate.conventions import resolve, settings

    bname = getattr(backward, "__name__", None)
    st = resolve(fn, settings(convention=convention, framework="numpy", backward=bname,
                              fused=fused), bwd=backward)
    return dataclasses.replace(Candidate.from_callable(fn, label=label), settings=st,
                               backward=backward)


def summary(results: list[MutantResult]) -> tuple[bool, str]:
    """Whether every mutant was caught with the correct reference passing, and the line."""
    bad = [r for r in results if not r.ok]
    good = all(r.correct_passed for r in results)
    return not bad, (f"{len(results) - len(bad)}/{len(results)} mutants caught and named by "
                     f"their own hint, correct reference {'passes' if good else 'FAILS'}")
