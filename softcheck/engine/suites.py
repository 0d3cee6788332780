"""The three ways to run a suite (run, check, batch), ending in one Report assembly."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable

from ..candidate import CallPolicy, Candidate, isolated, load, relative_to
from ..spec import SoftcheckError
from ..suite import batchfile
from ..suite.cases import Case
from ..suite.kernel import select
from ..suite.config import Config
from ..suite.user import user_case
from .pool import Job, run_jobs
from .pool import estimate_seconds as pool_estimate
from .results import Report


def environment() -> dict:
    """Python, NumPy and JAX versions and the backend, recorded once per report."""
    import numpy

    from ..suite.inputs import SEED_SCHEME

    env = {"python": platform.python_version(), "numpy": numpy.__version__,
           "platform": platform.platform(), "seed_scheme": SEED_SCHEME}
    try:
        from ..reference.jaxsetup import backend_info

        env.update(backend_info())
    except Exception as exc:  # noqa: BLE001 - the report must still be written
        env.update({"jax": None, "backend": None, "jax_error": str(exc)})
    return env


def options_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def execute(command: str, jobs: list[Job], skipped: list[str], options: dict, *,
            target: str | None = None, fail_fast: bool = False, progress=None,
            workers: int = 1, probe_dtypes: bool = False) -> Report:
    """Judge the jobs and assemble the Report: the one place every command ends.

    Each candidate of the jobs runs in its own worker process when its policy says so
    (and it can be reloaded there); every worker, and all it started, has ended when this
    returns.  JAX's float64 flag is as the caller had it.  ``probe_dtypes`` (the user did
    not pin --dtype): a candidate's float64 cases are dropped when one small call shows it
    computes in float32 (engine/precision.py)."""
    from ..reference.jaxsetup import x64_restored
    from .precision import fit

    t0 = time.perf_counter()
    jobs, workers_started, process = _isolate(jobs)
    try:
        with x64_restored():
            jobs, dropped = fit(jobs, process, probe=probe_dtypes)
            skipped = [*skipped, *dropped]
            results = run_jobs(jobs, fail_fast=fail_fast, progress=progress, workers=workers)
            env = environment()
    finally:
        for w in workers_started:
            w.close()
    if process:
        env["candidate_process"] = process
    return Report(tuple(results), command, options, tuple(skipped), target=target,
                  seconds=time.perf_counter() - t0, environment=env)


def _isolate(jobs: list[Job]) -> tuple[list[Job], list, dict]:
    """Each candidate (one per TARGET) swapped for a worker process where its policy isolates
    it; JAX float64 is turned on there before the TARGET loads when any of its cases is
    float64.  Returns the jobs, the workers to close, and what the report says of them."""
    started: dict[int, object] = {}
    process: dict = {}
    out = []
    try:
        for job in jobs:
            cand = job.candidate
            if cand is None:
                out.append(job)
                continue
            if id(cand) not in started and cand.settings.tensor_parallel > 1:
                if cand.probe is not None:         # its ranks start as ranks: not reused
                    cand.probe.close()
                started[id(cand)] = _ranked(cand, job, jobs)
                st = cand.settings
                process[cand.label] = {"isolated": True, "repeat": job.policy.repeat,
                                       "tensor_parallel": st.tensor_parallel,
                                       "backend": "shard_map" if st.framework == "jax"
                                       else st.backend, "split": st.split}
            if id(cand) not in started:
                iso = None
                if job.policy.isolate:
                    x64 = any(j.case.dtype == "float64" for j in jobs if j.candidate is cand)
                    iso = isolated(cand, x64=x64, memory_limit=job.policy.memory_limit)
                started[id(cand)] = iso or cand
                process[cand.label] = (
                    {"isolated": True, "jax_enable_x64": iso.x64, "repeat": job.policy.repeat}
                    if iso is not None else
                    {"isolated": False, "repeat": job.policy.repeat,
                     "why": "--in-process" if not job.policy.isolate else
                     "a lambda, closure or __main__ function cannot be re-imported by "
                     "module and name: it ran in softcheck's process"})
            box = started[id(cand)].sandbox
            if box and "sandbox" not in process[cand.label]:
                from ..candidate.sandbox import report as sandbox_report

                process[cand.label]["sandbox"] = sandbox_report(box)
            out.append(dataclasses.replace(job, candidate=started[id(cand)]))
    except BaseException:
        for w in started.values():
            w.close()
        raise
    return out, [w for w in started.values() if w is not None], process


def _ranked(cand, job: Job, jobs: list[Job]):
    """The W rank processes of a --tensor-parallel candidate, or (JAX) its one shard_map
    worker hosting W devices (engine/ranks.py)."""
    from ..candidate.sharding import layout, shards
    from .ranks import RankedCandidate
    from .shardmap import ShardMapCandidate

    if not job.policy.isolate:
        raise SoftcheckError("--tensor-parallel runs each rank in its own process: it cannot "
                             "be combined with --in-process")
    if cand.source is None:
        raise SoftcheckError("--tensor-parallel reloads the TARGET in every rank: give it as "
                             "FILE.py:fn or package.module:fn (not a lambda or closure)")
    st = cand.settings
    if any(getattr(j.case, "layout", "contiguous") != "contiguous" for j in jobs
           if j.candidate is cand):
        layout = next(j.case.layout for j in jobs if j.candidate is cand
                      and getattr(j.case, "layout", "contiguous") != "contiguous")
        raise SoftcheckError(f"--layout {layout} is not passed on to --tensor-parallel ranks "
                             "(each gets its own column shard): drop one of the two")
    jax = st.framework == "jax"
    for v in sorted({j.case.classes for j in jobs if j.candidate is cand}):
        (layout if jax else shards)(v, st.tensor_parallel, st.split)   # exit 2 before starting
    x64 = any(j.case.dtype == "float64" for j in jobs if j.candidate is cand)
    return (ShardMapCandidate if jax else RankedCandidate)(cand.source, cand.label, st, x64=x64,
                                                           memory_limit=job.policy.memory_limit)


def with_inputs(cfg: Config, found: tuple[list[Case], list[str]]):
    """The suite's cases, and the user's own arrays (``--inputs``) as one more case."""
    cases, skipped = found
    return (cases + [user_case(cfg)] if cfg.inputs else cases), skipped


def run(cfg: Config, *, fail_fast: bool = False, progress=None, jobs: int = 1) -> Report:
    """softcheck's own three methods against each other over the suite."""
    cases, skipped = with_inputs(cfg, select(cfg))
    return execute("run", [Job(c) for c in cases], skipped, options_dict(cfg),
                   fail_fast=fail_fast, progress=progress, workers=jobs)


