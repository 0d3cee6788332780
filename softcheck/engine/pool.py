"""Run many cases: in order, or in worker processes when that pays; refuse what cannot fit."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..candidate import CallPolicy
from ..reference import finite_difference
from ..spec import SoftcheckError
from ..suite.cases import Case
from ..suite.config import numpy_dtype
from .case import run_case
from .results import CaseResult


@dataclass(frozen=True)
class Job:
    """One case to judge, with the candidate (if any) and how it is called."""

    case: Case
    candidate: object = None
    policy: CallPolicy = CallPolicy()


def judge(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy(), progress=None
          ) -> CaseResult:
    """One case: streamed a block of rows at a time when large (stream.py), else whole."""
    from .stream import run_streamed, should_stream

    if should_stream(case, candidate):
        return run_streamed(case, candidate, policy=policy, progress=progress)
    return run_case(case, candidate, policy=policy)


def run_cases(cases: list[Case], candidate=None, *, policy: CallPolicy = CallPolicy(),
              fail_fast=False, progress: Callable[[CaseResult], None] | None = None,
              jobs: int = 1) -> list[CaseResult]:
    return run_jobs([Job(c, candidate, policy) for c in cases], fail_fast=fail_fast,
                    progress=progress, workers=jobs)


def run_jobs(jobs: list[Job], *, fail_fast=False, progress=None, workers: int = 1
             ) -> list[CaseResult]:
    """Judge every job, in order.  With ``workers > 1`` the jobs run in that many worker
    processes when the estimated work repays starting them (each imports JAX, ~1 s) and every
    candidate can be reloaded there (it came from a TARGET string); otherwise in this process.
    Results come back in job order either way, and are the same numbers."""
    check_memory([j.case for j in jobs], workers if len(jobs) > 1 else 1,
                 [j.candidate for j in jobs])
    if progress is not None and hasattr(progress, "start"):
        progress.start(len(jobs))
    if workers > 1 and len(jobs) > 1 and _parallel_pays(jobs) and all(
            j.candidate is None or j.candidate.source for j in jobs):
        return _run_pool(jobs, workers, fail_fast, progress)
    results = []
    for job in jobs:
        if progress is not None and hasattr(progress, "case_started"):
            progress.case_started(job.case.name)
        r = judge(job.case, job.candidate, policy=job.policy, progress=progress)
        results.append(r)
        if progress:
            progress(r)
        if fail_fast and not r.passed:
            break
    return results


# Starting a worker process (Python + NumPy + JAX imports, first compiles) costs about 1.5 s
# here.  FD's column sweeps run ~2e7 element evaluations a second (measured: every column of
# 512×131072, 1.3e8 central evaluations, 7 s).  Below a few seconds of estimated work the pool
# only adds its start-up time.
POOL_STARTUP_SECONDS = 1.5
_EVALS_PER_SECOND = 2e7
#: a streamed case's: its column sweeps and probes in closed differences on two threads
#: (2026-12-07, fourth session: 2.5e8 swept and 5.4e8 probed at 4096×131072 in ~2.5 s)
_STREAMED_EVALS_PER_SECOND = 2e8


# Peak memory of one case: JAX and friends (~0.4 GB resident) plus ~300 bytes per logit (the
# inputs in their dtype and float64, one-hot/probability targets, four gradients, the
# candidate's guarded copies, JAX's temporaries, the FD chunk of perturbed copies and the
# comparisons' temporaries: about 20-30 float64 arrays of N·C).  Measured: 8×262144 float64 (2.1 M logits) peaks at 0.49 GB RSS (0.18 GB idle).
BASE_BYTES = 0.4e9
BYTES_PER_LOGIT = 300


#: fused linear cross-entropy (--hidden) never holds the logits: ~10 float64 arrays the size
#: of x or W (the reference's gradients and bounds, the candidate's returned gradients, the
#: shared-memory copies) and one 32 MiB block of logits at a time
BYTES_PER_FUSED_ENTRY = 80


#: a streamed case (stream.py), per logit: the logits in the case dtype and the gradient kept
#: in shared memory (4 bytes, 8 for float64: shared.py), plus what a plain candidate itself
#: allocates: its returned gradient (one array of its dtype, float32 at least; a repeated
#: call's comes after the first is kept and dropped); the references hold ~30 float64 arrays
#: of one block (stream.block_elements) in each judging thread and in the first pass's
#: (their heaps kept between blocks: engine/blocks.KeptHeap).  Measured
#: (docs/benchmarks.md): 4096×131072
#: float32 peaks at 6.2 GiB of Pss (model 7.1), bfloat16 at 3.15 GiB (the kept gradient is
#: counted at 4 bytes, as a float32 return would need).
STREAM_CANDIDATE_ARRAYS = 1
STREAM_BLOCK_ARRAYS = 30
#: a streamed convention kernel's own full-size arrays besides the kept gradient (the
#: repeat is digested, never held beside it: candidate/streamed.py): a plain in-place
#: kernel's gradient is its logits' copy-on-write pages, handed back as they are copied out,
#: so one covers a nondeterministic kernel's extra call, kept in the worker while the judge
#: holds the main one; an autograd.Function may save its softmax and return a gradient of
#: its own (two: a Liger-style one that writes its logits is counted too high, which errs
#: towards refusing); a loss or split kernel holds autograd's gradient and what it saved
STREAM_CONVENTION_ARRAYS = {"inplace": 1, "autograd": 2, "loss": 2, "split": 2}


def estimate_bytes(case: Case, candidate=None) -> float:
    """Peak bytes of one case: whole-array ~300 B/logit; streamed per dtype (stream.py) when
    the case streams with this ``candidate`` (a convention kernel: more of its own arrays)."""
    from .stream import JUDGE_THREADS, block_elements, should_stream

    if case.hidden is not None:
        return BASE_BYTES + BYTES_PER_FUSED_ENTRY * (case.batch + case.classes) * case.hidden
    n = case.batch * case.classes
    if not should_stream(case, candidate):
        return BASE_BYTES + BYTES_PER_LOGIT * n
    item = numpy_dtype(case.dtype).itemsize
    kept = 8 if item >= 8 else 4
    st = None if candidate is None else candidate.settings
    own = STREAM_CANDIDATE_ARRAYS
    if st is not None and st.convention != "grad":
        autograd = getattr(st, "autograd", False) and st.convention == "inplace"
        own = STREAM_CONVENTION_ARRAYS.get("autograd" if autograd else st.convention,
                                           max(STREAM_CONVENTION_ARRAYS.values()))
    return (BASE_BYTES + n * (item + kept + own * max(item, 4))
            + STREAM_BLOCK_ARRAYS * 8 * block_elements(case.dtype) * (JUDGE_THREADS + 1))


def per_logit(case: Case, candidate=None) -> str:
    """How ``estimate_bytes`` counted, for the refusal."""
    from .stream import should_stream, streamable

    if case.hidden is not None or not should_stream(case, candidate):
        why = ""
        if case.hidden is None and streamable(case) and not streamable(case, candidate):
            why = (", not streamed: a --convention loss/inplace/split kernel streams in its "
                   "own worker process only (not --in-process), --tensor-parallel ranks never")
        return f"~{BYTES_PER_LOGIT} bytes each{why}"
    return (f"~{(estimate_bytes(case, candidate) - BASE_BYTES) / (case.batch * case.classes):.0f} "
            f"bytes each in {case.dtype}, streamed")


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


def check_memory(cases: list[Case], workers: int = 1, candidates=None) -> None:
    """Refuse (exit 2), before allocating anything, a case this machine cannot hold (with
    ``workers`` processes, each may hold the largest case at once); ``candidates``: each
    case's candidate (it decides whether the case streams)."""
    if not cases:
        return
    pairs = list(zip(cases, candidates or [None] * len(cases)))
    big, cand = max(pairs, key=lambda p: estimate_bytes(*p))
    need, have = workers * estimate_bytes(big, cand), available_bytes()
    if have is not None and need > have:
        each = f", times {workers} workers" if workers > 1 else ""
        raise SoftcheckError(
            f"case {big.name} needs about {need / 2**30:.1f} GiB of memory "
            f"({big.batch}×{big.classes} logits at {per_logit(big, cand)}{each}) but "
            f"{have / 2**30:.1f} GiB are available; "
            + ("drop --huge (N·C > 2^31 elements)" if "huge-int32" in (big.tag or "") else
               "lower --batch or --classes") + (" or --jobs" if workers > 1 else ""))


