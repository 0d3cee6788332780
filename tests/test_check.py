"""softcheck check: correct candidates pass, wrong ones fail with a useful diagnosis."""

import subprocess
import sys

import numpy as np
import pytest
from reports import load_report
from click.testing import CliRunner

import softcheck
from softcheck.cli import cli
from softcheck.tools.mutants import correct
from softcheck.testing import assert_gradient_correct

EX = "scripts/examples"


def hints(report):
    return [h for c in report.failed for h in c.diagnosis]


@pytest.mark.parametrize("opts", [
    {}, {"weight": "random"}, {"ignore_index": -100}, {"ignore_index": 3},
    {"label_smoothing": 0.1}, {"label_smoothing": 0.1, "smoothing_convention": "others"},
    {"temperature": 1.5}, {"softcap": 10.0}, {"z_loss": 1e-3}, {"reduction": "none"},
    {"reduction": "sum"}, {"targets": "probs"},
    {"weight": "random", "ignore_index": -100, "label_smoothing": 0.1, "z_loss": 1e-3,
     "softcap": 20.0, "temperature": 1.5},
])
@pytest.mark.slow  # 40 s measured (2 cores, load ~1): CI runs the rest
def test_correct_candidate_passes_under_each_option_set(opts):
    rep = softcheck.check(correct, **opts)
    assert rep.passed, [c.name for c in rep.failed]
    assert all(p.pair[0] == "candidate" for p in rep.cases[0].comparisons[:3])


@pytest.mark.slow  # 13 s measured (2 cores, load ~1): CI runs the rest
def test_torch_candidate_with_every_torch_option():
    from scripts_examples import torch_ce

    rep = softcheck.check(torch_ce.grad, weight="random", ignore_index=-100, label_smoothing=0.1,
                          reduction="none")
    assert rep.passed, [c.name for c in rep.failed]
    rep = softcheck.check(torch_ce.grad, ignore_index=2, reduction="mean")
    assert rep.passed


@pytest.mark.slow  # 13 s measured (2 cores, load ~1): CI runs the rest
def test_numpy_and_jax_examples():
    from scripts_examples import jax_ce, numpy_ce

    assert softcheck.check(numpy_ce.grad, ignore_index=-100, label_smoothing=0.1).passed
    assert softcheck.check(jax_ce.grad).passed
    wrong = softcheck.check(numpy_ce.grad_wrong, ignore_index=-100)
    assert not wrong.passed
    assert any("instead of the number" in h for h in hints(wrong))


def test_sign_flip_is_named():
    rep = softcheck.check(lambda z, y: -correct(z, y), in_process=True, dtype="float64", regime="normal")
    assert not rep.passed and any("sign flipped" in h for h in hints(rep))


def test_constant_factor_is_named():
    rep = softcheck.check(lambda z, y: correct(z, y) * len(z), in_process=True, dtype="float64", regime="normal",
                          batch=5)
    assert any("= N (batch size)" in h or "reduction 'sum'" in h for h in hints(rep))


def test_other_smoothing_convention_is_recognized():
    rep = softcheck.check(lambda z, y, label_smoothing=0.0: correct(
                              z, y, label_smoothing=label_smoothing, smoothing_convention="others"), in_process=True,
                          label_smoothing=0.1, dtype="float64")
    assert any("convention 'others'" in h for h in hints(rep))


def test_missing_max_shift_blamed_in_large_regime():
    def no_shift(z, y):
        e = np.exp(z.astype(np.float64))
        p = e / e.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        return p / len(y)

    rep = softcheck.check(no_shift, in_process=True, dtype="float64")
    failed = {c.params["regime"] for c in rep.failed}
    assert failed == {"large", "spread"}       # logits ~1e3 and rows at ±1e4 overflow exp
    assert any("max shift" in h for h in hints(rep))


def test_target_column_only_error():
    def bad(z, y):
        g = correct(z, y)
        g[np.arange(len(y)), y] *= 1.01
        return g

    rep = softcheck.check(bad, in_process=True, dtype="float64", regime="normal")
    assert any("only in the target column" in h for h in hints(rep))


