"""Run cases: compute each method's gradient, compare every pair, collect the verdicts."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import analytic, references, tolerances
from .cases import Case, Config, make_inputs, suite
from .compare import Comparison, compare, invariants
from .report import CaseResult, FDInfo, Report
from .spec import Inputs, SoftcheckError

REFERENCE_PAIRS = (("analytic", "autodiff"), ("analytic", "finite_difference"),
                   ("autodiff", "finite_difference"))
CANDIDATE_PAIRS = (("candidate", "analytic"), ("candidate", "autodiff"),
                   ("candidate", "finite_difference"))


def upcast(inputs: Inputs) -> Inputs:
    """The same inputs in float64 (exact): what the references differentiate."""
    t = inputs.target if inputs.spec.hard else inputs.target64
    return dataclasses.replace(inputs, logits=inputs.logits64, target=t, weight=inputs.weight64)


def run_case(case: Case, candidate=None, *, timeout: float | None = None) -> CaseResult:
    """Judge one case: the three references against each other, and the candidate if given."""
    t0 = time.perf_counter()
    upstream = "auto"
    if candidate is not None:
        upstream = "random" if candidate.takes("grad_output") else "one"
    inputs = make_inputs(case, upstream=upstream)
    inputs64 = upcast(inputs)
    stats = references.row_stats(inputs64)
    scale = stats.scale
    kappa = tolerances.condition(inputs64.logits, case.spec.temperature, case.spec.softcap)
    base = dict(name=case.name, params=case.params(), group=case.group, scale=scale, kappa=kappa,
                target=candidate.label if candidate is not None else None)
    if case.order == 2:
        result = _second_order(case, inputs64, candidate, scale, kappa, timeout, base)
        return dataclasses.replace(result, seconds=time.perf_counter() - t0)

    grads: dict[str, np.ndarray] = {}
    dtypes = {"analytic": case.dtype, "autodiff": "float64", "finite_difference": "float64"}
    notes: list[str] = []
    if candidate is not None:
        call = candidate.call(inputs, timeout=timeout)
        notes.extend(call.notes)
        if call.error:
            return CaseResult(passed=False, error=call.error, notes=tuple(notes),
                              seconds=time.perf_counter() - t0, **base)
        grads["candidate"] = call.grad
        dtypes["candidate"] = case.dtype
        dtypes["analytic"] = "float64"       # the candidate is judged by float64 references
        grads["analytic"] = analytic.gradient(inputs64)
    else:
        grads["analytic"] = analytic.gradient(inputs)
    grads["autodiff"] = references.autodiff(inputs64)
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
                                         native if a == "candidate" else 0.0))
    checked = "candidate" if candidate is not None else "analytic"
    invs = invariants(checked, grads[checked], inputs64, dtype=dtypes[checked], kappa=kappa,
                      scale=scale, band=native)
    passed = all(c.passed for c in comparisons) and all(i.passed for i in invs)
    diagnosis: tuple[str, ...] = ()
    if candidate is not None and not passed:
        from .diagnose import diagnose

        diagnosis = tuple(diagnose(grads["candidate"], inputs, case, comparisons, invs))
    info = FDInfo(fd.method, fd.error_estimate, float(np.median(fd.step)), fd.coverage,
                  fd.columns, len(fd.probes))
    return CaseResult(passed=passed, comparisons=tuple(comparisons), invariants=tuple(invs),
                      fd=info, diagnosis=diagnosis, notes=tuple(notes),
                      seconds=time.perf_counter() - t0, **base)


def _native_band(inputs: Inputs, ref64: np.ndarray) -> float:
    """K_NATIVE × the largest error of the closed form computed in the case dtype itself."""
    with np.errstate(invalid="ignore", over="ignore"):
        nat = analytic.gradient(inputs, native=True).astype(np.float64)
        err = np.abs(nat - ref64)
    err = err[np.isfinite(err)]
    return tolerances.K_NATIVE * float(np.max(err, initial=0.0))


def _compare_pair(a, b, grads, fd, dtypes, inputs64, kappa, scale, extra=0.0) -> Comparison:
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
                  band=band)
    if fd.probes and "finite_difference" in (a, b):
        cmp = _fold_probes(cmp, a if b == "finite_difference" else b, fd)
    return cmp


def _fold_probes(cmp: Comparison, name: str, fd) -> Comparison:
    """Directional probes: Σ_c x_ic d_ic of method ``name`` against the complex-step
    derivative along d, per row (the projections were taken when the probes were made)."""
    worst = 0.0
    for probe in fd.probes:
        got = probe.projections[name]
        allowed = cmp.atol * probe.l1 + probe.band
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
    hv = {"analytic": analytic.hvp(inputs64, d), "autodiff": references.autodiff_hvp(inputs64, d)}
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
        / case.spec.temperature
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


@dataclass(frozen=True)
class Job:
    """One case to judge, with the candidate (if any) and its per-call timeout."""

    case: Case
    candidate: object = None
    timeout: float | None = None


def run_cases(cases: list[Case], candidate=None, *, timeout=None, fail_fast=False,
              progress: Callable[[CaseResult], None] | None = None, jobs: int = 1
              ) -> list[CaseResult]:
    return run_jobs([Job(c, candidate, timeout) for c in cases], fail_fast=fail_fast,
                    progress=progress, workers=jobs)


def run_jobs(jobs: list[Job], *, fail_fast=False, progress=None, workers: int = 1
             ) -> list[CaseResult]:
    """Judge every job, in order.  With ``workers > 1`` the jobs run in that many worker
    processes when the estimated work repays starting them (each imports JAX, ~1 s) and every
    candidate can be reloaded there (it came from a TARGET string); otherwise in this process.
    Results come back in job order either way, and are the same numbers."""
    check_memory([j.case for j in jobs], workers if len(jobs) > 1 else 1)
    if progress is not None and hasattr(progress, "start"):
        progress.start(len(jobs))
    if workers > 1 and len(jobs) > 1 and _parallel_pays(jobs) and all(
            j.candidate is None or j.candidate.source for j in jobs):
        return _run_pool(jobs, workers, fail_fast, progress)
    results = []
    for job in jobs:
        if progress is not None and hasattr(progress, "case_started"):
            progress.case_started(job.case.name)
        r = run_case(job.case, job.candidate, timeout=job.timeout)
        results.append(r)
        if progress:
            progress(r)
        if fail_fast and not r.passed:
            break
    return results


# Starting a worker process (Python + NumPy + JAX imports, first compiles) costs about 1.5 s
# here; FD dominates a case's cost at about 2 element evaluations per B·C² at ~1e9/s.  Below
# a few seconds of estimated work the pool only adds its start-up time.
POOL_STARTUP_SECONDS = 1.5
_EVALS_PER_SECOND = 1e9


# Peak memory of one case: JAX and friends (~0.4 GB resident) plus ~300 bytes per logit (the
# inputs in their dtype and float64, one-hot/probability targets, four gradients, the
# candidate's guarded copies, JAX's temporaries, the FD chunk of perturbed copies and the
# comparisons' temporaries: about 20-30 float64 arrays of N·C).  Measured: 8×262144 float64 (2.1 M logits) peaks at 0.49 GB RSS (0.18 GB idle).
BASE_BYTES = 0.4e9
BYTES_PER_LOGIT = 300


def estimate_bytes(case: Case) -> float:
    return BASE_BYTES + BYTES_PER_LOGIT * case.batch * case.classes


def available_bytes() -> float | None:
    """Memory this process may still use: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cases: list[Case], workers: int = 1) -> None:
    """Refuse (exit 2), before allocating anything, a case this machine cannot hold (with
    ``workers`` processes, each may hold the largest case at once)."""
    if not cases:
        return
    big = max(cases, key=estimate_bytes)
    need, have = workers * estimate_bytes(big), available_bytes()
    if have is not None and need > have:
        each = f", times {workers} workers" if workers > 1 else ""
        raise SoftcheckError(
            f"case {big.name} needs about {need / 2**30:.1f} GiB of memory "
            f"({big.batch}×{big.classes} logits at ~{BYTES_PER_LOGIT} bytes each{each}) but "
            f"{have / 2**30:.1f} GiB are available; lower --batch or --classes"
            + (" or --jobs" if workers > 1 else ""))


