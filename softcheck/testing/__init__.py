"""pytest helpers: one test per case (``parametrize`` + ``check_case``) and
``assert_gradient_correct(fn, **options)``; the AssertionError is softcheck's diagnosis.

Every case judged here is also collected for ``pytest --softcheck-json PATH`` (the plugin,
``softcheck.testing.plugin``, registered as a ``pytest11`` entry point).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..candidate.call import DEFAULT_TIMEOUT
from ..engine.results import CaseResult
from ..suite.cases import Case

#: every CaseResult judged in this process, with the label of its candidate (the plugin
#: writes them as one report at the end of the session)
COLLECTED: list[CaseResult] = []


def cases(**options: Any) -> list[Case]:
    """The cases ``softcheck check`` runs with these options (the Python API's keywords)."""
    from ..engine.suites import with_inputs
    from ..suite.config import config
    from ..suite.kernel import select

    cfg = config(**options)
    return with_inputs(cfg, select(cfg, check=True))[0]


def case_id(case: Case) -> str:
    """A short test id: ``C10-B6-float32-normal`` (target kind and reduction when they are
    not check's index/mean, the batch tag when there is one)."""
    s = case.spec
    parts = [f"C{case.classes}", f"B{case.batch}", case.dtype]
    parts += [s.targets] if s.targets != "index" else []
    parts += [s.reduction] if s.reduction != "mean" else []
    parts.append(case.regime)
    name = "-".join(parts)
    return f"{name}[{case.tag}]" if case.tag else name


def parametrize(argname: str = "case", **options: Any) -> Any:
    """``@softcheck.testing.parametrize(classes=10)``: the test runs once per case of the
    check suite with these options, ``argname`` bound to the :class:`Case`."""
    import pytest

    found = cases(**options)
    return pytest.mark.parametrize(argname, found, ids=[case_id(c) for c in found])


#: one worker process per re-importable function, reused by every case of the session (each
#: ends with the session: the worker module closes them at exit)
_WORKERS: dict[str, Any] = {}


def check_case(fn: Callable[..., Any], case: Case, *, timeout: float | None = DEFAULT_TIMEOUT,
               repeat: int = 2) -> CaseResult:
    """Judge ``fn(logits, target, **kw)`` on one case; raise AssertionError with the
    diagnosis if it is wrong.  The result is collected for ``--softcheck-json``.  ``fn`` runs
    in a worker process when it can be re-imported by module and name (as ``softcheck.check``)."""
    from ..candidate import CallPolicy, Candidate, isolated, source_of
    from ..engine.case import run_case
    from ..report.text import failure_text

    cand = Candidate.from_callable(fn)
    cand.source = source_of(fn)
    if cand.source is not None:
        if cand.source not in _WORKERS:
            _WORKERS[cand.source] = isolated(cand, x64=True)
        cand = _WORKERS[cand.source]
    result = run_case(case, cand, policy=CallPolicy(timeout, repeat))
    COLLECTED.append(result)
    if not result.passed:
        raise AssertionError(failure_text(result))
    return result


def assert_gradient_correct(fn: Callable[..., Any], **options: Any) -> None:
    """Check ``fn(logits, target, **kw)`` over the suite; raise AssertionError if wrong."""
    import softcheck
    from softcheck.report.text import failure_text

    report = softcheck.check(fn, **options)
    COLLECTED.extend(report.cases)
    if not report.passed:
        s = report.summary()
        details = "\n".join(failure_text(c) for c in report.failed[:5])
        more = f"\n... and {s['failed'] - 5} more" if s["failed"] > 5 else ""
        raise AssertionError(f"gradient is wrong in {s['failed']} of {s['total']} cases:\n"
                             f"{details}{more}")
