"""The JSON Schema (draft 2020-12) of softcheck's report; ``softcheck schema`` prints it.

Bump ``report.SCHEMA_VERSION`` on any breaking change (a field removed, renamed or retyped);
adding an optional field is not breaking.  A non-finite float is written as ``null`` with a
sibling ``<key>_reason`` ("nan", "inf", "-inf"): strict JSON, and the reason kept.
"""

from __future__ import annotations

import json

from ..engine.results import DETAILS, SCHEMA_VERSION

_NUM = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}
_REASON = {"^[a-z_]+_reason$": {"enum": ["nan", "inf", "-inf"],
                                "description": "Why the number beside it is null: it was "
                                               "NaN, +inf or -inf."}}


def _d(schema: dict, text: str) -> dict:
    """``schema`` with its description."""
    return {**schema, "description": text}


def _obj(props: dict, required=None, *, strict: bool = True) -> dict:
    out = {"type": "object", "properties": props,
           "required": list(props) if required is None else required}
    if strict:
        out["additionalProperties"] = False
        out["patternProperties"] = _REASON
    return out


ENTRY = _obj({
    "row": _d({"type": "integer"}, "Row (example) index of the entry."),
    "class": _d({"type": "integer"}, "Class (column) index of the entry."),
    "is_target": _d({"type": "boolean"}, "The entry is the row's target class."),
    "ignored": _d({"type": "boolean"}, "The row is ignored (target == ignore_index)."),
    "value": _d(_NUM, "The first method's value (null if not finite)."),
    "reference": _d(_NUM, "The second method's value (null if not finite)."),
    "error": _d(_NUM, "|value - reference| (null if either is not finite)."),
})

_PART = _obj({"max_abs_error": _d(_NUM, "The largest absolute error there."),
               "max_rel_error": _d(_NUM, "It, relative to the gradient's scale."),
               "ratio": _d(_NUM, "The largest error / allowed error there.")})

#: fused linear cross-entropy pairs: METHOD_OUTPUT
FUSED_PAIR_NAMES = [f"{m}_{o}" for m in ("candidate", "reference", "autodiff",
                                         "finite_difference")
                    for o in ("grad_x", "grad_W", "grad_b")] + ["reference_loss"]

COMPARISON = _obj({
    "pair": _d({"type": "array", "items": {"anyOf": [{"enum": [
        "candidate", "analytic", "autodiff", "finite_difference",
        "candidate_loss", "reference_loss", "candidate_z_loss", "reference_z_loss",
        "candidate_lse", "reference_lse", "candidate@g=1", "candidate@g=scalar",
        *FUSED_PAIR_NAMES]},
        {"type": "string", "pattern": r"^candidate\[rank [0-9]+\](_grad_x)?$"}]},
                "minItems": 2, "maxItems": 2},
               "The two things compared: [checked, reference]: a gradient pair; a forward value "
               "(candidate_loss vs reference_loss, z_loss, lse); the gradient at another "
               "upstream gradient (candidate@g=1, candidate@g=scalar vs analytic); under "
               "--tensor-parallel, rank r's columns (candidate[rank r] vs analytic) or, with "
               "--hidden, rank r's whole grad_x (candidate[rank r]_grad_x vs "
               "reference_grad_x); or, for "
               "fused linear cross-entropy (--hidden), one output of METHOD_OUTPUT against "
               "another method's (METHOD: candidate, reference = the blockwise closed form, "
               "autodiff, finite_difference = complex-step directional probes; OUTPUT: loss, "
               "grad_x, grad_W, grad_b; a finite_difference pair compares directional "
               "derivatives, one entry per probe; worst entries give (row, column) of the "
               "output's array, max_rel_error is relative to the output's largest |entry|)."),
    "max_abs_error": _d(_NUM, "max |A - B| over the compared entries."),
    "max_rel_error": _d(_NUM, "max_abs_error / the gradient's scale (judge/tolerances.py)."),
    "atol": _d(_NUM, "The derived absolute tolerance (per-dtype table, plus the FD band)."),
    "rtol": _d(_NUM, "The derived relative tolerance (times |reference|)."),
    "user_atol": _d(_NUM, "--atol: the user's absolute tolerance that judged this pair "
                          "(null: the derived atol did)."),
    "user_rtol": _d(_NUM, "--rtol: the user's relative tolerance that judged this pair "
                          "(null: the derived rtol did)."),
    "ratio": _d(_NUM, "The largest error / allowed error over the entries: <= 1 passes."),
    "passed": _d({"type": "boolean"}, "The pair agrees within the tolerance."),
    "reason": _d(_STR, "Why the pair failed (null when it passed)."),
    "worst": _d({"type": "array", "items": ENTRY},
                "The entries closest to (or beyond) the tolerance, worst first (only entries "
                "out of tolerance when the pair failed); left out for passing cases with "
                "detail 'summary'."),
    "target_error": _d({"oneOf": [{"type": "null"}, _obj({
        "target": _d(_PART, "At the target entries (index targets)."),
        "others": _d(_PART, "At every other entry.")})]},
        "The target entries' own error apart from the others' (kernels lose precision "
        "there as p -> 1); null when there is no target entry."),
}, required=["pair", "max_abs_error", "max_rel_error", "atol", "rtol", "ratio", "passed",
             "reason"])

