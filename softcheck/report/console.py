"""The console: the rich table of a report, and the explain, mutants and steps views."""

from __future__ import annotations

import numpy as np

from ..engine.results import CaseResult, Report
from .escape import console as as_text, plain
from .text import (NO_CASES, SHORT_METHOD, by_group, counted, diagnosis_key, failure_text,
                   fmt, name_parts, passed, why)


#: the second member of a fused pair, and how its label says it
FUSED_METHODS = (("reference", "ref"), ("finite_difference", "FD"))


def pair_label(pair, sep: str = "\n") -> str:
    if pair == UPSTREAM:
        return f"other{sep}g"
    if pair == RANKS:
        return f"worst{sep}rank"
    for method, short in FUSED_METHODS:       # fused linear CE: per-output pairs (grad_W, ...)
        if pair[1].startswith(method + "_grad_"):
            out = pair[1][len(method) + 1:]
            a = pair[0][:-len(out) - 1]
            return f"{'cand' if a == 'candidate' else SHORT_METHOD.get(a, a)}{sep}{short} {out}"
    if pair[0].startswith("candidate_"):                 # a forward value: loss, z_loss, lse
        return f"cand{sep}{pair[0][len('candidate_'):]}"
    if pair[0].startswith("candidate[rank "):           # --tensor-parallel: one rank's columns
        return f"rank{sep}{pair[0][len('candidate[rank '):-1]}"
    if pair[0].startswith("candidate@"):                 # another upstream gradient
        return f"cand{sep}{pair[0][len('candidate@'):]}"
    a = "cand" if pair[0] == "candidate" else SHORT_METHOD[pair[0]]
    return f"{a}{sep}{SHORT_METHOD[pair[1]]}"


#: the console shows this many ways of failing in full (the rest: one line each; -v: all)
SHOWN_IN_FULL = 3
#: and this many hints, the most common first
SHOWN_HINTS = 4


def render_table(report: Report, console, *, verbose: bool = False) -> None:
    """The human report, hints first: what the failing cases' diagnoses say (each once, with
    how many cases say it); one line per group (verdict, counts, worst error, FD coverage);
    the notes, each once; the failures, the cases failing the same way as one (``-v``: each
    case in full, and before them a table per group with every case's row); the skipped
    combinations; the verdict line."""
    def say(text, style=None, **kw):      # candidate text: control characters made visible
        console.print(plain(text), style=style, markup=False, highlight=False, **kw)

    failed = report.failed
    hints = sorted(counted(c.diagnosis for c in failed),      # a known bug first: it names it
                   key=lambda h: not h[0].startswith("looks like a known bug"))
    for hint, n, varies in hints[:SHOWN_HINTS]:
        tail = [f"{n} of {len(failed)} failing cases"] if n < len(failed) else []
        tail = (["its numbers vary by case"] if varies else []) + tail
        say(f"hint: {hint}" + (f" ({'; '.join(tail)})" if tail else ""), "bold red",
            soft_wrap=True)
    if len(hints) > SHOWN_HINTS:
        say(f"(+{len(hints) - SHOWN_HINTS} more hints in fewer cases: -v)", "dim")
    groups = by_group(report)
    if verbose:
        for name, cases in groups.items():
            titled = len(groups) > 1 or cases[0].group is not None
            console.print(_table(cases, name if titled else None, console.width))
    for name, cases in groups.items():
        bad = sum(not c.passed for c in cases)
        say(group_line(name, cases), "red" if bad else "green", soft_wrap=False,
            overflow="fold")
    for note, n, _ in counted(c.notes for c in report.cases):
        say(f"note: {note}" + (f" ({n} of {len(report.cases)} cases)" if n > 1 else ""),
            "yellow", soft_wrap=True)
    if verbose:
        for case in failed:
            say(failure_text(case), "red", soft_wrap=True)
    else:
        _render_failures(failed, say, console.width)
    for note in report.skipped:
        say(f"skipped: {note}", "dim", soft_wrap=True)
    for info in report.environment.get("candidate_process", {}).values():
        if info.get("sandbox", {}).get("weaker"):          # candidate/sandbox.py
            say(info["sandbox"]["weaker"], "dim", soft_wrap=True)
        for note in info.get("notes", ()):                 # engine/precision.py
            say(f"note: {note}", "yellow", soft_wrap=True)
    s = report.summary()
    verdict = ("all agree" if passed(report) else NO_CASES if not report.cases
               else "DISAGREEMENT")
    style = "bold green" if passed(report) else "bold red"
    say(f"{s['total']} case{'' if s['total'] == 1 else 's'}: {s['passed']} passed, "
        f"{s['failed']} failed — {verdict} ({report.seconds:.2f} s)", style)


