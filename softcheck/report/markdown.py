"""Markdown summary for CI step summaries and PR comments."""

from __future__ import annotations

from ..engine.results import Report
from .escape import markdown as code, markdown_words as cell
from .text import NO_CASES, by_group, fmt, passed, why


def to_markdown(report: Report) -> str:
    """A summary for CI step summaries and PR comments: per group (when there are groups),
    then the failed cases (or every case when none failed) with the most telling hint.  No
    cell's text can draw a heading, HTML or a link (report/escape.py)."""
    s = report.summary()
    icon = "✅" if passed(report) else "❌"
    lines = [f"## {icon} softcheck {report.command}: {s['passed']}/{s['total']} cases passed", ""]
    if not report.cases:
        return "\n".join(lines + [NO_CASES]) + "\n"
    groups = by_group(report)
    if len(groups) > 1:
        lines += ["| group | cases | passed | failed |", "|---|---|---|---|"]
        for name, cases in groups.items():
            bad = sum(not c.passed for c in cases)
            lines.append(f"| {'❌' if bad else '✅'} {cell(name)} | {len(cases)} | "
                         f"{len(cases) - bad} | {bad} |")
        lines.append("")
    shown = report.failed or list(report.cases)
    if report.failed:
        lines += [f"{s['failed']} failed:", ""]
    lines += ["| case | group | worst pair | max rel error | verdict |", "|---|---|---|---|---|"]
    for case in shown[:200]:
        worst = max(case.comparisons, key=lambda c: c.ratio, default=None)
        pair = cell(f"{worst.pair[0]} vs {worst.pair[1]}") if worst else "—"
        err = fmt(worst.max_rel_error) if worst else "—"
        lines.append(f"| {cell(case.name)} | {cell(case.group or '')} | {pair} | {err} | "
                     f"{'PASS' if case.passed else 'FAIL: ' + reason(case)} |")
    if len(shown) > 200:
        lines.append(f"| … {len(shown) - 200} more | | | | |")
    return "\n".join(lines) + "\n"


def reason(case) -> str:
    """Why a case failed, for its cell: the candidate's own words (its error) as code."""
    return code(case.error) if case.error else cell(why(case))
