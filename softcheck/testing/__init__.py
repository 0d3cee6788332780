"""pytest helpers: one test per case (``parametrize`` + ``check_case``) and
``assert_gradient_correct(fn, **options)``; the AssertionError is softcheck's diagnosis.

Every case judged here is also collected for ``pytest --softcheck-json PATH`` (the plugin,
``softcheck.testing.plugin``, registered as a ``pytest11`` entry point).
"""

from __future__ import annotations

import dataclasses
import os

from collections.abc import Callable
from typing import Any

from ..candidate.call import DEFAULT_TIMEOUT, CallPolicy
from ..engine.results import CaseResult
from ..suite.cases import Case

#: every CaseResult judged in this process, with the label of its candidate (the plugin
#: writes them as one report at the end of the session)
COLLECTED: list[CaseResult] = []


def cases(**options: Any) -> list[Case]:
    """The cases ``softcheck check`` runs with these options (the Python API's keywords)."""
    from ..api import api_config
    from ..engine.suites import with_inputs
    from ..suite.kernel import select

    cfg = api_config(**options)
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


#: one worker process per re-importable function and way of calling it, reused by every case
#: of the session (each ends with the session: the worker module closes them at exit)
_WORKERS: dict[tuple, Any] = {}


def check_case(fn: Callable[..., Any], case: Case, *, timeout: float | None = DEFAULT_TIMEOUT,
               repeat: int = 2, nondet_tol: float | None = None,
               memory_limit: int | str | None = None, hvp: Callable[..., Any] | None = None,
               backward: Callable[..., Any] | None = None, **call: Any) -> CaseResult:
    """Judge ``fn`` on one case as ``softcheck.check`` would; raise AssertionError, the hint
    on its first line, if it is wrong.  ``call``: ``convention``, ``framework``, ``args``,
    ``rename``, ``returns``, ``device`` (an ``autograd.Function`` or a ``custom_vjp`` is
    detected as by the CLI).  ``fn`` runs in a worker process when it can be re-imported by
    module and name, else here.  The result is collected for ``--softcheck-json``, its group
    the pytest test id."""
    __tracebackhide__ = True
    from ..candidate.sandbox import parse_size
    from ..report.escape import plain
    from ..report.text import failure_text, why

    result = _judge_case(fn, case, CallPolicy(timeout, repeat, nondet_tol, True,
                                              None if memory_limit is None
                                              else parse_size(memory_limit)),
                         hvp, backward, call)
    result = dataclasses.replace(result, group=_test_id() or result.group)
    COLLECTED.append(result)
    if not result.passed:
        first = why(result)
        more = [f"  hint: {d}" for d in result.diagnosis if d != first]
        raise AssertionError(plain("\n".join([first, *more,      # candidate text: escaped
                                               failure_text(result, compact=True)])))
    return result


def _judge_case(fn: Callable[..., Any], case: Case, policy: CallPolicy, hvp: Any,
                backward: Any, call: dict) -> CaseResult:
    from ..api import CALL_OPTIONS
    from ..candidate import Candidate, isolated, load, source_of
    from ..candidate.conventions import resolve, settings
    from ..engine.pool import judge
    from ..spec import SoftcheckError

    unknown = sorted(set(call) - set(CALL_OPTIONS))
    if unknown:
        raise SoftcheckError(f"check_case: unknown keyword {unknown[0]!r}; its keywords are "
                             f"timeout, repeat, nondet_tol, memory_limit, hvp, backward, "
                             f"{', '.join(CALL_OPTIONS)}")
    srcs = [source_of(f) if f is not None else "" for f in (fn, hvp, backward)]
    if None in srcs:                 # a lambda, a closure: judged and called in this process
        bname = None if backward is None else getattr(backward, "__qualname__", repr(backward))
        st = resolve(fn, settings(backward=bname, **call), bwd=backward)
        cand = dataclasses.replace(Candidate.from_callable(fn, hvp=hvp), settings=st,
                                   backward=backward)
        return judge(case, cand, policy=dataclasses.replace(policy, isolate=False))
    key = (*srcs, repr(sorted(call.items())), policy.memory_limit)
    if key not in _WORKERS:
        cand = load(srcs[0], hvp=srcs[1] or None, label=getattr(fn, "__qualname__", None),
                    settings=settings(backward=srcs[2] or None, **call))
        _WORKERS[key] = isolated(cand, x64=True, memory_limit=policy.memory_limit) or cand
    return judge(case, _WORKERS[key], policy=policy)


def _test_id() -> str | None:
    """The pytest test running now (``path::test[id]``), from pytest's own variable."""
    current = os.environ.get("PYTEST_CURRENT_TEST")
    return current.rsplit(" (", 1)[0] if current else None


def assert_gradient_correct(fn: Callable[..., Any], **options: Any) -> None:
    """Check ``fn`` over the suite (``softcheck.check(fn, **options)``: every keyword of the
    CLI); raise AssertionError, the most common hint on its first line, if it is wrong."""
    __tracebackhide__ = True
    import softcheck
    from softcheck.report.escape import plain
    from softcheck.report.text import counted, failure_text, why

    report = softcheck.check(fn, **options)
    test = _test_id()
    COLLECTED.extend(dataclasses.replace(c, group=test or c.group) for c in report.cases)
    if not report.passed:
        s = report.summary()
        hints = counted(c.diagnosis for c in report.failed)
        first = hints[0][0] if hints else why(report.failed[0])
        details = plain("\n".join(failure_text(c) for c in report.failed[:5]))
        more = f"\n... and {s['failed'] - 5} more" if s["failed"] > 5 else ""
        raise AssertionError(f"{first}\ngradient is wrong in {s['failed']} of {s['total']} "
                             f"cases:\n{details}{more}")