def _render_failures(failed: list[CaseResult], say, width: int = 80) -> None:
    """The failing cases by diagnosis, most cases first: the first case of each of the
    first :data:`SHOWN_IN_FULL` ways in full (compact) and which other cases fail the same
    way; the rest one line each."""
    ways: dict = {}
    for case in failed:
        ways.setdefault((case.group, diagnosis_key(case)), []).append(case)
    ordered = sorted(ways.values(), key=len, reverse=True)
    for i, cases in enumerate(ordered):
        first, rest = cases[0], cases[1:]
        if i < SHOWN_IN_FULL:
            say(failure_text(first, compact=True), "red", soft_wrap=True)
            if rest:
                head = f"  the same in {len(rest)} more case{'s' if len(rest) > 1 else ''}: "
                say(head + _names(rest, width - len(head)), "red", soft_wrap=True)
        else:
            more = f" (and {len(rest)} more like it)" if rest else ""
            say(f"FAIL {first.name}{more}: {why(first).splitlines()[0]}", "red",
                soft_wrap=True)
    if any(len(c) > 1 for c in ordered) or len(ordered) > SHOWN_IN_FULL:
        say("(-v: every case in full, every number: --json)", "dim")


def _names(cases: list[CaseResult], room: int) -> str:
    """The cases' names, as many as fit in ``room`` columns (at least one), then ``… (+k)``."""
    shown: list[str] = []
    for i, c in enumerate(cases):
        tail = f", … (+{len(cases) - i - 1})" if i + 1 < len(cases) else ""
        text = ", ".join(shown + [c.name]) + tail
        if shown and len(text) > room:
            break
        shown.append(c.name)
    left = len(cases) - len(shown)
    return ", ".join(shown) + (f", … (+{left})" if left else "")


def table_text(report: Report, *, verbose: bool = False, width: int = 100) -> str:
    """The console report as plain text (``str(report)``)."""
    from rich.console import Console

    console = Console(width=width, record=True, file=_Null(), no_color=True,
                      force_terminal=False, highlight=False, soft_wrap=False)
    render_table(report, console, verbose=verbose)
    return console.export_text(styles=False).rstrip("\n")


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def group_line(name: str, cases: list[CaseResult]) -> str:
    """``PASS name: 36 passed, 0 failed`` and, indented below, the worst error (its pair and
    its share of the allowed error) and FD's coverage."""
    bad = sum(not c.passed for c in cases)
    comps = [c for case in cases for c in case.comparisons]
    mine = [c for c in comps if c.pair[0].startswith("candidate")]
    worst = max(mine or comps, key=lambda c: c.ratio, default=None)   # the candidate's first
    line = f"{'FAIL' if bad else 'PASS'} {name}: {len(cases) - bad} passed, {bad} failed"
    broken = list(dict.fromkeys(i.name for case in cases for i in case.invariants
                                if not i.passed))
    if bad and broken and (worst is None or worst.passed) and \
            not any(c.error for c in cases):        # the failure is an invariant, not an error
        line += (f"\n    within tolerance but broken: {', '.join(broken[:3])}"
                 + (f" (+{len(broken) - 3})" if len(broken) > 3 else ""))
    elif worst is not None:
        line += (f"\n    worst error {fmt(worst.max_rel_error)} ({pair_label(worst.pair, ' vs ')}, "
                 f"{worst.ratio:.2g}× allowed)")
    partial = [c for c in cases if fd_cell(c) not in ("all", "—")]
    if partial:
        least = min(partial, key=lambda c: c.fd.columns or 0)
        line += f"\n    FD covered {least.fd.columns} of {least.params['classes']} columns"
        if least.fd.probes:
            line += f" (+{least.fd.probes} probes)"
        if len(partial) < len(cases):
            line += f" in {len(partial)} of {len(cases)} cases"
    elif any(c.fd for c in cases):
        line += "; FD every column"
    return line


def fd_cell(case: CaseResult) -> str:
    """FD coverage in a table cell: all, covered/classes columns, or H·d (second order)."""
    if case.fd is None:
        return "—"
    if case.fd.coverage == "every coordinate":
        return "all"
    if case.fd.columns is None:
        return "H·d"
    return f"{case.fd.columns}/{case.params['classes']}"


