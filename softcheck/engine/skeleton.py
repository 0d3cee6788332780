"""The skeleton every case runner shares (whole arrays: case.py, streamed: stream.py, fused
linear cross-entropy: fused.py; tensor-parallel ranks are judged inside the first and the
last): the case's identity and clock, the candidate's notes and output, the one early
return of a call that failed, and the verdict made the same way from what was judged."""

from __future__ import annotations

import time

from .results import CaseResult, Coverage


class Frame:
    """One case as it is judged: ``base`` the fields every result of it carries, ``notes``
    in the order they are made; ``heard(call)`` takes a call's notes and output and says
    whether it failed; ``failed`` and ``result`` make the CaseResult, timed from here."""

    def __init__(self, case, candidate=None):
        self.t0 = time.perf_counter()
        self.notes: list[str] = []
        self.base = dict(name=case.name, params=case.params(), group=case.group,
                         target=candidate.label if candidate is not None else None)

    def measured(self, **fields) -> None:
        """The case's scale, κ, phases, ... known once the inputs are."""
        self.base.update(fields)

    def note(self, *texts: str) -> None:
        self.notes.extend(t for t in texts if t not in self.notes)

    def heard(self, call) -> bool:
        """``call``'s notes and output recorded; True if it failed (``failed`` reports it)."""
        self.notes.extend(call.notes)
        self.base["output"] = call.output or None
        return bool(call.error)

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def failed(self, error: str) -> CaseResult:
        """The case could not be judged (the candidate's call failed): its error."""
        return CaseResult(passed=False, error=error, notes=tuple(self.notes),
                          seconds=self.seconds(), **self.base)

    def result(self, comparisons=(), invariants=(), relations=(), *, coverage=None, fd=None,
               diagnosis=(), error: str | None = None) -> CaseResult:
        """The verdict: every comparison, invariant and relation passed, and no ``error``
        (a later call of the case that failed)."""
        return CaseResult(passed=all_passed(comparisons, invariants, relations, error), error=error, comparisons=tuple(comparisons),
                          invariants=tuple(invariants), relations=tuple(relations),
                          coverage=coverage, fd=fd, diagnosis=tuple(diagnosis),
                          notes=tuple(self.notes), seconds=self.seconds(), **self.base)


def all_passed(comparisons=(), invariants=(), relations=(), error: str | None = None
               ) -> bool:
    """The verdict of what was judged: every comparison, invariant and relation passed, and
    no call of the case failed (``error``)."""
    return (all(c.passed for c in comparisons) and all(i.passed for i in invariants)
            and all(r.passed for r in relations) and not error)


def coverage(methods, relations=(), probes: int = 0, fd: str | None = None) -> Coverage:
    """The report's coverage: the reference methods, the relations' names, the probes."""
    return Coverage(tuple(methods), tuple(r.name for r in relations), probes, fd)