INVARIANT = _obj({
    "name": _d({"type": "string"}, "The property (row sums are zero, ignored rows are zero)."),
    "method": _d({"type": "string"}, "The method whose gradient was tested."),
    "passed": _d({"type": "boolean"}, "The property holds within the tolerance."),
    "detail": _d({"type": "string"}, "What was measured."),
})

RELATION = _obj({
    "name": _d({"type": "string"}, "The metamorphic relation (judge/metamorphic.py)."),
    "passed": _d({"type": "boolean"}, "The candidate keeps the relation within tolerance."),
    "max_abs_error": _d(_NUM, "max |difference| between the two sides of the relation."),
    "max_rel_error": _d(_NUM, "max_abs_error / the gradient's scale."),
    "ratio": _d(_NUM, "The largest error / allowed error: <= 1 passes."),
    "atol": _d(_NUM, "The allowed absolute error (twice the dtype's tolerance)."),
    "detail": _d(_STR, "What was compared, and what a break points at."),
})

COVERAGE = _obj({
    "references": _d({"type": "array", "items": {"type": "string"}},
                     "The references that judged the case."),
    "relations": _d({"type": "array", "items": {"type": "string"}},
                    "The metamorphic relations that judged the candidate."),
    "probes": _d({"type": "integer", "minimum": 0}, "Directional FD probes."),
    "fd": _d(_STR, "What finite differences covered."),
})

FD = _obj({
    "method": _d({"type": "string"}, "central, richardson or complex (the step scheme)."),
    "error_estimate": _d(_NUM, "The largest predicted FD error of a row (its band)."),
    "step": _d(_NUM, "The median step h over the rows."),
    "coverage": _d({"type": "string"}, "Which entries FD computed: every coordinate, or a "
                                       "subset of columns plus directional probes."),
    "columns": _d({"type": ["integer", "null"]}, "Columns FD computed (null: second order)."),
    "probes": _d({"type": "integer", "minimum": 0}, "Directional probes over every "
                                                    "coordinate (when columns were sampled)."),
})