REFS = "references"
#: one column for the worst of the candidate's pairs with the references (narrow consoles)
CAND = "candidate vs references"
#: one column for the worst of the gradients at the other upstream gradients (candidate@g=...)
UPSTREAM = "upstream"
#: one column for the worst rank's columns (candidate[rank r]): each rank's in the failures
RANKS = "ranks"


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
        ranks = [p for p in pairs if p[0].startswith("candidate[rank ")]
        ranks = [RANKS] if ranks else []   # --tensor-parallel: the worst rank (80 columns)
        pairs = [p for p in pairs if p[0] == "candidate"] + extra + other_g + ranks + [REFS]
    # words shared by every case of the table go to its title, the rows keep what differs
    parts = [name_parts(c) for c in cases]
    same = [all(len(p) > i and p[i] == parts[0][i] for p in parts) for i in range(len(parts[0]))]
    if len(cases) > 1 and any(same):
        shared = " ".join(w for w, s in zip(parts[0], same) if s)
        title = f"{title}: {shared}" if title else shared
    else:
        same = [False] * len(parts[0])
    names = [" ".join(w for i, w in enumerate(words) if i >= len(same) or not same[i])
             for words in parts]
    # each number column: 8 characters + 2 of padding + 1 of divider; the verdict 4 + 3; the
    # case gets the rest, so that numbers and verdicts are never cut.  Too narrow for the
    # case names (80 columns, a loss convention's extra columns): the candidate's pairs with
    # the references become one column, their worst
    fd_width = max([len(fd_cell(c)) for c in cases] + [3])
    room = lambda n: width - 11 * n - 7 - 3 - fd_width    # noqa: E731
    mine = [p for p in pairs if p[0] == "candidate"]
    if len(mine) > 1 and room(len(pairs)) < min(max(map(len, names)), 24):
        pairs = [CAND] + [p for p in pairs if p not in mine]
    table = Table(title=title and as_text(title), title_justify="left", title_style="bold",
                  header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, caption="errors: max |A - B| / scale (the gradient's; loss, lse: their terms')")
    table.add_column("case", overflow="fold", no_wrap=False, min_width=12,
                     max_width=max(12, room(len(pairs))))
    for p in pairs:
        label = {REFS: "refs\nagree", CAND: "cand vs\nrefs"}.get(p) or pair_label(p)
        table.add_column(label, justify="right", no_wrap=True, min_width=8)
    table.add_column("FD\ncols", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=4)
    for case, name in zip(cases, names):
        cells = [Text(name)]
        by_pair = {c.pair: c for c in case.comparisons}
        if CAND in pairs:
            by_pair[CAND] = max((c for c in case.comparisons if c.pair in mine),
                                key=lambda c: c.ratio, default=None)
        if has_candidate:
            refs = [c for c in case.comparisons if c.pair[0] in SHORT_METHOD
                    and c.pair[0] != "candidate"]
            by_pair[REFS] = max(refs, key=lambda c: c.ratio) if refs else None
            ups = [c for c in case.comparisons if c.pair[0].startswith("candidate@")]
            by_pair[UPSTREAM] = max(ups, key=lambda c: c.ratio) if ups else None
            rks = [c for c in case.comparisons if c.pair[0].startswith("candidate[rank ")]
            by_pair[RANKS] = max(rks, key=lambda c: c.ratio) if rks else None
        for p in pairs:
            c = by_pair.get(p)
            if c is None:
                cells.append(Text("—", style="dim"))
            else:
                cells.append(Text(fmt(c.max_rel_error), style="green" if c.passed else "red bold"))
        cells.append(Text(fd_cell(case), style="dim"))
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
    """``softcheck mutants``: one row per mutant (options, cases caught, cases whose diagnosis
    names the bug by its own hint, verdict), a summary."""
    from rich.table import Table

    from ..tools.mutants import summary

    from rich import box

    # one row per mutant at any width: the options column is cut (…) where the console is
    # narrow, and the regimes a mutant is caught in only shown where there is room
    wide = console.width >= 140
    rows = []
    for r in results:
        name, opts, caught, named, verdict = r.row()
        rows.append([name, caught if wide else caught.split(" (")[0], named, verdict, opts])
    heads = ("mutant", "caught", "named", "verdict", "options")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    room = max(12, console.width - sum(widths[:4]) - 3 * 4 - 2)   # 3: padding, divider
    table = Table(header_style="bold", pad_edge=False, box=box.SIMPLE_HEAD)
    for h, w in zip(heads[:4], widths):
        table.add_column(h, no_wrap=True, min_width=w)
    table.add_column("options", no_wrap=True, overflow="ellipsis", max_width=room)
    for r, row in zip(results, rows):
        opts = row[4] if len(row[4]) <= room else row[4][:room - 1] + "…"
        table.add_row(*row[:4], opts, style="green" if r.ok else "bold red")
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
