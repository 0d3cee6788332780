"""Formatters: each reads a finished Report and renders one format; none computes.

The file formats share one interface, ``render(report) -> str`` (:data:`FORMATS`); the
console draws on a rich Console (``console.render_table``).  Importing this package registers
the renderers behind ``str(report)``, ``report.to_markdown()`` and ``report.to_junit()``
(``engine.results.RENDERERS``).
"""

from __future__ import annotations

from ..engine import results as _results


def _json(report, detail: str | None = None) -> str:
    """The JSON report; one without a case says ``passed: false`` and why (text.NO_CASES)."""
    import json

    from .text import NO_CASES

    d = report.to_dict(detail)
    if not report.cases:
        d.update(passed=False, reason=NO_CASES)
    return json.dumps(d, indent=2, allow_nan=False)


def _junit(report) -> str:
    from .junit import to_junit

    return to_junit(report)


def _markdown(report) -> str:
    from .markdown import to_markdown

    return to_markdown(report)


def _console(report, *, verbose: bool = False, width: int = 100) -> str:
    from .console import table_text

    return table_text(report, verbose=verbose, width=width)


#: file format name -> render(report) -> text
FORMATS = {"json": _json, "junit": _junit, "markdown": _markdown}

_results.RENDERERS.update(FORMATS, console=_console)

#: what stands at a report path while a run is in progress (or after one that died): never a
#: stale pass from an earlier run
INCOMPLETE_REASON = ("incomplete run: softcheck marked this report when it started and has "
                     "not finished the run (it is still running, or it stopped early: see its "
                     "exit status and its error line)")


def incomplete(fmt: str, reason: str = INCOMPLETE_REASON) -> str:
    """The marker of an unfinished run in format ``fmt``: a failure in every format."""
    import json
    from xml.sax.saxutils import quoteattr

    if fmt == "json":
        return json.dumps({"incomplete": True, "passed": False, "reason": reason},
                          indent=2) + "\n"
    if fmt == "junit":
        return ('<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="softcheck" tests="1" '
                'failures="1"><testsuite name="softcheck" tests="1" failures="1"><testcase '
                'classname="softcheck" name="incomplete run"><failure message='
                f'{quoteattr(reason)} /></testcase></testsuite></testsuites>\n')
    return f"## ❌ softcheck: {reason}\n"


def preload() -> None:
    """Import every module that renders or writes a report now, before the first candidate
    call: what the judge imports later could be a file the candidate wrote meanwhile."""
    import xml.etree.ElementTree  # noqa: F401
    import xml.sax.saxutils  # noqa: F401

    import rich.console  # noqa: F401
    import rich.progress  # noqa: F401
    import rich.table  # noqa: F401
    import rich.text  # noqa: F401

    from . import console, escape, files, junit, markdown, text  # noqa: F401