def estimate_seconds(case: Case, candidate=None, *, isolate: bool | None = None) -> float:
    """FD's share of a case's time (suites.estimate_seconds adds the rest); ``isolate``:
    whether the candidate will run in its worker (a convention kernel streams only there)."""
    from .stream import probe_count, should_stream

    streams = should_stream(case, candidate, isolate=isolate)
    probes = probe_count(case) if streams else case.probes
    work = finite_difference.fd_work(case.batch, case.classes, case.fd_budget, probes)
    return 2e-3 + work / (_STREAMED_EVALS_PER_SECOND if streams else _EVALS_PER_SECOND)


def _parallel_pays(jobs: list[Job]) -> bool:
    return sum(estimate_seconds(j.case, j.candidate) for j in jobs) > 2 * POOL_STARTUP_SECONDS


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
            payload = (job.case, job.policy, None if cand is None else
                       (cand.source, cand.hvp_source, cand.label, cand.settings,
                        cand.x64))
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


_WORKER_CANDIDATES: dict = {}     # per pool process: (TARGET, hvp, label, settings, x64) → candidate


def _work(payload) -> CaseResult:
    """One case in a pool process; an isolated candidate gets its own worker there too."""
    case, policy, cand_info = payload
    cand = None
    if cand_info is not None:
        if cand_info not in _WORKER_CANDIDATES:
            source, hvp_source, label, settings, x64 = cand_info
            if x64 is None:
                from ..candidate import load

                _WORKER_CANDIDATES[cand_info] = load(source, hvp=hvp_source, label=label,
                                                     settings=settings, in_process=True)
            else:
                from ..candidate.worker import IsolatedCandidate

                _WORKER_CANDIDATES[cand_info] = IsolatedCandidate(
                    source, hvp_source, label, x64=x64, settings=settings)
        cand = _WORKER_CANDIDATES[cand_info]
    return judge(case, cand, policy=policy)