PARAMS = _obj({
    "classes": _d({"type": "integer", "minimum": 1}, "C, the number of classes."),
    "batch": _d({"type": "integer", "minimum": 1}, "N, the number of rows."),
    "dtype": _d({"enum": ["float64", "float32", "bfloat16", "float16"]},
                "The dtype of the logits (and of the gradient checked)."),
    "targets": _d({"enum": ["index", "onehot", "probs"]}, "Class indices or (N, C) targets."),
    "reduction": _d({"enum": ["mean", "sum", "none"]}, "The loss reduction."),
    "regime": _d({"type": "string"}, "How the logits were drawn (normal, large, tied, "
                                     "confident, wrong, masked, all-ignored, target-prob, "
                                     "below-cap; "
                                     "'inputs': the "
                                     "user's own arrays)."),
    "seed": _d({"type": "integer"}, "The seed every input was drawn from."),
    "weight": _d({"oneOf": [{"type": "null"}, {"const": "random"},
                            {"type": "array", "items": {"type": "number"}}]},
                 "Class weights: null, 'random' (drawn from the seed) or C numbers."),
    "ignore_index": _d({"type": ["integer", "null"]}, "The ignored target value (null: none)."),
    "label_smoothing": _d({"type": "number", "minimum": 0, "maximum": 1}, "EPS."),
    "smoothing_convention": _d({"enum": ["uniform", "others"]},
                               "uniform: EPS/C on every class; others: EPS/(C-1) off-target."),
    "temperature": _d({"type": "number", "exclusiveMinimum": 0}, "Logits divided by T."),
    "softcap": _d({"type": ["number", "null"]}, "Logits -> S*tanh(z/S) (null: none)."),
    "z_loss": _d({"type": "number", "minimum": 0}, "COEF of the z-loss COEF*lse^2."),
    "mean_over": _d({"oneOf": [{"enum": ["weight", "valid", "batch"]},
                               {"type": "integer", "minimum": 1}]},
                    "The mean's denominator: weight (PyTorch), valid rows, the batch, or N."),
    "all_ignored": _d({"enum": ["nan", "zero"]},
                      "The loss of a mean over zero non-ignored rows (--all-ignored)."),
    "logit_scale": _d({"type": "number", "exclusiveMinimum": 0},
                      "Logits multiplied by S before softcap (--logit-scale)."),
    "order": _d({"enum": [1, 2]}, "1: gradients; 2: Hessian-vector products."),
    "tolerance": _d({"enum": ["rounded", "strict", "native", "torch"]},
                    "The low-precision tolerance mode (rounded, the default: two roundings to "
                    "the dtype and the stored log-probabilities; strict: one rounding; "
                    "torch: fused linear cross-entropy also "
                    "allowed PyTorch's own error in the same dtype)."),
    "fused": _d(_obj({"hidden": _d({"type": "integer", "minimum": 1}, "H, the hidden size."),
                      "bias": _d({"type": "boolean"}, "An LM-head bias (--bias)."),
                      "shape": _d({"enum": ["nv", "btv"]}, "x as (N, H) or (B, T, H)."),
                      "shift": _d({"type": "integer", "minimum": 0, "maximum": 1},
                                  "1: causal shift of the labels (--shift).")}),
                "Fused linear cross-entropy (--hidden): classes is V, batch is N; present "
                "only for such cases."),
    "user_tolerance": _d(_obj({"atol": _d(_NUM, "--atol (null: derived)."),
                               "rtol": _d(_NUM, "--rtol (null: derived).")}),
                         "The user's --atol/--rtol, present only when given."),
    "inputs": _d({"type": "string"}, "The .npz file of the user's arrays (--inputs)."),
    "layout": _d(_obj({"kind": _d({"enum": ["strided"]}, "--layout strided."),
                       "row_stride": _d({"type": "integer"}, "Elements from one row of the "
                                        "candidate's logits to the next (C + padding).")}),
                 "How the candidate received the logits, present only when not contiguous."),
    "ignored_fraction": _d({"type": "number", "minimum": 0, "maximum": 1},
                           "Exactly round(F·N) rows ignored (--ignored-fraction), present "
                           "only when given."),
    "weight_dtype": _d({"enum": ["float64", "float32", "float16", "bfloat16"]},
                       "The class weights' own dtype (--weight-dtype), present only when "
                       "given."),
    "sequence": _d(_obj({"shape": _d({"enum": ["nv", "btv"]}, "logits as (N, V) or "
                                     "(B, T, V) with (B, T) targets (--shape)."),
                         "shift": _d({"type": "integer", "minimum": 0, "maximum": 1},
                                     "1: the candidate got the unshifted labels and scored "
                                     "position t against label t+1 (--shift).")}),
                   "How a logits case's candidate was called (--shape btv, --shift 1), "
                   "present only then."),
}, required=["classes", "batch", "dtype", "targets", "reduction", "regime", "seed", "order"])

TIMING = _obj({"seconds": _d({"type": "number", "minimum": 0}, "Wall-clock seconds."),
               "phases": _d({"type": "object", "additionalProperties": {"type": "number"}},
                            "A streamed case's wall-clock seconds per stage: draw, "
                            "candidate_calls (the candidate's calls, the first pass beside "
                            "them), first_pass_after (what was left of it), fd_columns, judge; "
                            "a convention kernel's upstream_variants (its calls for the other "
                            "upstream gradients, each judged).")},
              required=["seconds"])