def estimate_seconds(case: Case) -> float:
    work = min(2.0 * case.batch * case.classes ** 2, case.fd_budget)
    return 2e-3 + work / _EVALS_PER_SECOND


def _parallel_pays(jobs: list[Job]) -> bool:
    return sum(estimate_seconds(j.case) for j in jobs) > 2 * POOL_STARTUP_SECONDS


def _run_pool(jobs, workers, fail_fast, progress) -> list[CaseResult]:
    import concurrent.futures as cf
    import multiprocessing

    # spawn, not fork: forking a process that has started JAX's threads can deadlock.
    ctx = multiprocessing.get_context("spawn")
    done: dict[int, CaseResult] = {}
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {}
        for i, job in enumerate(jobs):
            cand = job.candidate
            payload = (job.case, job.timeout, None if cand is None else
                       (cand.source, cand.hvp_source, cand.label))
            futures[pool.submit(_work, payload)] = i
        for fut in cf.as_completed(futures):
            i = futures[fut]
            r = fut.result()
            done[i] = r
            if progress:
                progress(r)
            if fail_fast and not r.passed:
                for f in futures:
                    f.cancel()
                break
    return [done[i] for i in sorted(done)]


_WORKER_CANDIDATES: dict = {}     # per worker process: (TARGET, hvp, label) → Candidate


def _work(payload) -> CaseResult:
    case, timeout, cand_info = payload
    cand = None
    if cand_info is not None:
        if cand_info not in _WORKER_CANDIDATES:
            from .candidate import load

            source, hvp_source, label = cand_info
            _WORKER_CANDIDATES[cand_info] = load(source, hvp=hvp_source, label=label)
        cand = _WORKER_CANDIDATES[cand_info]
    return run_case(case, cand, timeout=timeout)


def run(config: Config | None = None, *, fail_fast: bool = False, progress=None, jobs: int = 1,
        **options) -> Report:
    """Check softcheck's own three methods against each other over the suite."""
    cfg = config or Config(**options)
    t0 = time.perf_counter()
    cases, skipped = suite(cfg)
    results = run_cases(cases, fail_fast=fail_fast, progress=progress, jobs=jobs)
    return Report(tuple(results), "run", options_dict(cfg), tuple(skipped),
                  seconds=time.perf_counter() - t0)


def options_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
