"""What a run produces: frozen result dataclasses and their strict-JSON form (``report/schema.py``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..judge.compare import Comparison, Invariant
from ..judge.metamorphic import Relation

SCHEMA_VERSION = 1
#: --json-detail: full keeps every case's worst entries; summary drops them for passing cases
DETAILS = ("summary", "full")
#: the detail a command's JSON gets unless asked (a batch's many passing cases: summary)
DEFAULT_DETAIL = {"batch": "summary"}

#: renderers the report stage registers when it is imported (``report/__init__.py``, which
#: ``import softcheck`` imports): name -> fn(report, **kw) -> str.  The engine sits below the
#: report stage and may not import it; Report's text methods look their renderer up here.
RENDERERS: dict[str, Callable[..., str]] = {}


def _render(name: str, report: Report, **kw: Any) -> str:
    return RENDERERS[name](report, **kw)


@dataclass(frozen=True)
class FDInfo:
    """What the finite-difference judge did for a case."""

    method: str
    error_estimate: float
    step: float
    coverage: str = "every coordinate"
    columns: int | None = None
    probes: int = 0

    def to_dict(self) -> dict:
        return {"method": self.method, "error_estimate": self.error_estimate, "step": self.step,
                "coverage": self.coverage, "columns": self.columns, "probes": self.probes}


@dataclass(frozen=True)
class Coverage:
    """What judged a case: the reference methods, the metamorphic relations, the FD probes."""

    references: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    probes: int = 0
    fd: str | None = None           # the finite differences' coverage (every coordinate, ...)

    def to_dict(self) -> dict:
        return {"references": list(self.references), "relations": list(self.relations),
                "probes": self.probes, "fd": self.fd}


@dataclass(frozen=True)
class CaseResult:
    name: str
    params: dict
    passed: bool
    comparisons: tuple[Comparison, ...] = ()
    invariants: tuple[Invariant, ...] = ()
    relations: tuple[Relation, ...] = ()   # metamorphic relations judged on the candidate alone
    coverage: Coverage | None = None
    fd: FDInfo | None = None
    scale: float | None = None
    kappa: float | None = None
    error: str | None = None           # the case could not be judged (candidate raised, ...)
    diagnosis: tuple[str, ...] = ()    # hints on how a failing candidate is wrong
    notes: tuple[str, ...] = ()
    group: str | None = None
    target: str | None = None          # the candidate checked (None: softcheck's own methods)
    seconds: float = 0.0
    output: str | None = None          # what the candidate printed during the case (clipped)
    phases: dict | None = None         # a streamed case's seconds per stage (stream.py)

    def to_dict(self, detail: str = "full") -> dict:
        comparisons = [c.to_dict() for c in self.comparisons]
        timing: dict = {"seconds": self.seconds}
        if self.phases:
            timing["phases"] = dict(self.phases)
        if detail == "summary" and self.passed:
            for c in comparisons:
                del c["worst"]
        return {
            "name": self.name, "group": self.group, "target": self.target, "passed": self.passed,
            "params": self.params,
            "comparisons": comparisons,
            "invariants": [i.to_dict() for i in self.invariants],
            "relations": [r.to_dict() for r in self.relations],
            "coverage": self.coverage.to_dict() if self.coverage else None,
            "fd": self.fd.to_dict() if self.fd else None,
            "scale": self.scale, "condition": self.kappa, "error": self.error,
            "diagnosis": list(self.diagnosis), "notes": list(self.notes), "output": self.output,
            "timing": timing,
        }


@dataclass(frozen=True, repr=False)
class Report:
    cases: tuple[CaseResult, ...]
    command: str = "run"
    options: dict = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    target: str | None = None
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)   # recorded once by the engine

    @property
    def passed(self) -> bool:
        """Every case passed, and there was at least one: judging nothing never passes."""
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]

    def summary(self) -> dict:
        n = len(self.cases)
        f = len(self.failed)
        return {"total": n, "passed": n - f, "failed": f}

    def detail(self, detail: str | None = None) -> str:
        """The JSON detail asked for, else the command's default (DEFAULT_DETAIL)."""
        detail = detail or DEFAULT_DETAIL.get(self.command, "full")
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {', '.join(DETAILS)}; got {detail!r}")
        return detail

    def to_dict(self, detail: str | None = None) -> dict:
        """The JSON form (``report/schema.py``); ``detail`` "summary" leaves out the worst
        entries of passing cases (default: summary for batch, full otherwise)."""
        detail = self.detail(detail)
        return sanitize({
            "schema_version": SCHEMA_VERSION,
            "detail": detail,
            "softcheck_version": __version__,
            "command": self.command,
            "target": self.target,
            "passed": self.passed,
            "summary": self.summary(),
            "environment": self.environment,
            "options": self.options,
            "skipped": list(self.skipped),
            "cases": [c.to_dict(detail) for c in self.cases],
            "timing": {"seconds": self.seconds},
        })

    def to_json(self, indent: int | None = 2, detail: str | None = None) -> str:
        return json.dumps(self.to_dict(detail), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """The Markdown summary (CI step summaries, PR comments)."""
        return _render("markdown", self)

    def to_junit(self) -> str:
        """JUnit XML: one testsuite per group, one testcase per case."""
        return _render("junit", self)

    def to_text(self, *, verbose: bool = False, width: int = 100) -> str:
        """The console report as plain text (``verbose``: every case's row)."""
        return _render("console", self, verbose=verbose, width=width)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        s = self.summary()
        target = f" target={self.target!r}" if self.target else ""
        return (f"<Report {self.command}{target}: {s['total']} cases, {s['passed']} passed, "
                f"{s['failed']} failed, {self.seconds:.2f} s>")


def sanitize(obj: Any, path: str = "") -> Any:
    """Strict JSON: a non-finite float becomes null, with ``<key>_reason`` beside it."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
                out[f"{k}_reason"] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
            else:
                out[k] = sanitize(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else sanitize(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return sanitize(obj.item())
    return obj
