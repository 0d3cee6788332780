"""Fused linear cross-entropy (--hidden): blockwise references, the two conventions, the
examples (correct ones pass, seeded bugs fail with their output named), the CLI."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from reports import load_report

from softcheck.candidate import CallPolicy, load
from softcheck.candidate.conventions import settings as call_settings
from softcheck.engine.case import run_case
from softcheck.reference import analytic, fused
from softcheck.reference.loss import values
from softcheck.spec import LossSpec
from softcheck.suite.cases import Case
from softcheck.suite.fused import make_fused_inputs

EX = "scripts/examples"
INPROC = CallPolicy(isolate=False)


def _cand(fn: str, convention: str):
    return load(f"{EX}/{fn}", settings=call_settings(convention=convention, fused=True), in_process=True)


def _case(dtype="float32", regime="normal", v=507, n=16, h=32, **spec):
    bias = spec.pop("bias", True)
    extra = {k: spec.pop(k) for k in ("shape", "shift", "tolerance") if k in spec}
    return Case(v, n, dtype, regime, 0, LossSpec(**spec), hidden=h, bias=bias, **extra)


def _failing(result):
    return {c.pair[0] for c in result.comparisons if not c.passed}


# ---------------------------------------------------------------------------------- math
@settings(max_examples=12, deadline=None)
@given(red=st.sampled_from(["mean", "sum", "none"]), eps=st.sampled_from([0.0, 0.1]),
       conv=st.sampled_from(["uniform", "others"]), zl=st.sampled_from([0.0, 1e-2]),
       cap=st.sampled_from([None, 4.0]), w=st.sampled_from([None, "random"]),
       regime=st.sampled_from(["normal", "confident", "masked"]), block=st.integers(7, 600))
def test_blockwise_reference_equals_the_dense_closed_form(red, eps, conv, zl, cap, w, regime,
                                                          block):
    spec = dict(reduction=red, label_smoothing=eps, smoothing_convention=conv, z_loss=zl,
                softcap=cap, weight=w, ignore_index=-100, temperature=1.3)
    fi = make_fused_inputs(_case("float64", regime, v=97, n=10, h=8, **spec), upstream="random")
    r = fused.reference(fi, block=block)
    dense = fi.logits_inputs()
    g = analytic.gradient(dense)
    x, wt = fi.x, fi.lm_weight
    scale = max(r.scale, 1e-300)
    assert np.max(np.abs(r.grad_x - g @ wt)) <= 1e-12 * scale * np.max(np.abs(wt)) * 97
    assert np.max(np.abs(r.grad_w - g.T @ x)) <= 1e-12 * scale * np.max(np.abs(x)) * 10
    assert np.max(np.abs(r.grad_b - g.sum(0))) <= 1e-12 * scale * 10
    assert np.allclose(r.loss, values(dense).loss, rtol=1e-12, atol=1e-12)
    assert np.allclose(r.lse, values(dense).lse, rtol=1e-13, atol=1e-13)


def test_softcheck_methods_agree_without_a_candidate():
    for case in (_case("float64", "confident", softcap=10.0, z_loss=1e-3, label_smoothing=0.1),
                 _case("float64", "masked", ignore_index=-100, weight="random",
                       reduction="none")):
        r = run_case(case)
        assert r.passed, [(c.pair, c.ratio) for c in r.comparisons]
        assert {c.pair[0] for c in r.comparisons} == {"autodiff_grad_x", "autodiff_grad_W",
                                                     "autodiff_grad_b",
                                                     "reference_grad_x", "reference_grad_W",
                                                     "reference_grad_b"}


def test_the_reference_never_holds_all_logits_in_one_block():
    fi = make_fused_inputs(_case("float64", v=5000, n=1024, h=4))
    assert len(fused._blocks(1024, 5000, None)) > 1
    assert fused.reference(fi).grad_w.shape == (5000, 4)


# ------------------------------------------------------------------------------ examples
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("regime", ["normal", "confident", "masked"])
def test_correct_numpy_chunked_example_passes(dtype, regime):
    r = run_case(_case(dtype, regime, ignore_index=-100, label_smoothing=0.1 if regime !=
                       "masked" else 0.0, softcap=30.0),
                 _cand("numpy_flce.py:flce", "grad"), policy=INPROC)
    assert r.passed, (r.error, [(c.pair, c.ratio) for c in r.comparisons if not c.passed])
    assert {"candidate_loss", "candidate_grad_x", "candidate_grad_W", "candidate_grad_b"} <= {
        c.pair[0] for c in r.comparisons}


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("regime", ["confident"])
def test_correct_torch_autograd_example_passes(dtype, regime):
    r = run_case(_case(dtype, regime, ignore_index=-100, softcap=20.0),
                 _cand("torch_flce.py:flce", "loss"), policy=INPROC)
    assert r.passed, (r.error, [(c.pair, c.ratio) for c in r.comparisons if not c.passed])


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_seeded_bug_skipped_last_chunk_is_named(dtype):
    r = run_case(_case(dtype, ignore_index=-100), _cand("numpy_flce.py:flce_skips_last_chunk",
                                                        "grad"), policy=INPROC)
    assert not r.passed
    assert {"candidate_grad_W", "candidate_grad_b", "candidate_grad_x"} <= _failing(r)
    assert "candidate_loss" not in _failing(r)          # the forward is right
    assert any(d.startswith("grad_W: wrong only in vocabulary rows 384..506") for d in
               r.diagnosis), r.diagnosis


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_seeded_bug_detached_softcap_is_named(dtype):
    r = run_case(_case(dtype, "confident", ignore_index=-100, softcap=5.0),
                 _cand("torch_flce.py:flce_detached_softcap", "loss"), policy=INPROC)
    assert not r.passed and "candidate_loss" not in _failing(r)
    assert "candidate_grad_W" in _failing(r)
    assert any(d.startswith("grad_x: matches the gradient without the softcap chain factor")
               for d in r.diagnosis), r.diagnosis


def test_regression_ignored_rows_leaking_into_grad_w_are_named(tmp_path):
    src = tmp_path / "leak.py"
    src.write_text(
        "import numpy as np\n"
        "import sys\nsys.path.insert(0, %r)\n"
        "import numpy_flce\n"
        "def flce(x, weight, target, bias=None, ignore_index=-100):\n"
        "    y = np.where(target == ignore_index, 0, target)\n"
        "    n_valid = max(int(np.sum(target != ignore_index)), 1)\n"
        "    loss, gx, gw, gb = numpy_flce.flce(x, weight, target, bias, ignore_index)\n"
        "    # the bug: grad_W from every row's G (ignored rows' too), over the valid count\n"
        "    _, _, gw_all, _ = numpy_flce.flce(x, weight, y, bias, ignore_index)\n"
        "    return loss, gx, gw_all * len(y) / n_valid, gb\n" % EX)
    cand = load(f"{src}:flce", settings=call_settings(convention="grad", fused=True), in_process=True)
    r = run_case(_case("float64", "masked", ignore_index=-100), cand, policy=INPROC)
    assert not r.passed
    assert any("ignored rows leak into grad_W" in d for d in r.diagnosis), r.diagnosis


def test_scaled_grad_w_and_transposed_grad_w_are_named(tmp_path):
    src = tmp_path / "bugs.py"
    src.write_text(
        "import sys\nsys.path.insert(0, %r)\nimport numpy_flce\n"
        "def scaled(x, weight, target, bias=None):\n"
        "    l, gx, gw, gb = numpy_flce.flce(x, weight, target, bias)\n"
        "    return l, gx, gw * 2, gb\n"
        "def transposed(x, weight, target, bias=None):\n"
        "    l, gx, gw, gb = numpy_flce.flce(x, weight, target, bias)\n"
        "    return l, gx, gw.T, gb\n" % EX)
    r = run_case(_case("float64"), load(f"{src}:scaled", settings=call_settings(
        convention="grad", fused=True), in_process=True), policy=INPROC)
    assert any(d.startswith("grad_W is the reference times 2") for d in r.diagnosis)
    r = run_case(_case("float64"), load(f"{src}:transposed", settings=call_settings(
        convention="grad", fused=True), in_process=True), policy=INPROC)
    assert r.error and "grad_W" in r.error and "transposed" in r.error


def test_shape_btv_and_shift_reach_the_candidate(tmp_path):
    src = tmp_path / "btv.py"
    src.write_text(
        "import numpy as np\nimport sys\nsys.path.insert(0, %r)\nimport numpy_flce\n"
        "def flce(x, weight, target, bias=None, ignore_index=-100, shift=0):\n"
        "    assert x.ndim == 3 and target.ndim == 2\n"
        "    if shift:\n"
        "        target = np.concatenate([target[:, 1:], np.full((len(target), 1), "
        "ignore_index)], 1)\n"
        "    l, gx, gw, gb = numpy_flce.flce(x.reshape(-1, x.shape[-1]), weight, "
        "target.reshape(-1), bias, ignore_index)\n"
        "    return l, gx.reshape(x.shape), gw, gb\n" % EX)
    cand = load(f"{src}:flce", settings=call_settings(convention="grad", fused=True), in_process=True)
    ok = run_case(_case("float32", ignore_index=-100, shape="btv", shift=1), cand,
                  policy=INPROC)
    assert ok.passed, (ok.error, [(c.pair, c.ratio) for c in ok.comparisons if not c.passed])
    plain = _cand("numpy_flce.py:flce", "grad")          # ignores the shift: caught
    bad = run_case(_case("float32", ignore_index=-100, shift=1), plain, policy=INPROC)
    assert not bad.passed and "candidate_loss" in _failing(bad)


def test_tolerance_torch_adds_pytorchs_own_error():
    r = run_case(_case("bfloat16", ignore_index=-100, tolerance="torch"),
                 _cand("torch_flce.py:flce", "loss"), policy=INPROC)
    assert r.passed and any("--tolerance torch" in n for n in r.notes)


# ----------------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "softcheck", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_cli_check_isolated_json_per_output_pairs(tmp_path):
    out = tmp_path / "r.json"
    p = _cli("check", f"{EX}/numpy_flce.py:flce", "--convention", "grad", "--hidden", "16",
             "--classes", "300", "--batch", "8", "--bias", "--ignore-index", "-100",
             "--dtype", "float32", "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    d = load_report(out.read_text())
    pairs = {tuple(c["pair"]) for c in d["cases"][0]["comparisons"]}
    assert ("candidate_grad_W", "reference_grad_W") in pairs
    assert ("candidate_grad_b", "finite_difference_grad_b") in pairs
    assert d["cases"][0]["params"]["fused"] == {"hidden": 16, "bias": True, "shape": "nv",
                                                "shift": 0}


@pytest.mark.slow
def test_cli_seeded_bug_fails_isolated_with_output_named():
    p = _cli("check", f"{EX}/torch_flce.py:flce_detached_softcap", "--convention", "loss",
             "--hidden", "16", "--classes", "300", "--batch", "8", "--softcap", "5",
             "--dtype", "float32", "--regime", "confident")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "softcap chain factor" in p.stdout and "candidate_grad_W" in p.stdout


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_cli_run_hidden_and_bad_input():
    p = _cli("run", "--hidden", "8", "--classes", "50", "--batch", "4", "--dtype", "float64",
             "--bias")
    assert p.returncode == 0, p.stdout + p.stderr
    p = _cli("run", "--bias", "--classes", "5")
    assert p.returncode == 2 and p.stderr.startswith("softcheck: error: --bias")
    p = _cli("check", f"{EX}/numpy_flce.py:flce", "--hidden", "8", "--convention", "split",
             "--backward", f"{EX}/numpy_flce.py:flce")
    assert p.returncode == 2 and "--hidden" in p.stderr and "Traceback" not in p.stderr


def test_regression_softcap_factor_cancellation_is_no_false_alarm():
    """Caught by the softcap mutant's baseline: a confident row under softcap 5 has
    1 − tanh²(6) ≈ 2.5e-5, whose float64 cancellation (~2u absolute) the relative bound
    alone did not cover; autodiff and the closed form then 'disagreed'."""
    r = run_case(_case("float64", "confident", ignore_index=-100, softcap=5.0, h=16))
    assert r.passed, [(c.pair, c.ratio) for c in r.comparisons if not c.passed]


@pytest.mark.slow
def test_fused_mutants_are_caught_and_named():
    from softcheck.tools.mutants import run_mutants

    results = run_mutants(names=["flce-gradW-transposed", "flce-gradW-halved",
                                 "flce-bias-not-reduced", "flce-ignored-leak",
                                 "flce-chunk-skipped", "flce-softcap-no-chain"])
    assert len(results) == 6
    assert all(r.ok for r in results), [r.row() for r in results if not r.ok]


def test_jax_loss_convention_is_differentiated_by_vjp(tmp_path):
    src = tmp_path / "jflce.py"
    src.write_text(
        "import jax, jax.numpy as jnp\n"
        "def flce(x, weight, target, bias=None, ignore_index=-100):\n"
        "    z = x @ weight.T + (0 if bias is None else bias)\n"
        "    valid = target != ignore_index\n"
        "    y = jnp.where(valid, target, 0)\n"
        "    zy = jnp.take_along_axis(z, y[:, None], -1)[:, 0]\n"
        "    ce = jax.nn.logsumexp(z, -1) - zy\n"
        "    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1)\n"
        "def flce_no_bias_grad(x, weight, target, bias=None, ignore_index=-100):\n"
        "    return flce(x, weight, target, jax.lax.stop_gradient(bias), ignore_index)\n")
    st = call_settings(convention="loss", fused=True)
    ok = run_case(_case("float64", "masked", ignore_index=-100), load(f"{src}:flce", settings=st, in_process=True),
                  policy=INPROC)
    assert ok.passed, (ok.error, [(c.pair, c.ratio) for c in ok.comparisons if not c.passed])
    bad = run_case(_case("float64", "masked", ignore_index=-100),
                   load(f"{src}:flce_no_bias_grad", settings=st, in_process=True), policy=INPROC)
    assert _failing(bad) >= {"candidate_grad_b"} and "candidate_grad_W" not in _failing(bad)