def test_ignored_rows_not_zero_is_reported():
    def bad(z, y, ignore_index=-100):
        return correct(z, np.where(y == ignore_index, 0, y))

    rep = softcheck.check(bad, in_process=True, ignore_index=-100, dtype="float64", regime="normal")
    assert any("ignored rows must be exactly zero" in h for h in hints(rep))


def test_candidate_writing_into_logits_is_judged_correctly():
    def inplace(z, y):
        g = correct(z, y)
        z[...] = g          # Liger-style: the gradient overwrites the logits buffer
        return z

    rep = softcheck.check(inplace, in_process=True)
    assert rep.passed
    assert any("wrote into its logits" in n for n in rep.cases[0].notes)


def test_wrong_candidate_exit_1_with_diagnosis_in_cli_and_json():
    r = CliRunner().invoke(cli, ["check", f"{EX}/numpy_ce.py:grad_wrong", "--ignore-index", "-100",
                                 "--json", "-"])
    assert r.exit_code == 1
    d = load_report(r.stdout)
    assert not d["passed"]
    failed = [c for c in d["cases"] if not c["passed"]]
    assert failed and failed[0]["diagnosis"]
    assert failed[0]["comparisons"][0]["pair"][0] == "candidate"
    assert "row" in failed[0]["comparisons"][0]["worst"][0]


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_subprocess_check_passes_for_the_examples():
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{EX}/torch_ce.py:grad",
                        "--weight", "random", "--ignore-index", "-100", "--label-smoothing",
                        "0.1", "--reduction", "none"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_pytest_helper_message_is_the_diagnosis():
    assert_gradient_correct(correct, label_smoothing=0.1)
    with pytest.raises(AssertionError, match="sign flipped"):
        assert_gradient_correct(lambda z, y: -correct(z, y), regime="normal", in_process=True)


@pytest.mark.slow  # 24 s measured (2 cores, load ~1): CI runs the rest
def test_mutants_command_exits_0():
    r = CliRunner().invoke(cli, ["mutants"])
    assert r.exit_code == 0, r.stdout
    assert "31/31 mutants caught and named" in r.stdout   # 25 + 6 fused (issue 19)


def test_one_entry_1e9_relative_error_fails_in_float64():
    from softcheck.tools.mutants import _one_entry

    rep = softcheck.check(_one_entry, in_process=True, dtype="float64", regime="normal")
    assert not rep.passed


def _denominator_rounded(ulps):
    """Like torch's CPU bfloat16 cross_entropy: right but for the mean's denominator, off by a
    few bfloat16 ulps (2.5 · 2^-8 relative)."""
    def grad(logits, target):
        g = correct(np.asarray(logits, np.float64), target)
        return (g * (1 + ulps * 2.0**-8)).astype(logits.dtype)
    return grad


def test_intermediate_low_precision_rounding_is_named_not_called_a_factor():
    """Found with torch's CPU bfloat16 cross_entropy: a factor 1.00011 was named 'N (batch
    size)' for N = 1; a few ulps of rounding is now said to be rounding."""
    rep = softcheck.check(_denominator_rounded(2.5), in_process=True, dtype="bfloat16", regime="normal")
    assert not rep.passed
    hints = [h for c in rep.failed for h in c.diagnosis]
    assert any("ulps of the largest entry: consistent with intermediate rounding to bfloat16"
               in h for h in hints), hints
    assert not any("= N (batch size)" in h for h in hints), hints


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_as_torch_passes_bfloat16_to_a_torch_candidate():
    import ml_dtypes

    pytest.importorskip("torch")
    t = softcheck.as_torch(np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16), requires_grad=True)
    assert str(t.dtype) == "torch.bfloat16" and t.tolist() == [1.5, -2.0] and t.requires_grad
    r = CliRunner().invoke(cli, ["check", "scripts/examples/torch_ce.py:grad", "--dtype",
                                 "bfloat16", "--regime", "large,confident", "--json", "-"])
    d = load_report(r.stdout)
    assert all(c["error"] is None for c in d["cases"])        # the tensor conversion works