def check_candidate(cand: Candidate, cfg: Config, *, policy: CallPolicy = CallPolicy(),
                    fail_fast=False, progress=None, jobs: int = 1) -> Report:
    """A candidate against the three references over the check suite (``check_suite``)."""
    cases, skipped = with_inputs(cfg, select(cfg, check=True, candidate=cand))
    return execute("check", [Job(c, cand, policy) for c in cases], skipped, options_dict(cfg),
                   target=cand.label, fail_fast=fail_fast, progress=progress, workers=jobs,
                   probe_dtypes=cfg.dtype is None)


# --------------------------------------------------------------------------------- estimates

# Beyond FD's evaluations (pool.estimate_seconds), a case costs about this per logit: the
# inputs, the closed form, JAX autodiff, the probes, the relations and the comparisons.
# Measured on 2 cores (2026-11-25): 256×32000 float32 `check` of torch's cross_entropy 17.9 s
# whole process, 1.6 s of it FD (~2e-6 s per logit); 8×262144 float64 5.5 s (~2.4e-6).
SECONDS_PER_LOGIT = 2e-6
# A streamed case (engine/stream.py) costs less per logit (blocks in cache, no relations):
# measured quiet (2026-12-07, fourth session, docs/benchmarks.md) 4096×131072 float32 of the
# numpy example 47–60 s whole process, ~2.6 s of it FD's budget and probe (pool.py's
# streamed rate): ~8.3e-8 s per logit besides FD.
STREAMED_SECONDS_PER_LOGIT = 8.3e-8
# A streamed convention kernel adds, per other upstream gradient, one more call and a closed
# form + comparison a block at a time: measured the same day, 4096×131072 float32 of the
# Liger-style in-place example, 6.4–9.3 s for its one variant (g = 1): ~1.4e-8 s per logit.
STREAMED_CALL_SECONDS_PER_LOGIT = 1.4e-8


