"""The JSON Schema (draft 2020-12) of softcheck's report; ``softcheck schema`` prints it.

Bump ``report.SCHEMA_VERSION`` on any breaking change (a field removed, renamed or retyped);
adding an optional field is not breaking.  A non-finite float is written as ``null`` with a
sibling ``<key>_reason`` ("nan", "inf", "-inf"): strict JSON, and the reason kept.
"""

from __future__ import annotations

import json

from ..engine.results import SCHEMA_VERSION

_NUM = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}
_REASON = {"^[a-z_]+_reason$": {"enum": ["nan", "inf", "-inf"]}}


def _obj(props: dict, required=None, *, strict: bool = True) -> dict:
    out = {"type": "object", "properties": props,
           "required": list(props) if required is None else required}
    if strict:
        out["additionalProperties"] = False
        out["patternProperties"] = _REASON
    return out


ENTRY = _obj({"row": {"type": "integer"}, "class": {"type": "integer"},
              "is_target": {"type": "boolean"}, "ignored": {"type": "boolean"},
              "value": _NUM, "reference": _NUM, "error": _NUM})

COMPARISON = _obj({
    # a gradient pair; a forward value (candidate_loss vs reference_loss, z_loss, lse); or the
    # gradient at another upstream gradient (candidate@g=1, candidate@g=scalar vs analytic)
    "pair": {"type": "array", "items": {"enum": [
        "candidate", "analytic", "autodiff", "finite_difference",
        "candidate_loss", "reference_loss", "candidate_z_loss", "reference_z_loss",
        "candidate_lse", "reference_lse", "candidate@g=1", "candidate@g=scalar"]},
             "minItems": 2, "maxItems": 2},
    "max_abs_error": _NUM, "max_rel_error": _NUM, "atol": _NUM, "rtol": _NUM, "ratio": _NUM,
    "passed": {"type": "boolean"}, "reason": _STR,
    "worst": {"type": "array", "items": ENTRY},
})

INVARIANT = _obj({"name": {"type": "string"}, "method": {"type": "string"},
                  "passed": {"type": "boolean"}, "detail": {"type": "string"}})

FD = _obj({"method": {"type": "string"}, "error_estimate": _NUM, "step": _NUM,
           "coverage": {"type": "string"}, "columns": {"type": ["integer", "null"]},
           "probes": {"type": "integer", "minimum": 0}})

PARAMS = _obj({
    "classes": {"type": "integer", "minimum": 1}, "batch": {"type": "integer", "minimum": 1},
    "dtype": {"enum": ["float64", "float32", "bfloat16", "float16"]},
    "targets": {"enum": ["index", "onehot", "probs"]},
    "reduction": {"enum": ["mean", "sum", "none"]},
    "regime": {"type": "string"}, "seed": {"type": "integer"},
    "weight": {"oneOf": [{"type": "null"}, {"const": "random"},
                         {"type": "array", "items": {"type": "number"}}]},
    "ignore_index": {"type": ["integer", "null"]},
    "label_smoothing": {"type": "number", "minimum": 0, "maximum": 1},
    "smoothing_convention": {"enum": ["uniform", "others"]},
    "temperature": {"type": "number", "exclusiveMinimum": 0},
    "softcap": {"type": ["number", "null"]}, "z_loss": {"type": "number", "minimum": 0},
    "mean_over": {"oneOf": [{"enum": ["weight", "valid", "batch"]},
                            {"type": "integer", "minimum": 1}]},
    "logit_scale": {"type": "number", "exclusiveMinimum": 0},
    "order": {"enum": [1, 2]},
    "tolerance": {"enum": ["strict", "native"]},
}, required=["classes", "batch", "dtype", "targets", "reduction", "regime", "seed", "order"])

TIMING = _obj({"seconds": {"type": "number", "minimum": 0}})

CASE = _obj({
    "name": {"type": "string"}, "group": _STR, "target": _STR, "passed": {"type": "boolean"},
    "params": PARAMS, "comparisons": {"type": "array", "items": COMPARISON},
    "invariants": {"type": "array", "items": INVARIANT},
    "fd": {"oneOf": [{"type": "null"}, FD]}, "scale": _NUM, "condition": _NUM,
    "error": _STR, "diagnosis": {"type": "array", "items": {"type": "string"}},
    "notes": {"type": "array", "items": {"type": "string"}}, "timing": TIMING,
})

SUMMARY = _obj({k: {"type": "integer", "minimum": 0} for k in ("total", "passed", "failed")})

REPORT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"https://softcheck.dev/schema/report-v{SCHEMA_VERSION}.json",
    "title": "softcheck report",
    "description": "The result of softcheck run/check/batch: one entry per case, errors per "
                   "pair of methods relative to the gradient's scale; timings kept apart "
                   "under 'timing'.",
    **_obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "softcheck_version": {"type": "string"},
        "command": {"enum": ["run", "check", "batch"]},
        "target": _STR,
        "passed": {"type": "boolean"},
        "summary": SUMMARY,
        "environment": _obj({"python": {"type": "string"}, "numpy": {"type": "string"}},
                            strict=False),
        "options": {"type": "object"},
        "skipped": {"type": "array", "items": {"type": "string"}},
        "cases": {"type": "array", "items": CASE},
        "timing": TIMING,
    }),
}


def schema_json() -> str:
    return json.dumps(REPORT, indent=2)
