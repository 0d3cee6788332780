"""The console: the rich table of a report, and the explain, mutants and steps views."""

from __future__ import annotations

import numpy as np

from ..engine.results import CaseResult, Report
from .text import SHORT_METHOD, by_group, failure_text, fmt, name_parts


def pair_label(pair) -> str:
    if pair == UPSTREAM:
        return "other\ng"
    if pair[0].startswith("candidate_"):                 # a forward value: loss, z_loss, lse
        return f"cand\n{pair[0][len('candidate_'):]}"
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


REFS = "references"
#: one column for the worst of the gradients at the other upstream gradients (candidate@g=...)
UPSTREAM = "upstream"


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
        extra = [p for p in pairs if p[0].startswith("candidate_")]
        other_g = [UPSTREAM] if any(p[0].startswith("candidate@") for p in pairs) else []
        pairs = [p for p in pairs if p[0] == "candidate"] + extra + other_g + [REFS]
    # words shared by every case of the table go to its title, the rows keep what differs
    parts = [name_parts(c) for c in cases]
    same = [all(len(p) > i and p[i] == parts[0][i] for p in parts) for i in range(len(parts[0]))]
    if len(cases) > 1 and any(same):
        shared = " ".join(w for w, s in zip(parts[0], same) if s)
        title = f"{title}: {shared}" if title else shared
    else:
        same = [False] * len(parts[0])
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, caption="errors: max |A - B| / scale (the gradient's; loss, lse: their terms')")
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
            refs = [c for c in case.comparisons if c.pair[0] in SHORT_METHOD
                    and c.pair[0] != "candidate"]
            by_pair[REFS] = max(refs, key=lambda c: c.ratio) if refs else None
            ups = [c for c in case.comparisons if c.pair[0].startswith("candidate@")]
            by_pair[UPSTREAM] = max(ups, key=lambda c: c.ratio) if ups else None
        for p in pairs:
            c = by_pair.get(p)
            if c is None:
                cells.append(Text("—", style="dim"))
            else:
                cells.append(Text(fmt(c.max_rel_error), style="green" if c.passed else "red bold"))
        cells.append(Text("PASS", style="bold green") if case.passed
                     else Text("FAIL", style="bold red"))
        table.add_row(*cells)
    return table


def render_explanation(ex, console) -> None:
    """``softcheck explain``: a panel per step (formula, both values, the error, a mark)."""
    from rich.panel import Panel
    from rich.text import Text

    from ..tools.explain import TOL

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


def render_mutants(results, console) -> bool:
    """``softcheck mutants``: one row per mutant (options, cases caught, verdict), a summary."""
    from rich.table import Table

    from ..tools.mutants import summary

    table = Table(header_style="bold", pad_edge=False)
    for col in ("mutant", "options", "caught", "verdict"):
        table.add_column(col)
    for r in results:
        table.add_row(*r.row(), style="green" if r.ok else "bold red")
    console.print(table)
    ok, line = summary(results)
    console.print(line, style="bold green" if ok else "bold red", markup=False)
    return ok


def render_steps(sweeps, console) -> None:
    """``softcheck steps``: per method, the error at each step (``*`` the derived h)."""
    from rich.table import Table

    for s in sweeps:
        table = Table(title=f"{s.method} (derived h = {s.derived:.2g})", header_style="bold",
                      pad_edge=False)
        table.add_column("h", justify="right")
        table.add_column("max error / scale", justify="right")
        for h, e, best in s.rows():
            table.add_row(h, e, style="green" if best else None)
        console.print(table)
