"""Judge one case: compute each method's gradient, compare every pair, collect the verdict."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..judge import tolerances
from ..candidate import CallPolicy, CallResult
from ..judge.compare import (Comparison, Invariant, compare, compare_values, determinism,
                             invariants)
from ..judge.metamorphic import check_relations
from ..reference import analytic, autodiff
from ..reference.loss import values as loss_values
from ..reference import finite_difference as references
from ..spec import Inputs
from ..suite.cases import Case
from ..suite.inputs import make_inputs
from ..judge.ranks import judge_ranks
from . import saved_logits
from .results import CaseResult, Coverage, FDInfo

REFERENCE_PAIRS = (("analytic", "autodiff"), ("analytic", "finite_difference"),
                   ("autodiff", "finite_difference"))
CANDIDATE_PAIRS = (("candidate", "analytic"), ("candidate", "autodiff"),
                   ("candidate", "finite_difference"))


def run_case(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy()) -> CaseResult:
    """Judge one case: the three references against each other, and the candidate if given
    (called as ``policy`` says: time limit, repeats on identical inputs)."""
    if case.hidden is not None:            # fused linear cross-entropy (--hidden)
        from .fused import run_fused_case

        return run_fused_case(case, candidate, policy=policy)
    t0 = time.perf_counter()
    timeout = policy.limit
    upstream = "auto"
    if candidate is not None:
        upstream = ("random" if candidate.settings.convention != "grad"
                    or candidate.takes("grad_output") else "one")
    inputs = make_inputs(case, upstream=upstream)
    inputs64 = inputs.float64()
    stats = references.row_stats(inputs64)
    scale = stats.scale
    kappa = tolerances.condition(inputs64.logits, case.spec.divisor, case.spec.softcap)
    base = dict(name=case.name, params=case.params(), group=case.group, scale=scale, kappa=kappa,
                target=candidate.label if candidate is not None else None)
    if case.order == 2:
        result = _second_order(case, inputs64, candidate, scale, kappa, timeout, base)
        return dataclasses.replace(result, seconds=time.perf_counter() - t0)

    grads: dict[str, np.ndarray] = {}
    dtypes = {"analytic": case.dtype, "autodiff": "float64", "finite_difference": "float64"}
    notes: list[str] = []
    if candidate is not None:
        call = candidate.call(inputs, timeout=timeout, repeat=policy.repeat)
        notes.extend(call.notes)
        base["output"] = call.output or None
        if call.error:
            return CaseResult(passed=False, error=call.error, notes=tuple(notes),
                              seconds=time.perf_counter() - t0, **base)
        grads["candidate"] = call.grad
        dtypes["candidate"] = case.dtype
        dtypes["analytic"] = "float64"       # the candidate is judged by float64 references
        grads["analytic"] = analytic.gradient(inputs64)
    else:
        grads["analytic"] = analytic.gradient(inputs)
    grads["autodiff"] = autodiff.autodiff(inputs64)
    fd = references.finite_difference(inputs64, case.fd, budget=case.fd_budget,
                                      probes=case.probes, seed=case.seed, project=dict(grads),
                                      priority=grads.get("candidate", grads["analytic"]))
    grads["finite_difference"] = fd.grad
    native = 0.0
    if (candidate is not None and case.tolerance == "native"
            and case.dtype in tolerances.LOW_PRECISION):
        native = _native_band(inputs, grads["analytic"])
        notes.append(f"--tolerance native: candidate entries also allowed "
                     f"{tolerances.K_NATIVE:g} × {native / tolerances.K_NATIVE:.2g}, the largest "
                     f"error of the closed form computed in {case.dtype} arithmetic")
    pairs = (CANDIDATE_PAIRS + REFERENCE_PAIRS) if candidate is not None else REFERENCE_PAIRS
    comparisons = []
    for a, b in pairs:
        comparisons.append(_compare_pair(a, b, grads, fd, dtypes, inputs64, kappa, scale,
                                         native if a == "candidate" else 0.0,
                                         _user_tolerance(case, a, candidate), case.tolerance))
    if candidate is not None:
        comparisons += _forward_pairs(call, inputs64, case, kappa)
        comparisons += _upstream_pairs(call, inputs64, case, kappa, native / scale if scale else 0)
    rank_invs, rank_hints = [], ()
    if candidate is not None and call.ranks:            # --tensor-parallel: per rank
        rank_cmps, rank_invs, rank_hints = judge_ranks(
            call, inputs64, dtype=case.dtype, kappa=kappa, scale=scale,
            user=_user_tolerance(case, "candidate", candidate))
        comparisons += rank_cmps
    checked = "candidate" if candidate is not None else "analytic"
    invs = invariants(checked, grads[checked], inputs64, dtype=dtypes[checked], kappa=kappa,
                      scale=scale, band=native) + rank_invs
    saved_hint: tuple[str, ...] = ()
    if candidate is not None and saved_logits.applies(candidate, case):
        inv, wrote = saved_logits.check(
            candidate, inputs, grads["candidate"], policy, inputs64=inputs64,
            dtype=case.dtype, kappa=kappa, scale=scale, mode=case.tolerance,
            user=_user_tolerance(case, "candidate", candidate))
        invs.append(inv)
        if wrote and call.nondet == 0:      # its own gradient moved: the saved logits did
            saved_hint = (saved_logits.HINT,)
    if candidate is not None and policy.repeat > 1:
        invs.append(_determinism(call.nondet, policy, comparisons[0]))
    relations = ()
    call_errors: list[str] = []

    def relation_call(inp):
        if call_errors:          # one death or timeout per case is enough: never wait again
            return CallResult(None, "not called: an earlier call of this case failed")
        r = candidate.call(inp, timeout=timeout, variants=False)   # g's variants: main call
        if r.error:
            call_errors.append(r.error)
        return r

    if candidate is not None and np.all(np.isfinite(grads["candidate"])):
        relations = check_relations(relation_call, inputs,
                                    grads["candidate"], dtype=case.dtype, takes=candidate.takes,
                                    seed=case.seed, native=case.tolerance == "native",
                                    user=_user_tolerance(case, "candidate", candidate),
                                    positional=bool(case.shift))
    passed = (all(c.passed for c in comparisons) and all(i.passed for i in invs)
              and all(r.passed for r in relations))
    diagnosis: tuple[str, ...] = ()
    grad_failed = not all(c.passed for c in comparisons if c.pair[0] == "candidate") or \
        not all(i.passed for i in invs) or not all(r.passed for r in relations)
    if candidate is not None and not passed:
        from ..judge.diagnose import SEQUENCE_BUGS, diagnose

        unheard = unheard_hint(candidate, case.spec)
        diagnosis = saved_hint + unheard + rank_hints + upstream_hint(
            comparisons, inputs) + _forward_hint(comparisons, call, inputs64)
        if grad_failed and not unheard and not saved_hint:   # the gradient is wrong: how
            diagnosis += tuple(diagnose(grads["candidate"], inputs, case, comparisons, invs,
                                        relations))
        shifted = tuple(h for h in diagnosis if h.startswith(SEQUENCE_BUGS))
        diagnosis = shifted or diagnosis  # it explains every rank's error and the loss's
    info = FDInfo(fd.method, fd.error_estimate, float(np.median(fd.step)), fd.coverage,
                  fd.columns, len(fd.probes))
    coverage = Coverage(tuple(dict.fromkeys(m for p in pairs for m in p if m != "candidate")),
                        tuple(r.name for r in relations), len(fd.probes), fd.coverage)
    error = f"{call_errors[0]} (in a metamorphic relation's call)" if call_errors else None
    return CaseResult(passed=passed and not call_errors, error=error,
                      comparisons=tuple(comparisons), invariants=tuple(invs),
                      relations=relations, coverage=coverage,
                      fd=info, diagnosis=diagnosis, notes=tuple(notes),
                      seconds=time.perf_counter() - t0, **base)


def _determinism(nondet: float, policy: CallPolicy, cmp: Comparison) -> Invariant:
    """The ``deterministic`` invariant of a case judged against ``cmp`` (its tolerance)."""
    return determinism(nondet, policy.repeat, policy.nondet_tol, cmp.atol)


def _forward_pairs(call, inputs64: Inputs, case: Case, kappa: float) -> list[Comparison]:
    """The forward's values a loss-returning kernel gave (loss, z-loss, lse) against the
    float64 reference values (tolerances.loss_allowed / lse_allowed)."""
    if call.loss is None and call.lse is None:
        return []
    return forward_pairs(call, loss_values(inputs64), case, kappa, inputs64.logits.shape[0])


def forward_pairs(call, ref, case: Case, kappa: float, n: int) -> list[Comparison]:
    """``_forward_pairs`` against reference values ``ref`` (``reference.loss.LossValues``:
    a streamed case's are computed a block of rows at a time, engine/blocks.py)."""
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


def _upstream_pairs(call, inputs64: Inputs, case: Case, kappa: float, native_rel: float
                    ) -> list[Comparison]:
    """The gradient for each other upstream gradient g (g = 1, a scalar for none) against the
    closed form for that g (itself checked against autodiff and FD for the case's own g; the
    loss is linear in g)."""
    out = []
    for label, g, grad in call.variants:
        ig = dataclasses.replace(inputs64, grad_output=np.asarray(g, np.float64))
        sc = references.row_stats(ig).scale
        out.append(compare((f"candidate@{label}", "analytic"), grad, analytic.gradient(ig),
                           inputs=ig, dtype=case.dtype, kappa=kappa, scale=sc,
                           band=native_rel * sc, mode=case.tolerance))
    return out


def _forward_hint(comparisons, call, inputs64: Inputs) -> tuple[str, ...]:
    """A forward value (loss, lse) wrong while the gradients are right: a forward-only bug,
    named where its pattern is known (loss without label smoothing, lse without the max
    shift's constant), matched to the value's tolerance."""
    bad = {c.pair[0][len("candidate_"):]: c for c in comparisons
           if c.pair[0].startswith("candidate_") and not c.passed}
    if not bad or any(not c.passed for c in comparisons if c.pair[0] == "candidate"):
        return ()
    hints = []
    loss = bad.get("loss")
    if loss is not None and loss.reason and ("expected NaN" in loss.reason
                                             or "--all-ignored zero:" in loss.reason):
        return ("every row is ignored: the only difference is the loss, "
                + ("0 where PyTorch gives NaN (0/0): pass --all-ignored zero if the kernel "
                   "means 0 (Liger-Kernel, TransformerEngine)" if "expected NaN" in loss.reason
                   else "NaN where --all-ignored zero expects 0"),)
    if "lse" in bad and call.lse is not None:
        v = inputs64.logits64 / inputs64.spec.divisor
        shift = np.max(np.where(np.isfinite(v), v, -np.inf), -1)
        ref = loss_values(inputs64).lse
        if np.max(np.abs(np.asarray(call.lse) + shift - ref), initial=0.0) <= bad["lse"].atol:
            hints.append("the forward's lse lacks the max shift's constant: it returns "
                         "log Σ exp(z − m) without adding back m")
    spec = inputs64.spec
    if "loss" in bad and call.loss is not None and spec.label_smoothing:
        plain = loss_values(dataclasses.replace(inputs64, spec=spec.replace(label_smoothing=0.0)))
        if np.max(np.abs(np.asarray(call.loss) - plain.loss), initial=0.0) <= bad["loss"].atol:
            hints.append("the forward's loss ignores label smoothing (it equals the loss at "
                         "EPS = 0) while the gradient applies it")
    return tuple(hints) or tuple(
        f"the forward's {name} is wrong while the gradient is right: a forward-only bug "
        "(tests that compare only gradients miss it)" for name in bad)


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


def _native_band(inputs: Inputs, ref64: np.ndarray) -> float:
    """K_NATIVE × the largest error of the closed form computed in the case dtype itself."""
    with np.errstate(invalid="ignore", over="ignore"):
        nat = analytic.gradient(inputs, native=True).astype(np.float64)
        err = np.abs(nat - ref64)
    err = err[np.isfinite(err)]
    return tolerances.K_NATIVE * float(np.max(err, initial=0.0))


def _user_tolerance(case: Case, a: str, candidate) -> tuple | None:
    """--atol/--rtol judge the pairs of the method under check (the candidate, or every pair
    of ``run``); None: the derived tolerance."""
    if case.atol is None and case.rtol is None:
        return None
    return (case.atol, case.rtol) if candidate is None or a == "candidate" else None


def _compare_pair(a, b, grads, fd, dtypes, inputs64, kappa, scale, extra=0.0,
                  user=None, mode=tolerances.DEFAULT_MODE) -> Comparison:
    """Compare on the entries both sides have (FD may cover a subset of the columns)."""
    x, ref = grads[a], grads[b]
    band = extra
    if "finite_difference" in (a, b):
        band = fd.band[:, None] + extra
        if fd.mask is not None:
            x = np.where(fd.mask, x, 0.0)
            ref = np.where(fd.mask, ref, 0.0)
    dtype = tolerances.coarser(dtypes[a], dtypes[b])
    cmp = compare((a, b), x, ref, inputs=inputs64, dtype=dtype, kappa=kappa, scale=scale,
                  band=band, user=user, mode=mode)
    if fd.probes and "finite_difference" in (a, b):
        cmp = _fold_probes(cmp, a if b == "finite_difference" else b, fd)
    return cmp


def _fold_probes(cmp: Comparison, name: str, fd) -> Comparison:
    """Directional probes: Σ_c x_ic d_ic of method ``name`` against the central-difference
    derivative along d, per row (the projections were taken when the probes were made)."""
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


def _second_order(case, inputs64, candidate, scale, kappa, timeout, base) -> CaseResult:
    """Hessian-vector products: analytic vs jax.jvp(jax.grad) vs FD of the analytic gradient."""
    rng = np.random.default_rng([case.seed, 2])
    d = rng.standard_normal(inputs64.logits.shape)
    d -= np.mean(d, -1, keepdims=True)           # orthogonal to the all-ones null vector
    d = np.where(np.isfinite(inputs64.logits), d, 0.0)
    hv = {"analytic": analytic.hvp(inputs64, d), "autodiff": autodiff.autodiff_hvp(inputs64, d)}
    fd_hv, band = references.finite_difference_hvp(inputs64, d, analytic.gradient, scale)
    hv["finite_difference"] = fd_hv
    notes = []
    pairs = REFERENCE_PAIRS
    if candidate is not None and candidate.hvp is not None:
        call = candidate.call_hvp(inputs64, d, timeout=timeout)
        notes.extend(call.notes)
        if call.error:
            return CaseResult(passed=False, error=call.error, notes=tuple(notes), **base)
        hv["candidate"] = call.grad
        pairs = CANDIDATE_PAIRS + REFERENCE_PAIRS
    # The natural scale of H·d, as for the gradient (tolerances.py): per row H = A(diag p − p pᵀ)
    # (+ the z-loss p pᵀ and the softcap g'' terms), each part at most the gradient's scale
    # times |d| and 1/T; ‖diag p − p pᵀ‖∞ ≤ 2, |g''| ≤ 0.77/S.  Rounding scales with the parts,
    # not with H·d itself (which vanishes when p saturates).
    cap = case.spec.softcap
    hscale = scale * float(np.max(np.abs(d), initial=0.0)) * (2 + (0.77 / cap if cap else 0.0)) \
        / case.spec.divisor
    comps = []
    for a, b in pairs:
        bd = band if "finite_difference" in (a, b) else 0.0
        comps.append(compare((a, b), hv[a], hv[b], inputs=inputs64, dtype="float64",
                             kappa=kappa, scale=hscale, band=bd))
    passed = all(c.passed for c in comps)
    info = FDInfo("central (of the analytic gradient)", band, 1e-5, "one random direction "
                  "orthogonal to the all-ones vector, every entry of H·d")
    return CaseResult(passed=passed, comparisons=tuple(comps), fd=info, notes=tuple(notes),
                      **base)