# Fused linear cross-entropy (--hidden): the reference's six N·V·H products (four float64,
# two float32) at ~25 GFLOP/s float64 on 2 cores; measured 2048×32000×1024: ~27 s unloaded.
FUSED_SECONDS_PER_MAC = 4e-10


def estimate_seconds(cases: list[Case], candidate=None, *, isolate: bool | None = None
                     ) -> float:
    """A rough prediction of a run's time (the CLI prints it before a long run); whether a
    case streams depends on the ``candidate`` (``isolate``: it will run in its worker)."""
    from .stream import should_stream

    conv = candidate is not None and candidate.settings.convention != "grad"

    def per_logit(c: Case) -> float:
        if not should_stream(c, candidate, isolate=isolate):
            return SECONDS_PER_LOGIT
        extra = len(upstreams_of(c)) * STREAMED_CALL_SECONDS_PER_LOGIT if conv else 0.0
        return STREAMED_SECONDS_PER_LOGIT + extra

    return sum(FUSED_SECONDS_PER_MAC * c.batch * c.classes * c.hidden if c.hidden is not None
               else pool_estimate(c, candidate, isolate=isolate)
               + per_logit(c) * c.batch * c.classes
               for c in cases)


def upstreams_of(case: Case) -> tuple[str, ...]:
    """The other upstream gradients a convention kernel is called for (conventions.upstreams)."""
    return ("g=1", "g=scalar") if case.spec.reduction == "none" else ("g=1",)


def estimate_run(cfg: Config, *, check: bool = False, candidate=None,
                 isolate: bool | None = None) -> float:
    cases, _ = with_inputs(cfg, select(cfg, check=check, candidate=candidate))
    return estimate_seconds(cases, candidate, isolate=isolate)


def estimate_batch(bp: BatchPlan) -> float:
    return estimate_seconds([j.case for j in _batch_jobs(bp)[0]])


# ------------------------------------------------------------------------------- batch files

@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """A batch file read and checked, with its candidates loaded (one per TARGET)."""

    plan: batchfile.Plan
    candidates: dict            # group name -> Candidate (candidate groups only)


#: describing workers a batch starts at once (each waits on its TARGET's imports)
LOAD_AT_ONCE = 4


def load_plan(path: str, *, in_process: bool = False,
              meanwhile: Callable[[], object] | None = None) -> BatchPlan:
    """Read, check and expand a batch file and load its TARGETs (each described by its own
    worker process, up to LOAD_AT_ONCE starting at once while ``meanwhile`` runs here — the
    judge's own imports; imported here only ``in_process``, one after another): every
    problem is raised (naming file, group and key, the first group's first) before any case
    runs."""
    plan = batchfile.plan(path)
    wanted: list[tuple] = []                # (group, key, target, call) in file order
    for g in plan.groups:
        if g.target is None:
            continue
        seq = {(c.hidden is not None, c.shape, c.shift) for c in g.configs}
        if len(seq) > 1:
            raise SoftcheckError(f"{g.where}: hidden, shape and shift take one value in "
                                 "a group with a target (how it is called)")
        fused, shape, shift = seq.pop() if seq else (False, "nv", 0)
        wanted.append((g, "target", g.target,
                       g.call + (("fused", fused), ("shape", shape), ("shift", shift))))
        if g.hvp is not None:
            wanted.append((g, "hvp", g.hvp, ()))
    loaded = _load_all(wanted, plan.base, in_process, meanwhile)
    cands = {}
    for g, key, target, call in wanted:
        cand = loaded[relative_to(target, plan.base), call]
        cands[g.name] = cand if key == "target" else cands[g.name].with_hvp(cand)
    return BatchPlan(plan, cands)


