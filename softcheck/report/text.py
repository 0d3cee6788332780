"""Words shared by every format: case names in short, numbers, a failing case in full."""

from __future__ import annotations

import re

from ..engine.results import CaseResult, Report
from ..judge.compare import digits

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
                            ("mean_over", "mean"), ("logit_scale", "S"),
                            ("fd_budget", "budget")):
            tag = tag.replace(long + "=", short + "=")
        parts.append(tag)
    return parts


#: why a report without a case does not pass (nothing was checked)
NO_CASES = "no case ran: nothing was checked, so nothing passed"


def passed(report: Report) -> bool:
    """The verdict every format and the exit code give: every case passed, and there was at
    least one (a run, a batch or a pytest session that judged nothing never passes)."""
    return bool(report.cases) and report.passed


def fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x != x or x in (float("inf"), float("-inf")):
        return "nan" if x != x else "inf"
    return f"{x:.1e}"


def by_group(report: Report) -> dict[str, list[CaseResult]]:
    """The cases by group, in report order (ungrouped cases under the command's name)."""
    groups: dict[str, list[CaseResult]] = {}
    for case in report.cases:
        groups.setdefault(case.group or report.command, []).append(case)
    return groups


def _comparison_lines(c, *, pairs: str | None = None, compact: bool = False) -> list[str]:
    """A failing comparison: its reason, the target entries' share, its worst entries."""
    lines = [f"  {pairs or f'{c.pair[0]} vs {c.pair[1]}'}: {c.reason}"]
    te = c.target_error
    if te and compact:
        t, o = te["target"], te["others"]
        lines.append(f"    target entries {fmt(t['max_rel_error'])} ({t['ratio']:.2g}× allowed), "
                     f"others {fmt(o['max_rel_error'])} ({o['ratio']:.2g}×)")
    elif te:
        lines.append(f"    target entries: max error {fmt(te['target']['max_rel_error'])} of the "
                     f"scale ({te['target']['ratio']:.3g}× allowed); other entries: "
                     f"{fmt(te['others']['max_rel_error'])} ({te['others']['ratio']:.3g}× allowed)")
    for e in c.worst:
        tags = ", ".join(t for t, on in (("target class", e.is_target), ("ignored row", e.ignored)) if on)
        got, want = digits(e.value, e.reference)
        col = "column" if "_grad_" in c.pair[1] else "class"     # fused: (row, column)
        lines.append(f"    row {e.row}, {col} {e.cls}{' (' + tags + ')' if tags else ''}: "
                     f"got {got}, expected {want}")
    return lines


def _merged(failing) -> list[tuple[str, object]]:
    """Failing comparisons of one side against references that agree with each other (the
    same max error to 3 digits) as one: ``candidate vs analytic, autodiff, FD``."""
    groups: dict = {}
    for c in failing:
        groups.setdefault((c.pair[0], f"{c.max_rel_error:.3g}"), []).append(c)
    out = []
    for (side, _), cs in groups.items():
        if len(cs) == 1:
            out.append((f"{side} vs {cs[0].pair[1]}", cs[0]))
        else:
            refs = ", ".join(SHORT_METHOD.get(c.pair[1], c.pair[1]) for c in cs)
            out.append((f"{side} vs {refs} (they agree)", cs[0]))
    return out


def _output_lines(case: CaseResult, keep: int) -> list[str]:
    last = case.output.strip().splitlines()[-1:] if case.output else []
    if not last or (case.error and last[0].strip() in case.error):   # already quoted
        return []
    return ["  the candidate's output:"] + [
        f"    | {ln}" for ln in case.output.rstrip("\n").splitlines()[-keep:]]


def failure_text(case: CaseResult, *, compact: bool = False) -> str:
    """A failing case in words: its hints first, what failed, where, and what it looks like.
    ``compact``: references that agree merged into one line, no hints or notes (the console
    shows them once for all cases), the candidate's last 5 lines of output."""
    lines = [f"FAIL {case.name}"]
    if not compact:
        lines += [f"  hint: {d}" for d in case.diagnosis]
    if case.error:
        lines.append("  error: " + case.error.replace("\n", "\n    "))
    failing = [c for c in case.comparisons if not c.passed]
    if compact:
        for label, c in _merged(failing):
            lines += _comparison_lines(c, pairs=label, compact=True)
    else:
        for c in failing:
            lines += _comparison_lines(c)
    for i in case.invariants:
        if not i.passed:
            lines.append(f"  invariant broken ({i.method}): {i.name}: {i.detail}")
    broken = [r for r in case.relations if not r.passed]
    if compact and broken and (failing or case.error):     # the comparisons said where
        lines.append(f"  relation broken: {', '.join(r.name for r in broken)}")
    elif compact and broken:                                # the relation is the evidence
        lines.append(f"  relation broken: {broken[0].name}: {broken[0].detail}")
        if len(broken) > 1:
            lines.append(f"  relation broken: {', '.join(r.name for r in broken[1:])}")
    else:
        lines += [f"  relation broken: {r.name} ({r.statement}): {r.detail}" for r in broken]
    if not compact:
        lines += [f"  note: {n}" for n in case.notes]
    lines += _output_lines(case, 5 if compact else 20)
    return "\n".join(lines)


_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?")


def shape(text: str) -> str:
    """A hint with its numbers blanked: ``off by a constant factor #`` for every factor."""
    return _NUMBER.sub("#", text)


def diagnosis_key(case: CaseResult) -> str:
    """Cases with the same key fail the same way: the same most telling reason (its numbers
    aside: a factor that varies with the case's random grad_output is one diagnosis)."""
    return shape(why(case).split("\n", 1)[0])


def counted(items_by_case) -> list[tuple[str, int, bool]]:
    """Each distinct item (by :func:`shape`) once, most cases first: its first text, the
    number of cases that have it, whether its numbers vary between them."""
    counts: dict[str, list] = {}
    for items in items_by_case:
        for key, it in {shape(it): it for it in reversed(items)}.items():
            entry = counts.setdefault(key, [it, 0, False])
            entry[1] += 1
            entry[2] = entry[2] or it != entry[0]
    return sorted((tuple(v) for v in counts.values()), key=lambda v: -v[1])


def why(case: CaseResult) -> str:
    """The most telling reason a case failed: its error, a known-bug match, the first hint,
    or the first failing comparison."""
    if case.error:
        return case.error
    known = [d for d in case.diagnosis if d.startswith("looks like a known bug")]
    if known or case.diagnosis:
        return (known or list(case.diagnosis))[0]
    failing = [c.reason for c in case.comparisons if not c.passed and c.reason]
    return failing[0] if failing else "an invariant is broken"
