"""Judge one fused linear cross-entropy case: references, the candidate, per-output pairs."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..candidate import CallPolicy
from ..judge import tolerances
from ..judge.compare import Comparison
from ..judge.fused import LABELS, compare_output, diagnose
from ..reference import fused as ref_fused
from ..suite.cases import Case
from ..suite.fused import make_fused_inputs
from .results import CaseResult, Coverage

GRADS = ("grad_x", "grad_w", "grad_b")


def _pair(a: str, b: str, k: str) -> tuple[str, str]:
    return f"{a}_{LABELS[k]}", f"{b}_{LABELS[k]}"


def run_fused_case(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy()
                   ) -> CaseResult:
    """The blockwise float64 reference against autodiff and the FD probes, and the
    candidate's loss / grad_x / grad_W / grad_b against the reference."""
    t0 = time.perf_counter()
    upstream = "auto"
    if candidate is not None:
        upstream = ("random" if candidate.settings.convention == "loss"
                    or candidate.takes("grad_output") else "one")
    fi = make_fused_inputs(case, upstream=upstream)
    f64 = fi.float64()
    spec = case.spec
    dtype = case.dtype if candidate is not None else "float64"

    def row_error(kappa):
        return tolerances.fused_row_error(dtype, kappa, f64.x, f64.lm_weight, f64.bias,
                                          spec.divisor, spec.softcap)

    ref = ref_fused.reference(fi, row_error=row_error)
    refs = {"grad_x": ref.grad_x, "grad_w": ref.grad_w}
    bounds = {"grad_x": ref.bound_x, "grad_w": ref.bound_w}
    if ref.grad_b is not None:
        refs["grad_b"], bounds["grad_b"] = ref.grad_b, ref.bound_b
    base = dict(name=case.name, params=case.params(), group=case.group, scale=ref.scale,
                kappa=ref.kappa, target=candidate.label if candidate is not None else None)
    notes: list[str] = []
    comparisons: list[Comparison] = []
    # softcheck's own methods against each other: float64 (the bounds rescaled to float64's
    # roundoff: every term of fused_row_error is proportional to u_compute in float64/32)
    shrink = tolerances.TABLE["float64"].u_compute / tolerances.TABLE[dtype].u_compute
    ad = ref_fused.autodiff(fi)
    methods = ["reference"]
    if ad is not None:
        methods.append("autodiff")
        for k in refs:
            a, at, rt = tolerances.fused_allowed("float64", bounds[k] * shrink, refs[k])
            comparisons.append(compare_output(_pair("autodiff", "reference", k),
                                              getattr(ad, k), refs[k], a, at, rt))
    probes = ref_fused.fd_probes(fi, ref, seed=case.seed, count=max(case.probes, 2))
    methods.append("finite_difference")
    for k, (dirs, fd, band) in probes.items():
        proj = ref_fused.project(refs[k], dirs)
        allowed = ref_fused.project(bounds[k] * shrink, _abs(dirs)) + band
        comparisons.append(compare_output(_pair("reference", "finite_difference", k), proj,
                                          fd, allowed, float(np.max(allowed)), 0.0))
    diagnosis: tuple[str, ...] = ()
    error = output = None
    if candidate is not None:
        res = call_fused(candidate, fi, policy)
        notes += list(res.notes)
        output = res.output or None
        if res.error:
            return CaseResult(passed=False, error=res.error, notes=tuple(notes),
                              seconds=time.perf_counter() - t0, output=output, **base)
        extra = {k: 0.0 for k in refs}
        extra["loss"] = 0.0
        if case.tolerance == "torch":
            extra.update(ref_fused.torch_errors(fi, ref))
            notes.append("--tolerance torch: each output also allowed PyTorch's own largest "
                         "error in " + case.dtype + " (" + ", ".join(
                             f"{LABELS[k]} {v:.3g}" for k, v in extra.items()) + ")")
        allowed = {}
        for k in refs:
            a, at, rt = tolerances.fused_allowed(case.dtype, bounds[k], refs[k], extra[k])
            allowed[k] = a
            comparisons.insert(len([c for c in comparisons if c.pair[0] == "candidate"]),
                               compare_output(_pair("candidate", "reference", k),
                                              res.grads[k], refs[k], a, at, rt, ~fi.valid))
        if res.loss is not None:
            dv = tolerances.fused_logit_error(case.dtype, f64.x, f64.lm_weight, f64.bias,
                                              spec.divisor)
            a, at, rt = tolerances.fused_loss_allowed(case.dtype, ref.kappa, ref.loss_rows, dv,
                                                      spec.reduction, ref.loss, extra["loss"])
            comparisons.insert(0, compare_output(_pair("candidate", "reference", "loss"),
                                                 res.loss, ref.loss, a, at, rt))
        for k, (dirs, fd, band) in probes.items():
            proj = ref_fused.project(res.grads[k], dirs)
            a = ref_fused.project(allowed[k], _abs(dirs)) + band
            comparisons.append(compare_output(_pair("candidate", "finite_difference", k),
                                              proj, fd, a, float(np.max(a)), 0.0))
        failed = [c for c in comparisons if not c.passed and c.pair[0].startswith("candidate")]
        if failed:
            no_chain = None
            if spec.softcap:
                nc = ref_fused.reference(fi, chain=False)
                no_chain = {"grad_x": nc.grad_x, "grad_w": nc.grad_w, "grad_b": nc.grad_b}
            diagnosis = tuple(diagnose(res.grads, refs, allowed, f64, no_chain=no_chain))
            if any(c.pair[0] == "candidate_loss" for c in failed):
                diagnosis += ("loss: the returned loss value is wrong (the gradients may be "
                              "right: see their pairs)",)
    passed = all(c.passed for c in comparisons)
    coverage = Coverage(tuple(methods), (), sum(len(p[0]) for p in probes.values()),
                        "directional probes on x rows and W vocabulary rows")
    return CaseResult(passed=passed, error=error, comparisons=tuple(comparisons),
                      coverage=coverage, diagnosis=diagnosis, notes=tuple(notes),
                      seconds=time.perf_counter() - t0, output=output, **base)


def _abs(dirs):
    return dirs[0], np.abs(dirs[1])


def call_fused(candidate, fi, policy: CallPolicy):
    """The candidate on ``fi``: in its worker process (shared memory), or in this one."""
    from ..candidate.fused import call_in_worker, invoke_fused

    if not hasattr(candidate, "fn"):                   # a WorkerCandidate: isolated
        return call_in_worker(candidate, fi, policy.limit, policy.repeat)

    def fresh():
        return dataclasses.replace(fi, x=fi.x.copy(), lm_weight=fi.lm_weight.copy(),
                                   bias=None if fi.bias is None else fi.bias.copy())

    return invoke_fused(candidate.fn, candidate.settings, fresh, policy.repeat)
