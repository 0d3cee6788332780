"""The three ways to run a suite (run, check, batch), ending in one Report assembly."""

from __future__ import annotations

import dataclasses
import platform
import time

from ..candidate import Candidate, load, relative_to
from ..spec import SoftcheckError
from ..suite import batchfile
from ..suite.cases import Case, check_suite, suite
from ..suite.config import Config
from .pool import Job, run_jobs
from .results import Report


def environment() -> dict:
    """Python, NumPy and JAX versions and the backend, recorded once per report."""
    import numpy

    env = {"python": platform.python_version(), "numpy": numpy.__version__,
           "platform": platform.platform()}
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
            workers: int = 1) -> Report:
    """Judge the jobs and assemble the Report: the one place every command ends."""
    t0 = time.perf_counter()
    results = run_jobs(jobs, fail_fast=fail_fast, progress=progress, workers=workers)
    return Report(tuple(results), command, options, tuple(skipped), target=target,
                  seconds=time.perf_counter() - t0, environment=environment())


def run(cfg: Config, *, fail_fast: bool = False, progress=None, jobs: int = 1) -> Report:
    """softcheck's own three methods against each other over the suite."""
    cases, skipped = suite(cfg)
    return execute("run", [Job(c) for c in cases], skipped, options_dict(cfg),
                   fail_fast=fail_fast, progress=progress, workers=jobs)


def check_candidate(cand: Candidate, cfg: Config, *, timeout=None, fail_fast=False,
                    progress=None, jobs: int = 1) -> Report:
    """A candidate against the three references over the check suite (``check_suite``)."""
    cases, skipped = check_suite(cfg)
    return execute("check", [Job(c, cand, timeout) for c in cases], skipped, options_dict(cfg),
                   target=cand.label, fail_fast=fail_fast, progress=progress, workers=jobs)


# ------------------------------------------------------------------------------- batch files

@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """A batch file read and checked, with its candidates loaded (one per TARGET)."""

    plan: batchfile.Plan
    candidates: dict            # group name -> Candidate (candidate groups only)


def load_plan(path: str) -> BatchPlan:
    """Read, check and expand a batch file and load its TARGETs: every problem is raised
    (naming file, group and key) before any case runs."""
    plan = batchfile.plan(path)
    loaded: dict[str, Candidate] = {}
    cands = {}
    for g in plan.groups:
        if g.target is None:
            continue
        cand = _load(g.target, plan.base, g.where, "target", loaded, g.call)
        if g.hvp is not None:
            cand = cand.with_hvp(_load(g.hvp, plan.base, g.where, "hvp", loaded))
        cands[g.name] = cand
    return BatchPlan(plan, cands)


def _load(target: str, base: str, where: str, key: str, loaded: dict, call=()) -> Candidate:
    """A group's TARGET, loaded once per (TARGET, how it is called)."""
    from ..candidate.conventions import settings

    t = relative_to(target, base)
    if (t, call) not in loaded:
        try:
            st = settings(**dict(call)) if call else None
            loaded[t, call] = load(t, label=target, settings=st, base=base)
        except SoftcheckError as e:
            raise SoftcheckError(f"{where}: key {key!r}: {e}") from None
    return loaded[t, call]


def _batch_jobs(bp: BatchPlan, timeout=None) -> tuple[list[Job], list[str]]:
    """Every case of a plan as a Job (in file order), and the skipped notes."""
    work, skipped = [], []
    for g in bp.plan.groups:
        cand = bp.candidates.get(g.name)
        for cfg in g.configs:
            cases, skip = suite(cfg) if cand is None else check_suite(cfg)
            t = g.timeout if g.timeout is not None else timeout
            work += [Job(c, cand, t) for c in cases]
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


def run_batch(bp: BatchPlan, *, fail_fast: bool = False, jobs: int = 1, progress=None,
              timeout=None) -> Report:
    """Every group of a plan; one Report with each case's group (and target)."""
    work, skipped = _batch_jobs(bp, timeout)
    options = {"file": bp.plan.path,
               "groups": [{"name": g.name, "target": g.target,
                           "configs": [options_dict(c) for c in g.configs]}
                          for g in bp.plan.groups]}
    return execute("batch", work, skipped, options, fail_fast=fail_fast, progress=progress,
                   workers=jobs)


__all__ = ["BatchPlan", "Case", "batch_listing", "check_candidate", "execute", "load_plan",
           "options_dict", "run", "run_batch"]
