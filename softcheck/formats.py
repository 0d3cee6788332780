"""One formatter per output format: rich table, JSON, JUnit XML, Markdown.

Computation never knows which format is used; each formatter reads a finished ``Report``.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET

import numpy as np

from .report import CaseResult, Report

SHORT_DTYPE = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
SHORT_METHOD = {"analytic": "analytic", "autodiff": "autodiff", "finite_difference": "FD",
                "candidate": "candidate"}


def name_parts(case: CaseResult) -> list[str]:
    """A case's name in short words: C, B, dtype, targets, reduction, regime (+ the options a
    batch group crosses)."""
    p = case.params
    parts = [f"C{p['classes']}", f"B{p['batch']}", SHORT_DTYPE.get(p["dtype"], p["dtype"]),
             p["targets"], p["reduction"], p["regime"]]
    if case.name.endswith("]") and "[" in case.name:         # a batch group's crossed options
        tag = case.name[case.name.rindex("[") + 1:-1]
        for long, short in (("label_smoothing", "ls"), ("smoothing_convention", "conv"),
                            ("ignore_index", "ii"), ("temperature", "T"), ("z_loss", "zl"),
                            ("fd_budget", "budget")):
            tag = tag.replace(long + "=", short + "=")
        parts.append(tag)
    return parts


def short_name(case: CaseResult) -> str:
    return " ".join(name_parts(case))


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x != x or x in (float("inf"), float("-inf")):
        return "nan" if x != x else "inf"
    return f"{x:.1e}"


def pair_label(pair) -> str:
    a = "cand" if pair[0] == "candidate" else SHORT_METHOD[pair[0]]
    return f"{a}\n{SHORT_METHOD[pair[1]]}"


def render_table(report: Report, console, *, details: int = 10) -> None:
    """The human report: a table per group (one row per case: max error relative to the
    gradient's scale per pair of methods), the failures in detail, then a summary line."""
    groups = by_group(report)
    for name, cases in groups.items():
        titled = len(groups) > 1 or cases[0].group is not None
        console.print(_table(cases, name if titled else None, console.width))
    for case in report.failed[:details]:
        console.print(failure_text(case), style="red", highlight=False, markup=False,
                      soft_wrap=True)
    if len(report.failed) > details:
        console.print(f"... and {len(report.failed) - details} more failed cases (see --json)",
                      style="red", markup=False)
    for note in report.skipped:
        console.print(f"skipped: {note}", style="dim", markup=False, highlight=False,
                      soft_wrap=True)
    s = report.summary()
    verdict = "all agree" if report.passed else "DISAGREEMENT"
    style = "bold green" if report.passed else "bold red"
    console.print(f"{s['total']} case{'' if s['total'] == 1 else 's'}: {s['passed']} passed, {s['failed']} failed — {verdict} "
                  f"({report.seconds:.2f} s)", style=style, markup=False, highlight=False)


def by_group(report: Report) -> dict[str, list[CaseResult]]:
    """The cases by group, in report order (ungrouped cases under the command's name)."""
    groups: dict[str, list[CaseResult]] = {}
    for case in report.cases:
        groups.setdefault(case.group or report.command, []).append(case)
    return groups


REFS = "references"


def _table(cases: list[CaseResult], title: str | None, width: int = 80):
    """With a candidate, its three pairs and one column for the worst of the references'
    own three pairs (they are judged all the same): the numbers fit 80 columns."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    pairs: list = []
    for case in cases:
        for c in case.comparisons:
            if c.pair not in pairs:
                pairs.append(c.pair)
    has_candidate = any(p[0] == "candidate" for p in pairs)
    if has_candidate:
        pairs = [p for p in pairs if p[0] == "candidate"] + [REFS]
    # words shared by every case of the table go to its title, the rows keep what differs
    parts = [name_parts(c) for c in cases]
    same = [all(len(p) > i and p[i] == parts[0][i] for p in parts) for i in range(len(parts[0]))]
    if len(cases) > 1 and any(same):
        shared = " ".join(w for w, s in zip(parts[0], same) if s)
        title = f"{title}: {shared}" if title else shared
    else:
        same = [False] * len(parts[0])
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, caption="errors: max |A - B| / gradient scale")
    # each number column: 8 characters + 2 of padding + 1 of divider; the verdict 4 + 3; the
    # case gets the rest, so that numbers and verdicts are never cut
    table.add_column("case", overflow="ellipsis", no_wrap=True, min_width=12,
                     max_width=max(12, width - 11 * len(pairs) - 7 - 3))
    for p in pairs:
        label = "refs\nagree" if p == REFS else pair_label(p)
        table.add_column(label, justify="right", no_wrap=True, min_width=8)
    table.add_column("", no_wrap=True, min_width=4)
    for case in cases:
        words = name_parts(case)
        cells = [Text(" ".join(w for i, w in enumerate(words) if i >= len(same) or not same[i]))]
        by_pair = {c.pair: c for c in case.comparisons}
        if has_candidate:
            refs = [c for c in case.comparisons if c.pair[0] != "candidate"]
            by_pair[REFS] = max(refs, key=lambda c: c.ratio) if refs else None
        for p in pairs:
            c = by_pair.get(p)
            if c is None:
                cells.append(Text("—", style="dim"))
            else:
                cells.append(Text(_fmt(c.max_rel_error), style="green" if c.passed else "red bold"))
        cells.append(Text("PASS", style="bold green") if case.passed
                     else Text("FAIL", style="bold red"))
        table.add_row(*cells)
    return table


def failure_text(case: CaseResult) -> str:
    """A failing case in words: what failed, where, and what it looks like."""
    lines = [f"FAIL {case.name}"]
    if case.error:
        lines.append(f"  error: {case.error}")
    for c in case.comparisons:
        if c.passed:
            continue
        lines.append(f"  {c.pair[0]} vs {c.pair[1]}: {c.reason}")
        for e in c.worst:
            tags = ", ".join(t for t, on in (("target class", e.is_target), ("ignored row", e.ignored)) if on)
            lines.append(f"    row {e.row}, class {e.cls}{' (' + tags + ')' if tags else ''}: "
                         f"got {_fmt(e.value)}, expected {_fmt(e.reference)}")
    for i in case.invariants:
        if not i.passed:
            lines.append(f"  invariant broken ({i.method}): {i.name}: {i.detail}")
    for d in case.diagnosis:
        lines.append(f"  hint: {d}")
    for n in case.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def to_junit(report: Report) -> str:
    """JUnit XML: one testsuite per group (with the environment as properties), one testcase
    per case; a failure's message is its most telling reason, its text the whole diagnosis."""
    from . import __version__
    from .report import environment

    groups = by_group(report)
    env = {"softcheck": __version__, **environment()}
    root = ET.Element("testsuites", name="softcheck", tests=str(len(report.cases)),
                      failures=str(len(report.failed)), time=f"{report.seconds:.3f}")
    for name, cases in groups.items():
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)),
                              failures=str(sum(not c.passed for c in cases)), errors="0",
                              skipped="0", time=f"{sum(c.seconds for c in cases):.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in env.items():
            ET.SubElement(props, "property", name=k, value=str(v))
        for case in cases:
            tc = ET.SubElement(suite, "testcase", classname=f"softcheck.{name}", name=case.name,
                               time=f"{case.seconds:.3f}")
            if not case.passed:
                f = ET.SubElement(tc, "failure", message=_why(case), type="GradientMismatch")
                f.text = failure_text(case)
            if case.notes:
                ET.SubElement(tc, "system-out").text = "\n".join(case.notes)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def to_markdown(report: Report) -> str:
    """A summary for CI step summaries and PR comments: per group (when there are groups),
    then the failed cases (or every case when none failed) with the most telling hint."""
    s = report.summary()
    icon = "✅" if report.passed else "❌"
    lines = [f"## {icon} softcheck {report.command}: {s['passed']}/{s['total']} cases passed", ""]
    groups = by_group(report)
    if len(groups) > 1:
        lines += ["| group | cases | passed | failed |", "|---|---|---|---|"]
        for name, cases in groups.items():
            bad = sum(not c.passed for c in cases)
            lines.append(f"| {'❌' if bad else '✅'} {_cell(name)} | {len(cases)} | "
                         f"{len(cases) - bad} | {bad} |")
        lines.append("")
    shown = report.failed or list(report.cases)
    if report.failed:
        lines += [f"{s['failed']} failed:", ""]
    lines += ["| case | group | worst pair | max rel error | verdict |", "|---|---|---|---|---|"]
    for case in shown[:200]:
        worst = max(case.comparisons, key=lambda c: c.ratio, default=None)
        pair = f"{worst.pair[0]} vs {worst.pair[1]}" if worst else "—"
        err = _fmt(worst.max_rel_error) if worst else "—"
        lines.append(f"| {_cell(case.name)} | {_cell(case.group or '')} | {pair} | {err} | "
                     f"{'PASS' if case.passed else 'FAIL: ' + _cell(_why(case))} |")
    if len(shown) > 200:
        lines.append(f"| … {len(shown) - 200} more | | | | |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _why(case: CaseResult) -> str:
    """The most telling reason a case failed: its error, a known-bug match, the first hint,
    or the first failing comparison."""
    if case.error:
        return case.error
    known = [d for d in case.diagnosis if d.startswith("looks like a known bug")]
    if known or case.diagnosis:
        return (known or list(case.diagnosis))[0]
    failing = [c.reason for c in case.comparisons if not c.passed and c.reason]
    return failing[0] if failing else "an invariant is broken"


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file in the same folder, then rename: never a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".softcheck-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def render_explanation(ex, console) -> None:
    """``softcheck explain``: a panel per step (formula, both values, the error, a mark)."""
    from rich.panel import Panel
    from rich.text import Text

    from .explain import TOL

    z = ", ".join(f"{v:g}" for v in ex.logits)
    if ex.label is not None:
        y = f"class {ex.label} (y = one-hot e_{ex.label})"
    else:
        y = "probabilities [" + ", ".join(f"{v:.3f}" for v in ex.target) + "]"
    console.print(Text(f"One example: logits z = [{z}], target {y}; float64.", style="bold"))
    console.print(Text("Each step: the value from its formula, the same value computed "
                       "independently (JAX), and the max |difference|.", style="dim"))
    true_steps = [s for s in ex.steps if not s.slip]
    for n, s in enumerate(ex.steps, 1):
        body = Text()
        body.append(s.formula + "\n", style="bold")
        body.append_text(_values("formula", s.value))
        body.append_text(_values(s.method, s.independent))
        err = s.max_abs_error
        if s.slip:
            ok = s.as_expected
            mark = "✗ does not hold" + (" (as expected)" if ok else " — but it should not hold!")
            style = "yellow" if ok else "bold red"
        else:
            mark = "✓ verified" if s.holds else "✗ FAILED"
            style = "green" if s.holds else "bold red"
        body.append(f"max |error| {err:.1e}  ", style=style)
        body.append(mark, style=style)
        if s.note:
            body.append(f"\n{s.note}", style="dim")
        title = f"{n}. {s.title}"
        console.print(Panel(body, title=title, title_align="left", border_style=style,
                            expand=True))
    slips = [s for s in ex.steps if s.slip]
    worst = max((s.max_abs_error for s in true_steps), default=0.0)
    ok = ex.passed
    console.print(Text(
        f"{sum(s.holds for s in true_steps)}/{len(true_steps)} steps verified (max error "
        f"{worst:.1e} ≤ {TOL:g}); {sum(s.as_expected for s in slips)}/{len(slips)} slips shown "
        f"not to hold", style="bold green" if ok else "bold red"))


def _values(label: str, v):
    """A value as one line (scalar, vector: at most 6 entries shown) or a small matrix."""
    from rich.text import Text

    v = np.asarray(v, np.float64)
    label = (label + ":").ljust(26)
    if v.ndim == 0:
        return Text(f"{label}{v:+.6f}\n")
    if v.ndim == 2 and v.shape[0] <= 6:
        rows = [_vector(r) for r in v]
        pad = " " * len(label)
        return Text(label + ("\n" + pad).join(rows) + "\n")
    if v.ndim == 2:
        return Text(f"{label}{v.shape[0]}×{v.shape[1]} matrix\n")
    return Text(label + _vector(v) + "\n")


def _vector(v) -> str:
    shown = [f"{x + 0.0:+.4f}" for x in v[:6]]       # + 0.0: no "-0.0000" for an exact zero
    return "[" + " ".join(shown) + (" …" if len(v) > 6 else "") + "]"
