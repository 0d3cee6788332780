"""Judge one fused linear cross-entropy case: references, the candidate, per-output pairs."""

from __future__ import annotations

import numpy as np

from ..candidate import CallPolicy
from ..judge import tolerances
from ..judge.compare import Comparison, determinism
from ..judge.fused import LABELS, compare_output, diagnose
from ..judge.ranks import judge_fused_ranks
from ..reference import fused as ref_fused
from ..suite.cases import Case
from ..suite.fused import make_fused_inputs
from .results import CaseResult
from .skeleton import Frame, coverage


def _pair(a: str, b: str, k: str) -> tuple[str, str]:
    return f"{a}_{LABELS[k]}", f"{b}_{LABELS[k]}"


def run_fused_case(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy()
                   ) -> CaseResult:
    """The blockwise float64 reference against autodiff and the FD probes, and the
    candidate's loss / grad_x / grad_W / grad_b against the reference."""
    frame = Frame(case, candidate)
    upstream = "auto"
    if candidate is not None:
        upstream = ("random" if candidate.settings.convention == "loss"
                    or candidate.takes("grad_output") else "one")
    fi = make_fused_inputs(case, upstream=upstream)
    spec = case.spec
    dtype = case.dtype if candidate is not None else "float64"
    n, h = fi.x.shape
    xnorm, wnorm, bmax = ref_fused.norms(fi)
    dv = tolerances.fused_logit_error(dtype, h, xnorm, wnorm, bmax, spec.divisor)

    world = candidate.settings.tensor_parallel if candidate is not None else 1

    def row_error(kappa):
        return tolerances.fused_row_error(dtype, kappa, dv, fi.lm_weight.shape[0], n,
                                          spec.softcap, world)

    pending = None
    if candidate is not None and candidate.isolated:
        # an isolated candidate runs in its own process while this one computes the
        # references: the two overlap (the thread only waits on the worker's socket)
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        pending = pool.submit(call_fused, candidate, fi, policy)
        pool.shutdown(wait=False)
    ref = ref_fused.reference(fi, row_error=row_error)
    refs = {"grad_x": ref.grad_x, "grad_w": ref.grad_w}
    bounds = {"grad_x": ref.bound_x, "grad_w": ref.bound_w}
    if ref.grad_b is not None:
        refs["grad_b"], bounds["grad_b"] = ref.grad_b, ref.bound_b
    frame.measured(scale=ref.scale, kappa=ref.kappa)
    ours: list[Comparison] = []
    # softcheck's own methods against each other, in float64: every term of fused_row_error
    # is proportional to u_compute for float32/64, so the bounds scale by the ratio of roundoffs
    shrink = tolerances.TABLE["float64"].u_compute / tolerances.TABLE[dtype].u_compute
    r64, c64 = tolerances.fused_allowed("float64")
    ad = ref_fused.autodiff(fi)
    methods = ["reference"] + (["autodiff"] if ad is not None else []) + ["finite_difference"]
    for k in refs if ad is not None else ():
        ours.append(compare_output(_pair("autodiff", "reference", k), getattr(ad, k), refs[k],
                                   bounds[k] * shrink, r64, c64))
    probes = ref_fused.fd_probes(fi, ref, seed=case.seed, count=max(case.probes, 2))
    for k, (dirs, fd, band) in probes.items():
        allowed = shrink * ref_fused.project(bounds[k], dirs, absolute=True) + band
        ours.append(compare_output(_pair("reference", "finite_difference", k),
                                   ref_fused.project(refs[k], dirs), fd, allowed, 0.0, 0.0))
    if candidate is None:
        return _result(frame, ours, (), methods, probes)
    # the candidate's call (overlapping with the references above when isolated)
    res = pending.result() if pending is not None else call_fused(candidate, fi, policy)
    if frame.heard(res):
        return frame.failed(res.error)
    extra = dict.fromkeys(("loss",) + tuple(refs), 0.0)
    if case.tolerance == "torch":
        extra.update(ref_fused.torch_errors(fi, ref))
        frame.notes.append(
            f"--tolerance torch: each output also allowed PyTorch's own largest error in "
            f"{case.dtype} (" + ", ".join(f"{LABELS[k]} {v:.3g}" for k, v in extra.items())
            + ")")
    cands: list[Comparison] = []
    if res.loss is not None:
        bound, rt, const = tolerances.fused_loss_allowed(case.dtype, ref.kappa, ref.loss_rows,
                                                         dv, spec.reduction, extra["loss"])
        cands.append(compare_output(_pair("candidate", "reference", "loss"), res.loss,
                                    np.asarray(ref.loss), bound, rt, const))
    tol = {k: tolerances.fused_allowed(case.dtype, extra[k]) for k in refs}
    for k in refs:
        cands.append(compare_output(_pair("candidate", "reference", k), res.grads[k], refs[k],
                                    bounds[k], *tol[k],
                                    ~fi.valid if k == "grad_x" else None))
    for k, (dirs, fd, band) in probes.items():
        rt, const = tol[k]
        allowed = (ref_fused.project(bounds[k], dirs, absolute=True) + band
                   + rt * ref_fused.project(refs[k], dirs, absolute=True)
                   + const * np.sum(np.abs(np.reshape(dirs[1], (len(dirs[0]), -1))), 1))
        cands.append(compare_output(_pair("candidate", "finite_difference", k),
                                    ref_fused.project(res.grads[k], dirs), fd, allowed, 0.0, 0.0))
    invs: tuple = ()
    if policy.repeat > 1:      # the judge's own figure (candidate/record.py), the tightest
        grad_cmps = [c for c in cands if c.pair[1].startswith("reference_grad")]
        invs = (determinism(res.nondet, policy.repeat, policy.nondet_tol,
                            min(c.atol for c in grad_cmps)),)
    rank_hints: list[str] = []
    if res.ranks:              # vocab-parallel ranks: each one's grad_x, and their agreement
        shards = [(a, b) for _, a, b, _, _ in res.ranks]
        rank_cmps, rank_invs, rank_hints = judge_fused_ranks(
            res.ranks, refs["grad_x"], bounds["grad_x"], tol["grad_x"], ~fi.valid,
            lambda: ref_fused.reference(fi, shards=shards).grad_x_parts)
        cands += rank_cmps
        invs += tuple(rank_invs)
    diagnosis: tuple[str, ...] = ()
    if not all(c.passed for c in cands) or rank_hints:
        no_chain = None
        if spec.softcap:
            nc = ref_fused.reference(fi, chain=False)
            no_chain = {"grad_x": nc.grad_x, "grad_w": nc.grad_w, "grad_b": nc.grad_b}
        allowed = {k: bounds[k] + tol[k][0] * np.abs(refs[k]) + tol[k][1] for k in refs}
        diagnosis = tuple(diagnose(res.grads, refs, allowed, fi, no_chain=no_chain))
        if rank_hints:         # a sharding pattern first (it explains grad_x's own lines)
            unreduced = "grad_x is not all-reduced" in rank_hints[0]
            diagnosis = tuple(rank_hints) + tuple(d for d in diagnosis if not (
                unreduced and d.startswith("grad_x")))
        if any(c.pair[0] == "candidate_loss" and not c.passed for c in cands):
            diagnosis += ("loss: the returned loss value is wrong (the gradients may still be "
                          "right: see their own pairs)",)
    return _result(frame, cands + ours, diagnosis, methods, probes, invs)


def _result(frame: Frame, comparisons, diagnosis, methods, probes, invs=()) -> CaseResult:
    return frame.result(comparisons, invs, diagnosis=diagnosis, coverage=coverage(
        methods, (), sum(len(p[0][0]) for p in probes.values()),
        "complex-step probes along x rows, W vocabulary rows, b entries"))


def call_fused(candidate, fi, policy: CallPolicy):
    """The candidate on ``fi``, wherever it runs (its CandidateProtocol.call_fused)."""
    return candidate.call_fused(fi, timeout=policy.limit, repeat=policy.repeat)
