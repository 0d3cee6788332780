"""Formatters: each reads a finished Report and renders one format; none computes.

The file formats share one interface, ``render(report) -> str`` (:data:`FORMATS`); the
console draws on a rich Console (``console.render_table``).
"""

from __future__ import annotations


def _json(report) -> str:
    return report.to_json()


def _junit(report) -> str:
    from .junit import to_junit

    return to_junit(report)


def _markdown(report) -> str:
    from .markdown import to_markdown

    return to_markdown(report)


#: file format name -> render(report) -> text
FORMATS = {"json": _json, "junit": _junit, "markdown": _markdown}
