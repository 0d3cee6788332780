"""Every report a test reads goes through here: parsed, and validated against the schema."""

import json

import jsonschema

from softcheck.report.schema import REPORT

_VALIDATOR = jsonschema.Draft202012Validator(REPORT)


def load_report(text: str) -> dict:
    d = json.loads(text)
    _VALIDATOR.validate(d)
    return d


def numbers(d: dict) -> list:
    """What must be reproducible: every case without its timing (environment and totals apart)."""
    return [{k: v for k, v in c.items() if k != "timing"} for c in d["cases"]]
