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
