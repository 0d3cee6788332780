"""Which precisions a candidate serves: the float64 probe, and the Triton interpreter's note.

``check``'s default dtypes include float64, but many kernels (every Triton one, most fused
ones) compute in float32 whatever they are given: judged at float64's tolerance, a correct
such kernel fails every float64 case.  When the user did not pin ``--dtype``, one small call
(:func:`float64_probe`) on a float64 case says how the kernel computes: its gradient within
float64's allowed error of the float64 closed form is float64 arithmetic (the cases stay);
outside it but within float32's, with float32 values (or errors at most entries, as float32
rounding leaves), is float32 arithmetic (the float64 cases are dropped, with a
note in the console and the report: ``--dtype float64`` still demands float64); anything else
(an error, a wrong gradient) keeps the cases, which then show what is wrong.  A false alarm is
as serious as a missed bug: a kernel is never failed for the precision it was built for, and
never excused for a wrong answer.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

#: the probe's case size (rows, classes at most): one small call
PROBE_BATCH, PROBE_CLASSES = 8, 64
#: the share of a probe's nonzero entries outside float64's bound that float32 arithmetic
#: finishing in float64 leaves (its rounding errs almost everywhere on normal logits)
WIDESPREAD = 0.5
#: the 16-bit dtypes the Triton interpreter computes wrongly (on their bit patterns)
SIXTEEN_BIT = ("bfloat16", "float16")


def float64_probe(candidate, cases: list, policy) -> str | None:
    """None when ``candidate`` computes in float64 (or the probe cannot say); else why its
    float64 cases are dropped (one line).  ``cases``: its float64 logits cases."""
    from ..judge import tolerances
    from ..reference import analytic
    from ..suite.inputs import make_inputs

    if not cases:
        return None
    # always normal logits: where p is almost one-hot (--regime confident) the gradient is
    # ~0, so a wrong one (2×) was within float32's absolute error and its float64 cases dropped
    case = min(cases, key=lambda c: (c.regime != "normal", c.batch * c.classes))
    case = dataclasses.replace(case, batch=min(case.batch, PROBE_BATCH), regime="normal",
                               classes=min(case.classes, max(PROBE_CLASSES, 2)))
    upstream = ("random" if candidate.settings.convention != "grad"
                or candidate.takes("grad_output") else "one")
    inputs = make_inputs(case, upstream=upstream)
    try:
        call = candidate.call(inputs, timeout=policy.limit, repeat=1, variants=False)
    except Exception:  # noqa: BLE001 - the cases themselves will say what went wrong
        return None
    if call.error or call.grad is None:
        return None
    grad = np.asarray(call.grad, np.float64)
    inputs64 = inputs.float64()
    ref = analytic.gradient(inputs64)
    if grad.shape != ref.shape or not np.all(np.isfinite(grad)):
        return None
    from ..reference import finite_difference as references

    scale = references.row_stats(inputs64).scale
    kappa = tolerances.condition(inputs64.logits, case.spec.divisor, case.spec.softcap)
    err = np.abs(grad - ref)

    def within(dtype):
        return bool(np.all(err <= tolerances.allowed(dtype, kappa, scale, ref)[0]))

    if within("float64") or not within("float32"):
        return None
    # float32 arithmetic leaves its values float32 numbers (cast back once at the end) or, if
    # it finishes in float64, errs at most entries; a float64 kernel wrong at a few entries
    # by less than float32's tolerance is neither, and keeps its float64 cases (which fail)
    out = err > tolerances.allowed("float64", kappa, scale, ref)[0]
    live = ref != 0                    # ignored rows are exact zeros in any arithmetic
    if not np.array_equal(grad.astype(np.float32).astype(np.float64), grad) and \
            float(np.mean(out[live])) < WIDESPREAD:
        return None
    rel = float(err.max() / max(float(np.abs(ref).max()), np.finfo(float).tiny))
    return (f"float64 cases of {candidate.label}: it computes in float32 (a probe call on "
            f"float64 logits came back {rel:.1e} from the float64 gradient, within float32's "
            "tolerance, not float64's); give --dtype float64 to demand float64")


def fit(jobs: list, process: dict, *, probe: bool) -> tuple[list, list[str]]:
    """The jobs less the float64 cases of each candidate that computes in float32 (when
    ``probe``: the user did not pin --dtype), and the notes saying so; the interpreter's note
    added to each candidate's ``process`` entry (the report's candidate_process)."""
    skipped, drop = [], set()
    by_cand: dict[int, list] = {}
    for j in jobs:
        if j.candidate is not None:
            by_cand.setdefault(id(j.candidate), []).append(j)
    for mine in by_cand.values():
        cand = mine[0].candidate
        note = interpreter_note([j.case for j in mine])
        if note and cand.label in process:
            process[cand.label].setdefault("notes", []).append(note)
        f64 = [j for j in mine if j.case.dtype == "float64" and j.case.hidden is None
               and getattr(j.case, "inputs", None) is None]
        why = float64_probe(cand, [j.case for j in f64], mine[0].policy) if probe else None
        if why:
            skipped.append(f"{len(f64)} {why}")
            drop.update(id(j) for j in f64)
    return [j for j in jobs if id(j) not in drop], skipped


def interpreter_note(cases: list) -> str | None:
    """The Triton interpreter's warning when ``TRITON_INTERPRET=1`` and a case is 16-bit."""
    if os.environ.get("TRITON_INTERPRET", "") in ("", "0"):
        return None
    dts = sorted({c.dtype for c in cases if c.dtype in SIXTEEN_BIT})
    if not dts:
        return None
    return (f"TRITON_INTERPRET=1: the Triton interpreter computes {' and '.join(dts)} on the "
            "raw bit patterns (0.5 × 1.75 → 1e-19), so a Triton kernel's 16-bit results here "
            "are not evidence either way; judge 16-bit on a GPU")
