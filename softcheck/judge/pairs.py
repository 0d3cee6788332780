"""Which methods a case compares, and the judging every runner shares (engine/case.py,
engine/stream.py): the pairs, the --atol/--rtol override, the directional probes folded into
a pair, the forward's values, the repeat's invariant, the ``--tolerance native`` band, and the
hints that name a cause the comparisons alone do not."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..reference import analytic
from ..spec import Inputs
from . import tolerances
from .compare import Comparison, Invariant, compare_values, determinism

REFERENCE_PAIRS = (("analytic", "autodiff"), ("analytic", "finite_difference"),
                   ("autodiff", "finite_difference"))
CANDIDATE_PAIRS = (("candidate", "analytic"), ("candidate", "autodiff"),
                   ("candidate", "finite_difference"))


def pairs_of(candidate) -> tuple[tuple[str, str], ...]:
    """The pairs a case compares: the references' own, and the candidate's first if given."""
    return (CANDIDATE_PAIRS + REFERENCE_PAIRS) if candidate is not None else REFERENCE_PAIRS


def methods_of(pairs) -> tuple[str, ...]:
    """The reference methods ``pairs`` use, in order (the report's coverage.methods)."""
    return tuple(dict.fromkeys(m for p in pairs for m in p if m != "candidate"))


def user_tolerance(case, a: str, candidate) -> tuple | None:
    """--atol/--rtol judge the pairs of the method under check (the candidate, or every pair
    of ``run``); None: the derived tolerance."""
    if case.atol is None and case.rtol is None:
        return None
    return (case.atol, case.rtol) if candidate is None or a == "candidate" else None


def repeat_invariant(nondet: float, policy, cmp: Comparison, bounded: bool = False
                     ) -> Invariant:
    """The ``deterministic`` invariant of a case called ``policy.repeat`` times, judged against
    ``cmp``'s tolerance (the case's first candidate pair); ``bounded``: ``nondet`` is a bound
    on the difference, not the difference (engine/repeats.py)."""
    return determinism(nondet, policy.repeat, policy.nondet_tol, cmp.atol, bounded)


def fold_probes(cmp: Comparison, fd) -> Comparison:
    """A pair with the finite differences, and ``fd``'s directional probes: Σ_c x_ic d_ic of
    the pair's other method against the central-difference derivative along d, per row (the
    projections were taken when the probes were made); any other pair as it is."""
    a, b = cmp.pair
    if not fd.probes or "finite_difference" not in (a, b):
        return cmp
    name = a if b == "finite_difference" else b
    worst = 0.0
    for probe in fd.probes:
        got = probe.projections[name]
        atol = tolerances.Tolerance(cmp.atol, cmp.rtol).override(cmp.user).atol
        allowed = atol * probe.l1 + probe.band
        err = np.abs(got - probe.value)
        ratio = np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, 1e-300))
        ratio = np.where(np.isfinite(ratio), ratio, np.inf)
        worst = max(worst, float(np.max(ratio)))
    if worst <= 1.0:
        return cmp
    reason = (cmp.reason + "; " if cmp.reason else "") + (
        f"a directional probe disagrees ({worst:.3g}× the allowed error)")
    return dataclasses.replace(cmp, passed=False, reason=reason, ratio=max(cmp.ratio, worst))


def forward_pairs(call, ref, case, kappa: float, n: int) -> list[Comparison]:
    """The forward's values a loss-returning kernel gave (loss, z-loss, lse) against the
    float64 reference values ``ref`` (``reference.loss.LossValues``; a streamed case's are
    computed a block of rows at a time): tolerances.loss_allowed / lse_allowed."""
    out = []
    for name, x, r, sc in (("loss", call.loss, ref.loss, ref.scale),
                           ("z_loss", call.z_loss if case.spec.z_loss else None, ref.z_loss,
                            ref.zscale)):
        if x is not None:
            allowed, atol, rtol = tolerances.loss_allowed(case.dtype, kappa, sc, n, r)
            out.append(compare_values((f"candidate_{name}", f"reference_{name}"), x, r,
                                      allowed, atol, rtol, sc))
    if call.lse is not None:
        allowed, atol, rtol = tolerances.lse_allowed(case.dtype, kappa, ref.lse)
        out.append(compare_values(("candidate_lse", "reference_lse"), call.lse, ref.lse,
                                  allowed, atol, rtol, 1.0))
    return out


def native_band(low: Inputs, ref64: np.ndarray) -> float:
    """K_NATIVE × the largest error of the closed form computed in ``low``'s own dtype
    against the float64 one (``--tolerance native``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(analytic.gradient(low, native=True).astype(np.float64) - ref64)
    err = err[np.isfinite(err)]
    return tolerances.K_NATIVE * float(np.max(err, initial=0.0))


def native_note(band: float, dtype: str) -> str:
    """The note of a case judged with ``--tolerance native``'s ``band``."""
    return (f"--tolerance native: candidate entries also allowed {tolerances.K_NATIVE:g} × "
            f"{band / tolerances.K_NATIVE:.2g}, the largest error of the closed form computed "
            f"in {dtype} arithmetic")


def unheard_hint(candidate, spec) -> tuple[str, ...]:
    """Options the case uses that a plain gradient function does not declare: it cannot have
    honoured them (it gets only the keywords it takes: candidate/call.kwargs_for).  A
    convention kernel gets options by --args and --rename too: no hint."""
    if candidate is None or candidate.settings.convention != "grad":
        return ()
    used = {"softcap": spec.softcap is not None, "label_smoothing": spec.label_smoothing != 0,
            "temperature": spec.temperature != 1.0, "z_loss": spec.z_loss != 0,
            "logit_scale": spec.logit_scale != 1.0}
    missing = [k for k, on in used.items() if on and not candidate.takes(k)]
    if not missing:
        return ()
    flags = ", ".join("--" + k.replace("_", "-") for k in missing)
    return (f"the function takes no {' / '.join(missing)} keyword but the case uses {flags}: "
            f"it computed without it (declare the keyword to be checked with it)",)


def upstream_hint(comparisons, inputs: Inputs) -> tuple[str, ...]:
    """Right for g = 1 (and a uniform g) but wrong for the case's own g: name it."""
    main = [c for c in comparisons if c.pair[0] == "candidate"]
    other = [c for c in comparisons if c.pair[0].startswith("candidate@")]
    if not other or all(c.passed for c in main) or not all(c.passed for c in other):
        return ()
    g = np.asarray(inputs.grad_output)
    what = "a random per-row upstream gradient" if g.ndim else f"the upstream gradient {g:.4g}"
    return (f"right with {', '.join(c.pair[0].split('@')[1] for c in other)} but wrong with "
            f"{what}: the backward drops or misapplies grad_output (Liger #678, "
            "TransformerEngine #2139)",)
