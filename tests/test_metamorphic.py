"""Metamorphic relations, the spread regime, and diagnoses that name the bug (issue 18)."""

import subprocess
import sys

import numpy as np
import pytest
from reports import load_report

import softcheck
from softcheck.judge.compare import digits
from softcheck.reference.analytic import softmax
from softcheck.tools.mutants import correct, run_mutants

DTYPES = ["float64", "float32", "bfloat16", "float16"]


def hints(rep):
    return [h for c in rep.failed for h in c.diagnosis]


def broken(rep):
    return {r.name for c in rep.cases for r in c.relations if not r.passed}


def _batch_max(z, y):
    z = np.asarray(z, np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(z - z.max())
        p = e / e.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p / len(y)


def _global_mean_shift(z, y):
    z = np.asarray(z, np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(z - z.mean())
        p = e / e.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p / len(y)


@pytest.mark.parametrize("fn", [_batch_max, _global_mean_shift])
def test_shift_that_is_not_per_row_fails_the_default_suite(fn):
    rep = softcheck.check(fn, in_process=True)
    assert not rep.passed
    spread = [c for c in rep.failed if c.params["regime"] == "spread" and c.params["batch"] > 1]
    assert spread, "the spread regime must catch it"
    if fn is _batch_max:
        assert "shift invariance" in broken(rep)     # in every regime, not only spread


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_batch_max_shift_is_named():
    rep = softcheck.check(_batch_max, regime="spread", batch=6, dtype="float64")
    assert any("batch-wide maximum" in h for h in hints(rep))


def test_one_broken_relation_fails_with_its_name():
    def clamped(z, y):                   # correct for |z| < 50, not under a shift of 2^k
        return correct(np.clip(np.asarray(z, np.float64), -50, 50), y).astype(z.dtype)

    rep = softcheck.check(clamped, in_process=True, regime="normal", dtype="float64")
    assert not rep.passed
    assert all(c.passed for case in rep.cases for c in case.comparisons)
    assert broken(rep) == {"shift invariance"}
    out = subprocess.run([sys.executable, "-m", "softcheck", "check",
                          "tests/candidates/relations.py:tie_broken", "--regime", "normal",
                          "--dtype", "float64"], capture_output=True, text=True)
    assert out.returncode == 1
    assert "relation broken: all-equal logits" in out.stdout + out.stderr


@pytest.mark.slow  # 7 s measured (2 cores, load ~1): CI runs the rest
@pytest.mark.parametrize("tolerance", ["strict", "native"])
def test_correct_numpy_and_mutants_correct_pass_every_relation_in_every_dtype(tolerance):
    from scripts_examples import numpy_ce

    for fn, opts in ((numpy_ce.grad, {"ignore_index": -100, "label_smoothing": 0.1}),
                     (correct, {"weight": "random", "ignore_index": -100, "label_smoothing": 0.1,
                                "z_loss": 1e-3, "softcap": 20.0, "temperature": 1.5}),
                     (correct, {"targets": "probs", "reduction": "sum"}),
                     (correct, {"reduction": "none", "weight": "random", "ignore_index": 3})):
        rep = softcheck.check(fn, in_process=True, dtype=DTYPES, tolerance=tolerance, **opts)
        assert rep.passed, [c.name for c in rep.failed]
        assert all(c.relations for c in rep.cases)


@pytest.mark.slow
@pytest.mark.parametrize("tolerance", ["strict", "native"])
def test_correct_jax_and_torch_pass_every_relation_in_every_dtype(tolerance):
    """Under strict, the 16-bit JAX/torch kernels keep intermediates in the dtype and fail
    some reference comparisons (README); a relation may then break only in such a case."""
    from scripts_examples import jax_ce, torch_ce

    for fn, opts in ((jax_ce.grad, {}), (torch_ce.grad, {"reduction": "sum"}),
                     (torch_ce.grad, {"weight": "random", "ignore_index": -100,
                                      "label_smoothing": 0.1, "reduction": "none"})):
        rep = softcheck.check(fn, in_process=True, dtype=DTYPES, tolerance=tolerance, **opts)
        for c in rep.cases:
            refs_ok = all(x.passed for x in c.comparisons)
            if tolerance == "native" or refs_ok:
                assert all(r.passed for r in c.relations), (c.name, c.relations)
        if tolerance == "native":
            assert rep.passed, [c.name for c in rep.failed]


@pytest.mark.slow
def test_every_mutant_caught_and_named_by_its_own_hint():
    results = run_mutants()
    assert all(r.ok for r in results), [(r.mutant.name, r.verdict) for r in results]


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_mutants_table_has_named_column():
    out = subprocess.run([sys.executable, "-m", "softcheck", "mutants", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    results = run_mutants(names=["float32-inside", "batch-max-shift"])
    assert all(r.named and r.ok for r in results)
    assert results[0].row()[3] == f"{len(results[0].named)}/{len(results[0].caught)}"


# ---------------------------------------------------------------- weak diagnoses, each fixed

def test_float32_arithmetic_in_float64_function_is_named_precision_loss():
    rep = softcheck.check(lambda z, y: correct(np.asarray(z, np.float32), y).astype(np.float64), in_process=True,
                          dtype="float64", regime="normal")
    assert any("float32's rounding level" in h for h in hints(rep))


def test_smoothing_on_ignored_rows_named_pytorch73205():
    results = run_mutants(names=["smoothing-on-ignored-rows"])
    assert results[0].ok and results[0].named


def test_class_weights_ignored_pattern_can_fire():
    rep = softcheck.check(lambda z, y, weight=None, **kw: correct(z, y, **kw), in_process=True, weight="random",
                          dtype="float64", regime="normal")
    assert any("class weights are ignored" in h for h in hints(rep))


def test_count_denominator_instead_of_weight_sum_is_named():
    def count_mean(z, y, weight=None, ignore_index=-100):
        g = correct(z, y, weight=weight, ignore_index=ignore_index, reduction="sum")
        return g / max(int(np.sum(y != ignore_index)), 1)

    rep = softcheck.check(count_mean, in_process=True, weight="random", ignore_index=-100, dtype="float64",
                          regime="normal")
    assert any("instead of the weight sum" in h for h in hints(rep))


def test_rows_zeroed_by_a_clip_in_log_p_are_named():
    rep = softcheck.check(lambda z, y: _zero_tiny(z, y), in_process=True, dtype="float64", regime="wrong", batch=6)
    assert any("a clip or eps inside log(p)" in h for h in hints(rep))
    assert not any("constant factor 0" in h for h in hints(rep))


def _zero_tiny(z, y):
    g = np.array(correct(z, y))
    g[softmax(z)[np.arange(len(y)), y] < 1e-12] = 0.0
    return g


def test_nan_from_log_of_softmax_not_blamed_on_max_shift():
    results = run_mutants(names=["log-of-softmax"])
    assert results[0].ok
    rep = softcheck.check(results[0].mutant.fn, regime="large", dtype="float64", batch=6,
                          in_process=True)
    assert not any("max shift" in h for h in hints(rep))


def test_confident_regime_names_no_accidental_known_bug():
    # entries ~1e-13 of the scale: every pattern is within rounding of the correct gradient
    rep = softcheck.check(lambda z, y: correct(z, y) * (1 + 1e-3), in_process=True, regime="confident",
                          dtype="float64", batch=6, weight="random")
    assert not any("known bug" in h for h in hints(rep))


@pytest.mark.slow  # 9 s measured (2 cores, load ~1): CI runs the rest
def test_native_hint_not_suggested_when_native_is_on():
    from scripts_examples import jax_ce

    rep = softcheck.check(jax_ce.grad, dtype="bfloat16", tolerance="strict")
    assert any("--tolerance native" in h for h in hints(rep))
    rep = softcheck.check(lambda z, y: (correct(z, y) * 1.01), in_process=True, dtype="bfloat16",
                          tolerance="native", regime="normal")
    assert not any("--tolerance native accepts" in h for h in hints(rep))


def test_one_column_error_printed_with_the_digits_that_differ():
    got, want = digits(0.026173, 0.026211)
    assert got != want and got == "0.026173"
    rep = softcheck.check(lambda z, y: _col(z, y), in_process=True, dtype="float64", regime="normal", batch=6)
    c = rep.failed[0].comparisons[0]
    assert c.worst and all(e.cls == 3 for e in c.worst)    # only entries out of tolerance


def _col(z, y):
    g = np.array(correct(z, y))
    g[:, 3] *= 1.001
    return g


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_target_error_reported_apart_and_schema_valid(tmp_path):
    out = subprocess.run([sys.executable, "-m", "softcheck", "check",
                          "tests/candidates/relations.py:target_off", "--regime", "normal",
                          "--dtype", "float64", "--json", "-"], capture_output=True, text=True)
    d = load_report(out.stdout)
    c = d["cases"][-1]["comparisons"][0]
    assert c["target_error"]["target"]["ratio"] > 1 >= c["target_error"]["others"]["ratio"]
    assert d["cases"][0]["coverage"]["relations"]
    assert set(d["cases"][0]["coverage"]["references"]) == {"analytic", "autodiff",
                                                            "finite_difference"}


def test_a_gradient_named_off_by_a_factor_gets_no_relation_hint():
    """A 2× gradient also breaks 'all-equal logits'; the hint used to send the reader to tied
    logits ('a tie broken by argmax ...') beside the factor that is the real bug."""
    import softcheck
    from softcheck.tools.mutants import correct

    rep = softcheck.check(lambda z, y: 2 * correct(z, y), in_process=True, dtype="float64", regime="normal",
                          batch=3, classes=5)
    hints = [h for c in rep.failed for h in c.diagnosis]
    assert any(h.startswith("off by a constant factor 2") for h in hints), hints
    assert not any(h.startswith("relation ") for h in hints), hints
