"""Words shared by every format: case names in short, numbers, a failing case in full."""

from __future__ import annotations

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


def failure_text(case: CaseResult) -> str:
    """A failing case in words: what failed, where, and what it looks like."""
    lines = [f"FAIL {case.name}"]
    if case.error:
        lines.append("  error: " + case.error.replace("\n", "\n    "))
    for c in case.comparisons:
        if c.passed:
            continue
        lines.append(f"  {c.pair[0]} vs {c.pair[1]}: {c.reason}")
        te = c.target_error
        if te:
            lines.append(f"    target entries: max error {fmt(te['target']['max_rel_error'])} of the "
                         f"scale ({te['target']['ratio']:.3g}× allowed); other entries: "
                         f"{fmt(te['others']['max_rel_error'])} ({te['others']['ratio']:.3g}× allowed)")
        for e in c.worst:
            tags = ", ".join(t for t, on in (("target class", e.is_target), ("ignored row", e.ignored)) if on)
            got, want = digits(e.value, e.reference)
            col = "column" if "_grad_" in c.pair[1] else "class"     # fused: (row, column)
            lines.append(f"    row {e.row}, {col} {e.cls}{' (' + tags + ')' if tags else ''}: "
                         f"got {got}, expected {want}")
    for i in case.invariants:
        if not i.passed:
            lines.append(f"  invariant broken ({i.method}): {i.name}: {i.detail}")
    for r in case.relations:
        if not r.passed:
            lines.append(f"  relation broken: {r.name} ({r.statement}): {r.detail}")
    for d in case.diagnosis:
        lines.append(f"  hint: {d}")
    for n in case.notes:
        lines.append(f"  note: {n}")
    last = case.output.strip().splitlines()[-1:] if case.output else []
    if last and not (case.error and last[0].strip() in case.error):   # not already quoted
        lines.append("  the candidate's output:")
        lines += [f"    | {ln}" for ln in case.output.rstrip("\n").splitlines()[-20:]]
    return "\n".join(lines)


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
