"""What a run produces: frozen result dataclasses and their strict-JSON form (``report/schema.py``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .._version import __version__
from ..judge.compare import Comparison, Invariant
from ..judge.metamorphic import Relation

SCHEMA_VERSION = 1


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

    def to_dict(self) -> dict:
        return {
            "name": self.name, "group": self.group, "target": self.target, "passed": self.passed,
            "params": self.params,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "invariants": [i.to_dict() for i in self.invariants],
            "relations": [r.to_dict() for r in self.relations],
            "coverage": self.coverage.to_dict() if self.coverage else None,
            "fd": self.fd.to_dict() if self.fd else None,
            "scale": self.scale, "condition": self.kappa, "error": self.error,
            "diagnosis": list(self.diagnosis), "notes": list(self.notes),
            "timing": {"seconds": self.seconds},
        }


@dataclass(frozen=True)
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
        return all(c.passed for c in self.cases)

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]

    def summary(self) -> dict:
        n = len(self.cases)
        f = len(self.failed)
        return {"total": n, "passed": n - f, "failed": f}

    def to_dict(self) -> dict:
        return sanitize({
            "schema_version": SCHEMA_VERSION,
            "softcheck_version": __version__,
            "command": self.command,
            "target": self.target,
            "passed": self.passed,
            "summary": self.summary(),
            "environment": self.environment,
            "options": self.options,
            "skipped": list(self.skipped),
            "cases": [c.to_dict() for c in self.cases],
            "timing": {"seconds": self.seconds},
        })

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def sanitize(obj, path: str = ""):
    """Strict JSON: a non-finite float becomes null, with ``<key>_reason`` beside it."""
    if isinstance(obj, dict):
        out = {}
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