CASE = _obj({
    "name": _d({"type": "string"}, "The case's name (C-B-dtype-targets-reduction-regime)."),
    "group": _d(_STR, "The batch group (null outside batch; under pytest the test id, "
                      "path::test[id])."),
    "target": _d(_STR, "The candidate checked (null: softcheck's own methods)."),
    "passed": _d({"type": "boolean"}, "Every comparison and invariant passed."),
    "params": _d(PARAMS, "The case's options."),
    "comparisons": _d({"type": "array", "items": COMPARISON}, "One per pair of methods."),
    "invariants": _d({"type": "array", "items": INVARIANT},
                     "Properties checked without a reference."),
    "relations": _d({"type": "array", "items": RELATION},
                    "Metamorphic relations judged on the candidate alone."),
    "coverage": _d({"oneOf": [{"type": "null"}, COVERAGE]},
                   "Which references, relations and probes judged the case."),
    "fd": _d({"oneOf": [{"type": "null"}, FD]}, "What the finite-difference judge did."),
    "scale": _d(_NUM, "The gradient's scale: errors are measured relative to it."),
    "condition": _d(_NUM, "κ = 1 + max|v| + ln C, the case's condition number."),
    "error": _d(_STR, "Why the case could not be judged (the candidate raised: the reason "
                      "and its innermost frames as 'at file:line in function')."),
    "diagnosis": _d({"type": "array", "items": {"type": "string"}},
                    "Hints on how a failing candidate is wrong."),
    "notes": _d({"type": "array", "items": {"type": "string"}}, "Remarks that do not fail."),
    "timing": _d(TIMING, "The case's time (not reproducible; kept apart)."),
    "output": _d({"type": ["string", "null"]},
                 "What the candidate printed during the case (stdout and stderr at the "
                 "file-descriptor level, child processes too), clipped to a few KB with a note."),
})

_INT_OR_NULL = {"type": ["integer", "null"], "minimum": 0}
SANDBOX = _d(_obj({
    "kind": _d({"enum": ["namespaces", "limits", "unknown"]},
               "namespaces: new user, PID and mount namespaces (the worker sees only its own "
               "processes, every mount read-only but a private tmpfs); limits: no namespaces "
               "could be made, only the limits and the rest below."),
    "user": _d({"type": "integer"}, "The uid the worker runs as (outside and inside: mapped "
                                    "to itself)."),
    "pid": _d({"type": "boolean"}, "In its own PID namespace (ended with it)."),
    "mount": _d({"type": "boolean"}, "In its own mount namespace."),
    "read_only": _d({"type": "boolean"}, "Every mount read-only (nosuid) but its private "
                                         "tmpfs ($TMPDIR) and /dev/shm."),
    "no_new_privs": _d({"type": "boolean"}, "PR_SET_NO_NEW_PRIVS, no capabilities."),
    "parent_death_signal": _d({"type": "boolean"}, "Killed when its parent dies."),
    "memory_limit": _d(_INT_OR_NULL, "Bytes of memory it may allocate (--memory-limit)."),
    "memory_by": _d({"type": ["string", "null"]}, "How: rlimit_data (RLIMIT_DATA)."),
    "pids_limit": _d(_INT_OR_NULL, "Processes and threads it may have (RLIMIT_NPROC)."),
    "pids_by": _d({"type": ["string", "null"]}, "How: a cgroup's pids.max (v2 or v1), or "
                                                "rlimit_nproc."),
    "pids_why": _d({"type": "string"}, "Why there is no process limit."),
    "why": _d({"type": "string"}, "Why it is weaker than the full sandbox."),
    "weaker": _d({"type": "string"}, "The line the console prints when it is weaker."),
}, required=["kind"]), "What confined the worker process (candidate/sandbox.py).")

