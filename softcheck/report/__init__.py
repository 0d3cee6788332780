"""Formatters: each reads a finished Report and renders one format; none computes.

The file formats share one interface, ``render(report) -> str`` (:data:`FORMATS`); the
console draws on a rich Console (``console.render_table``).  Importing this package registers
the renderers behind ``str(report)``, ``report.to_markdown()`` and ``report.to_junit()``
(``engine.results.RENDERERS``).
"""

from __future__ import annotations

from ..engine import results as _results


def _json(report, detail: str | None = None) -> str:
    return report.to_json(detail=detail)


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
_INCOMPLETE_REASON = ("incomplete run: softcheck started writing this report and has not "
                      "finished (still running, or it was interrupted)")


def incomplete(fmt: str) -> str:
    """The marker of an unfinished run in format ``fmt``: a failure in every format."""
    import json
    from xml.sax.saxutils import quoteattr

    if fmt == "json":
        return json.dumps({"incomplete": True, "passed": False, "reason": _INCOMPLETE_REASON},
                          indent=2) + "\n"
    if fmt == "junit":
        return ('<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="softcheck" tests="1" '
                'failures="1"><testsuite name="softcheck" tests="1" failures="1"><testcase '
                'classname="softcheck" name="incomplete run"><failure message='
                f'{quoteattr(_INCOMPLETE_REASON)} /></testcase></testsuite></testsuites>\n')
    return f"## ❌ softcheck: {_INCOMPLETE_REASON}\n"