def _load_all(wanted: list, base: str, in_process: bool, meanwhile) -> dict:
    """Each (TARGET, how it is called) once: {(target, call): Candidate}; on any failure
    every worker started ends and the first group's error (in file order) is raised."""
    from concurrent.futures import ThreadPoolExecutor

    from ..candidate.conventions import settings

    def one(target, call):
        return load(relative_to(target, base), label=target, settings=settings(**dict(call)),
                    base=base, in_process=in_process)

    futures: dict = {}
    with ThreadPoolExecutor(1 if in_process else LOAD_AT_ONCE) as pool:
        for _, _, target, call in wanted:
            key = (relative_to(target, base), call)
            if key not in futures:              # (setdefault would submit it again)
                futures[key] = pool.submit(one, target, call)
        try:
            if meanwhile is not None:
                meanwhile()
        finally:                # (an interrupt here too: the workers that started end)
            done = {k: f.exception() or f.result() for k, f in futures.items()}
            if sys.exc_info()[0] is not None:
                _close_loaded(done)
    bad = [(g, key, done[relative_to(t, base), call]) for g, key, t, call in wanted
           if isinstance(done[relative_to(t, base), call], BaseException)]
    if bad:
        _close_loaded(done)
        g, key, e = bad[0]
        if isinstance(e, SoftcheckError):
            raise SoftcheckError(f"{g.where}: key {key!r}: {e}") from None
        raise e
    return done


def _close_loaded(done: dict) -> None:
    for c in done.values():
        if not isinstance(c, BaseException):
            c.close()


def close_plan(bp: BatchPlan) -> None:
    """End the workers that described a plan's TARGETs (those no case took over)."""
    for c in bp.candidates.values():
        c.close()


def _batch_jobs(bp: BatchPlan, policy: CallPolicy = CallPolicy()
                ) -> tuple[list[Job], list[str]]:
    """Every case of a plan as a Job (in file order), and the skipped notes."""
    work, skipped = [], []
    for g in bp.plan.groups:
        cand = bp.candidates.get(g.name)
        pol = policy if g.timeout is None else dataclasses.replace(policy, timeout=g.timeout)
        for cfg in g.configs:
            if cfg.inputs:                      # relative to FILE, as its targets
                cfg = cfg.replace(inputs=os.path.join(bp.plan.base, cfg.inputs))
            cases, skip = with_inputs(cfg, select(cfg, check=cand is not None))
            work += [Job(c, cand, pol) for c in cases]
            skipped += [f"{g.name}: {s}" for s in skip if f"{g.name}: {s}" not in skipped]
    return work, skipped


def batch_listing(bp: BatchPlan) -> list[str]:
    """What ``softcheck batch --list`` prints: each group with its target and case count, then
    its cases; nothing is computed."""
    work, skipped = _batch_jobs(bp)
    lines = []
    for g in bp.plan.groups:
        names = [j.case.name for j in work if j.case.group == g.name]
        what = f"checks {g.target}" if g.target else "softcheck's own methods"
        lines.append(f"{g.name}: {len(names)} cases, {what}")
        lines += [f"  {n}" for n in names]
    lines += [f"skipped: {s}" for s in skipped]
    lines.append(f"{len(work)} cases in {len(bp.plan.groups)} groups")
    return lines


def run_batch(bp: BatchPlan, *, policy: CallPolicy = CallPolicy(), fail_fast: bool = False,
              jobs: int = 1, progress=None) -> Report:
    """Every group of a plan; one Report with each case's group (and target)."""
    work, skipped = _batch_jobs(bp, policy)
    options = {"file": bp.plan.path,
               "groups": [{"name": g.name, "target": g.target,
                           "configs": [options_dict(c) for c in g.configs]}
                          for g in bp.plan.groups]}
    return execute("batch", work, skipped, options, fail_fast=fail_fast, progress=progress,
                   workers=jobs)


__all__ = ["BatchPlan", "Case", "batch_listing", "check_candidate", "execute", "load_plan",
           "options_dict", "run", "run_batch"]