CANDIDATE_PROCESS = _d({
    "type": "object",
    "additionalProperties": _obj({
        "isolated": _d({"type": "boolean"}, "It ran in its own worker process."),
        "jax_enable_x64": _d({"type": "boolean"},
                             "JAX float64 was turned on in the worker before the TARGET "
                             "loaded (the suite has float64 cases)."),
        "repeat": _d({"type": "integer", "minimum": 1}, "Calls per case on identical inputs."),
        "why": _d({"type": "string"}, "Why it was not isolated."),
        "sandbox": SANDBOX,
        "notes": _d({"type": "array", "items": {"type": "string"}},
                    "What the results of this candidate cannot show (engine/precision.py: "
                    "TRITON_INTERPRET=1 with 16-bit cases)."),
        "tensor_parallel": _d({"type": "integer", "minimum": 2},
                              "--tensor-parallel W: the TARGET ran on W torch.distributed "
                              "ranks (JAX: inside shard_map over W host devices of one "
                              "process), each given its column shard; the comparisons "
                              "'candidate[rank r]' vs 'analytic' judge rank r's columns and "
                              "the invariant 'ranks_agree_on_loss' the losses across ranks; "
                              "with --hidden each rank held its rows of W (and of the bias): "
                              "'candidate[rank r]_grad_x' judges its whole grad_x, "
                              "'ranks_agree_on_grad_x' that every rank returned the same "
                              "(all-reduced) one, and grad_W / grad_b are the ranks' rows "
                              "joined."),
        "backend": _d({"type": "string"}, "The ranks' torch.distributed backend (gloo, "
                                          "nccl), or shard_map (--framework jax)."),
        "split": _d({"type": "string"}, "How the vocabulary was split: even, or uneven (rank r "
                                        "starts at r*(V//W)+min(r, V%W); JAX: the vocabulary "
                                        "padded with -inf to W*ceil(V/W), r starts at "
                                        "r*ceil(V/W))."),
    }, required=["isolated", "repeat"]),
}, "Per candidate (by label): where it ran and how it was called.")

SUMMARY = _obj({k: _d({"type": "integer", "minimum": 0}, f"Cases {w}.")
                for k, w in (("total", "in the report"), ("passed", "that passed"),
                             ("failed", "that failed"))})

REPORT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"https://softcheck.dev/schema/report-v{SCHEMA_VERSION}.json",
    "title": "softcheck report",
    "description": "The result of softcheck run/check/batch: one entry per case, errors per "
                   "pair of methods relative to the gradient's scale; timings kept apart "
                   "under 'timing'.",
    **_obj({
        "schema_version": _d({"const": SCHEMA_VERSION}, "Bumped on a breaking change."),
        "softcheck_version": _d({"type": "string"}, "The softcheck that wrote the report."),
        "detail": _d({"enum": list(DETAILS)}, "--json-detail: 'summary' leaves out the "
                                              "worst entries of passing cases."),
        "command": _d({"enum": ["run", "check", "batch"]}, "The command that ran."),
        "target": _d(_STR, "The candidate (check), else null."),
        "passed": _d({"type": "boolean"}, "Every case passed, and there was at least one."),
        "reason": _d({"type": "string"}, "Why a report with no failed case does not pass "
                                         "(no case ran)."),
        "summary": _d(SUMMARY, "Case counts."),
        "environment": _d(_obj({"python": _d({"type": "string"}, "Python version."),
                                "numpy": _d({"type": "string"}, "NumPy version."),
                                "seed_scheme": _d({"type": "integer", "minimum": 1},
                                                  "How the seeded inputs were drawn "
                                                  "(suite/inputs.py SEED_SCHEME: 2 = a "
                                                  "generator per block of 2^20 logits; 1 = "
                                                  "one sequential generator, other numbers "
                                                  "for the same seed)."),
                                "candidate_process": CANDIDATE_PROCESS},
                               required=["python", "numpy"], strict=False),
                          "Versions, platform and JAX backend, recorded once."),
        "options": _d({"type": "object"}, "The options of the run as given (run/check: the "
                                          "suite options; batch: the file and its groups)."),
        "skipped": _d({"type": "array", "items": {"type": "string"}},
                      "Combinations left out, and why."),
        "cases": _d({"type": "array", "items": CASE}, "One entry per case."),
        "timing": _d(TIMING, "The whole run's time."),
    }, required=["schema_version", "softcheck_version", "command", "target", "passed",
                 "summary", "environment", "options", "skipped", "cases", "timing"]),
}


def schema_json() -> str:
    return json.dumps(REPORT, indent=2)
