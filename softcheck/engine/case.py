"""Judge one case: compute each method's gradient, compare every pair, collect the verdict."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..judge import tolerances
from ..candidate import CallPolicy, CallResult
from ..judge.compare import Comparison, compare, invariants
from ..judge.metamorphic import check_relations
from ..judge.pairs import (REFERENCE_PAIRS, fold_probes, forward_pairs, methods_of,
                           native_band, native_note, pairs_of, repeat_invariant,
                           unheard_hint, upstream_hint, user_tolerance)
from ..reference import analytic, autodiff
from ..reference.loss import values as loss_values
from ..reference import finite_difference as references
from ..spec import Inputs
from ..suite.cases import Case
from ..suite.inputs import make_inputs
from ..judge.ranks import judge_ranks
from . import saved_logits
from .results import CaseResult, FDInfo
from .skeleton import Frame, all_passed, coverage


def run_case(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy()) -> CaseResult:
    """Judge one case: the three references against each other, and the candidate if given
    (called as ``policy`` says: time limit, repeats on identical inputs)."""
    if case.hidden is not None:            # fused linear cross-entropy (--hidden)
        from .fused import run_fused_case

        return run_fused_case(case, candidate, policy=policy)
    frame = Frame(case, candidate)
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
    frame.measured(scale=scale, kappa=kappa)
    if case.order == 2:
        return _second_order(case, inputs64, candidate, scale, kappa, timeout, frame)

    grads: dict[str, np.ndarray] = {}
    dtypes = {"analytic": case.dtype, "autodiff": "float64", "finite_difference": "float64"}
    if candidate is not None:
        call = candidate.call(inputs, timeout=timeout, repeat=policy.repeat)
        if frame.heard(call):
            return frame.failed(call.error)
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
        native = native_band(inputs, grads["analytic"])
        frame.notes.append(native_note(native, case.dtype))
    pairs = pairs_of(candidate)
    user = user_tolerance(case, "candidate", candidate)
    comparisons = []
    for a, b in pairs:
        comparisons.append(_compare_pair(a, b, grads, fd, dtypes, inputs64, kappa, scale,
                                         native if a == "candidate" else 0.0,
                                         user_tolerance(case, a, candidate), case.tolerance))
    if candidate is not None:
        comparisons += _forward_pairs(call, inputs64, case, kappa)
        comparisons += _upstream_pairs(call, inputs64, case, kappa, native / scale if scale else 0)
    rank_invs, rank_hints = [], ()
    if candidate is not None and call.ranks:            # --tensor-parallel: per rank
        rank_cmps, rank_invs, rank_hints = judge_ranks(
            call, inputs64, dtype=case.dtype, kappa=kappa, scale=scale, user=user)
        comparisons += rank_cmps
    checked = "candidate" if candidate is not None else "analytic"
    invs = invariants(checked, grads[checked], inputs64, dtype=dtypes[checked], kappa=kappa,
                      scale=scale, band=native) + rank_invs
    saved_hint: tuple[str, ...] = ()
    if candidate is not None and saved_logits.applies(candidate, case):
        inv, wrote = saved_logits.check(
            candidate, inputs, grads["candidate"], policy, inputs64=inputs64,
            dtype=case.dtype, kappa=kappa, scale=scale, mode=case.tolerance, user=user)
        invs.append(inv)
        if wrote and call.nondet == 0:      # its own gradient moved: the saved logits did
            saved_hint = (saved_logits.HINT,)
    if candidate is not None and policy.repeat > 1:
        invs.append(repeat_invariant(call.nondet, policy, comparisons[0]))
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
                                    user=user, positional=bool(case.shift))
    passed = all_passed(comparisons, invs, relations)
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
    error = f"{call_errors[0]} (in a metamorphic relation's call)" if call_errors else None
    return frame.result(comparisons, invs, relations, fd=info, diagnosis=diagnosis, error=error,
                        coverage=coverage(methods_of(pairs), relations, len(fd.probes),
                                          fd.coverage))


def _forward_pairs(call, inputs64: Inputs, case: Case, kappa: float) -> list[Comparison]:
    """The forward's values a loss-returning kernel gave (loss, z-loss, lse) against the
    float64 reference values (tolerances.loss_allowed / lse_allowed)."""
    if call.loss is None and call.lse is None:
        return []
    return forward_pairs(call, loss_values(inputs64), case, kappa, inputs64.logits.shape[0])


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
    return fold_probes(cmp, fd)


def _second_order(case, inputs64, candidate, scale, kappa, timeout, frame: Frame
                  ) -> CaseResult:
    """Hessian-vector products: analytic vs jax.jvp(jax.grad) vs FD of the analytic gradient."""
    rng = np.random.default_rng([case.seed, 2])
    d = rng.standard_normal(inputs64.logits.shape)
    d -= np.mean(d, -1, keepdims=True)           # orthogonal to the all-ones null vector
    d = np.where(np.isfinite(inputs64.logits), d, 0.0)
    hv = {"analytic": analytic.hvp(inputs64, d), "autodiff": autodiff.autodiff_hvp(inputs64, d)}
    fd_hv, band = references.finite_difference_hvp(inputs64, d, analytic.gradient, scale)
    hv["finite_difference"] = fd_hv
    pairs = REFERENCE_PAIRS
    if candidate is not None and candidate.hvp is not None:
        call = candidate.call_hvp(inputs64, d, timeout=timeout)
        if frame.heard(call):
            return frame.failed(call.error)
        hv["candidate"] = call.grad
        pairs = pairs_of(candidate)
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
    info = FDInfo("central (of the analytic gradient)", band, 1e-5, "one random direction "
                  "orthogonal to the all-ones vector, every entry of H·d")
    return frame.result(comps, fd=info)