def test_bfloat16_numpy_conversion_error_gets_a_hint():
    def naive(logits, target):
        import torch

        return torch.from_numpy(logits)
    pytest.importorskip("torch")
    rep = softcheck.check(naive, in_process=True, dtype="bfloat16", regime="normal", batch=1)
    assert "softcheck.as_torch(logits)" in rep.cases[0].error


def test_numpy_candidate_returning_bfloat16_is_accepted():
    """Regression: a gradient returned as ml_dtypes bfloat16 (numpy dtype kind 'V') was
    rejected as 'not a numeric gradient'."""
    r = CliRunner().invoke(cli, ["check", "scripts/examples/numpy_ce.py:grad", "--dtype",
                                 "bfloat16", "--ignore-index", "-100", "--json", "-"])
    assert r.exit_code == 0, r.output
    assert all(c["passed"] for c in load_report(r.stdout)["cases"])


@pytest.mark.slow  # 15 s measured (2 cores, load ~1): CI runs the rest
def test_tolerance_native_accepts_plain_bfloat16_arithmetic_and_still_catches_bugs():
    """JAX's own bf16 log_softmax (intermediates in bf16) fails the strict standard with a hint
    pointing at --tolerance native, and passes it; real bugs still fail under native."""
    from softcheck.tools.mutants import MUTANTS

    args = ["check", "scripts/examples/jax_ce.py:grad", "--dtype", "bfloat16,float16",
            "--json", "-"]
    strict = CliRunner().invoke(cli, args)
    assert strict.exit_code == 1
    hints = [h for c in load_report(strict.stdout)["cases"] for h in c["diagnosis"]]
    assert hints and all("--tolerance native" in h for h in hints if "ulps" in h)
    native = CliRunner().invoke(cli, args + ["--tolerance", "native"])
    assert native.exit_code == 0, native.output
    d = load_report(native.stdout)
    assert all(c["params"]["tolerance"] == "native" for c in d["cases"])
    assert all("--tolerance native" in " ".join(c["notes"]) for c in d["cases"]
               if c["params"]["dtype"] in ("bfloat16", "float16"))
    by_name = {m.name: m for m in MUTANTS}
    for name in ("sign-flip", "no-label-smoothing", "wrong-axis", "ignores-grad-output",
                 "off-by-one-target", "softcap-no-chain"):
        m = by_name[name]
        opts = {k: v for k, v in m.options.items() if k != "dtype"}
        assert not softcheck.check(m.fn, dtype="bfloat16", tolerance="native", in_process=True,
                                  **opts).passed, name


def test_candidate_hvp_is_checked_with_order_2():
    base = ["check", "tests/candidates/hvp_kernels.py:grad", "--order", "2", "--classes", "7",
            "--json", "-"]
    ok = CliRunner().invoke(cli, base + ["--hvp", "tests/candidates/hvp_kernels.py:hvp"])
    assert ok.exit_code == 0, ok.output
    d = load_report(ok.stdout)
    assert all(("candidate", "analytic") in {tuple(c["pair"]) for c in case["comparisons"]}
               for case in d["cases"])
    bad = CliRunner().invoke(cli, base + ["--hvp",
                                          "tests/candidates/hvp_kernels.py:hvp_diagonal_only"])
    assert bad.exit_code == 1
    failed = [c for c in load_report(bad.stdout)["cases"] if not c["passed"]]
    assert failed and all(any(x["pair"][0] == "candidate" and not x["passed"]
                              for x in c["comparisons"]) for c in failed)


def test_module_target_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["check", "softcheck.tools.mutants:correct", "--weight", "random",
                                 "--label-smoothing", "0.1", "--ignore-index", "-100",
                                 "--reduction", "none", "--json", "-"])
    assert r.exit_code == 0, r.output
    d = load_report(r.stdout)
    assert d["target"] == "softcheck.tools.mutants:correct" and len(d["cases"]) > 10
