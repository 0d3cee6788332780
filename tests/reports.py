"""Helpers the tests share: every report a test reads is parsed and validated against the
schema here; and the processes a run left behind."""

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


def leftover_processes(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``marker`` (``NAME=value``): what
    a run left behind, its descendants included."""
    import os

    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{name}/stat", "rb") as f:
                    zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
            except OSError:
                continue
            if marker.encode() in env and not zombie:
                found.append(int(name))
    return found
