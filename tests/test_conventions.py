"""Kernels checked as written: --convention loss / inplace / split, autograd.Function via
.apply, the loss value judged, every upstream gradient; TARGET validated at load."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from reports import load_report

import softcheck

torch = pytest.importorskip("torch")
from candidates import conventions_kernels as K  # noqa: E402

EX = "scripts/examples"
SMALL = dict(batch=6, regime=("normal", "confident", "large"))


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "softcheck", "check", *args],
                          capture_output=True, text=True, env=env, cwd=cwd)


def failing_pairs(rep):
    return {"/".join(c.pair) for case in rep.failed for c in case.comparisons if not c.passed}


# --------------------------------------------------------------------------- loss convention

@pytest.mark.slow  # 5 s measured (2 cores, load ~1): CI runs the rest
def test_torch_cross_entropy_loss_convention_passes_with_loss_pair_in_json():
    r = cli("torch.nn.functional:cross_entropy", "--convention", "loss", "--dtype",
            "float64,float32", "--weight", "random", "--ignore-index", "-100",
            "--label-smoothing", "0.1", "--reduction", "none", "--batch", "6", "--json", "-")
    assert r.returncode == 0, r.stderr[-2000:]
    d = load_report(r.stdout)
    pairs = {tuple(c["pair"]) for case in d["cases"] for c in case["comparisons"]}
    assert ("candidate_loss", "reference_loss") in pairs
    assert {("candidate@g=1", "analytic"), ("candidate@g=scalar", "analytic")} <= pairs


TORCH_GRID = list(itertools.product([None, "random"], [None, -100, 2], [0.0, 0.15],
                                    ["mean", "sum", "none"]))


def _torch_grid_case(weight, ii, eps, red, dtype, **extra):
    rep = softcheck.check(torch.nn.functional.cross_entropy, convention="loss", weight=weight,
                          ignore_index=ii, label_smoothing=eps, reduction=red, dtype=dtype,
                          **extra)
    assert rep.passed, [(c.name, c.error, failing_pairs(rep)) for c in rep.failed]
    assert any(c.pair[0] == "candidate_loss" for c in rep.cases[0].comparisons)


@pytest.mark.slow  # 42 s measured (2 cores, load ~1): CI runs the rest
@pytest.mark.parametrize("weight,ii,eps,red", TORCH_GRID[::5])
def test_torch_cross_entropy_every_option_float64_float32(weight, ii, eps, red):
    _torch_grid_case(weight, ii, eps, red, ("float64", "float32"), **SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("weight,ii,eps,red", TORCH_GRID)
def test_torch_cross_entropy_full_grid_every_regime(weight, ii, eps, red):
    _torch_grid_case(weight, ii, eps, red, ("float64", "float32"))


@pytest.mark.slow  # 10 s measured (2 cores, load ~1): CI runs the rest
def test_forward_only_bug_is_caught_by_the_loss_pair_alone():
    rep = softcheck.check(K.torch_forward_bug, convention="loss", **SMALL)
    assert not rep.passed
    assert failing_pairs(rep) == {"candidate_loss/reference_loss"}
    r = cli("tests/candidates/conventions_kernels.py:torch_forward_bug", "--convention",
            "loss", "--batch", "6", "--regime", "normal", "--junit", "/dev/stdout")
    assert r.returncode == 1 and "candidate_loss vs reference_loss" in r.stdout


@pytest.mark.slow  # 5 s measured (2 cores, load ~1): CI runs the rest
def test_returned_z_loss_is_judged():
    ok = softcheck.check(K.torch_tuple, convention="loss", z_loss=1e-3, returns="loss,z_loss",
                         **SMALL)
    assert ok.passed, failing_pairs(ok)
    assert any(c.pair[0] == "candidate_z_loss" for c in ok.cases[0].comparisons)
    # a z-loss value reported twice too large (the loss itself right) is caught on its pair
    def doubled(logits, target, z_loss=0.0, reduction="mean"):
        loss, zl = K.torch_tuple(logits, target, z_loss=z_loss, reduction=reduction)
        return loss, 2 * zl

    bad = softcheck.check(doubled, in_process=True, convention="loss", z_loss=1e-3, returns="loss,z_loss",
                          **SMALL)
    assert failing_pairs(bad) == {"candidate_z_loss/reference_z_loss"}


@pytest.mark.slow  # 10 s measured (2 cores, load ~1): CI runs the rest
def test_jax_custom_vjp_detected_as_loss_and_forward_bug_caught():
    from scripts_examples import jax_custom_vjp as J

    ok = softcheck.check(J.ce_loss, ignore_index=-100, **SMALL)
    assert ok.passed, failing_pairs(ok)
    bad = softcheck.check(J.ce_loss_forward_bug, ignore_index=-100, **SMALL)
    assert failing_pairs(bad) == {"candidate_loss/reference_loss"}


@pytest.mark.slow  # 5 s measured (2 cores, load ~1): CI runs the rest
def test_optax_integer_labels_reduction_none():
    pytest.importorskip("optax")
    r = cli("optax:softmax_cross_entropy_with_integer_labels", "--convention", "loss",
            "--reduction", "none", "--batch", "6", "--regime", "normal,large")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_mutating_target_fails_and_writing_logits_under_loss_is_noted():
    rep = softcheck.check(K.torch_mutates_target, convention="loss", **SMALL)
    assert all("modified its target" in c.error for c in rep.cases)


# ----------------------------------------------------------------------- inplace / Function

LIGER = dict(rename=["z_loss=lse_square_scale"], z_loss=1e-3, returns="loss,z_loss",
             weight="random", ignore_index=-100, label_smoothing=0.1, batch=6)


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_liger_style_function_passes_every_reduction():
    from scripts_examples import liger_style_inplace as L

    rep = softcheck.check(L.LigerStyleCE, reduction=("mean", "sum", "none"),
                          regime=("normal", "all-ignored"), **LIGER)
    assert rep.passed, failing_pairs(rep)
    assert rep.cases[0].params["reduction"] == "mean"


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_per_row_grad_output_ignored_is_caught_and_named():
    """Liger #678: with g = 1 (all its tests used) the bug is invisible; softcheck's own
    random per-row g catches it, and g=1 is reported passing beside it."""
    from scripts_examples import liger_style_inplace as L

    rep = softcheck.check(L.PerRowBugCE, reduction="none", regime="normal", **LIGER)
    bad = failing_pairs(rep)
    assert "candidate/analytic" in bad and "candidate@g=scalar/analytic" not in bad
    assert "candidate@g=1/analytic" not in bad
    assert any("drops or misapplies grad_output" in h for c in rep.failed for h in c.diagnosis)


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_apply_order_from_args_and_literals():
    from scripts_examples import liger_style_inplace as L

    rep = softcheck.check(L.LigerStyleCE, args="logits,target,weight,ignore_index,z_loss",
                          returns="loss,z_loss", z_loss=1e-3, ignore_index=-100, **SMALL)
    assert rep.passed, failing_pairs(rep)


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_numpy_inplace_reads_the_buffer():
    ok = softcheck.check(K.numpy_inplace, convention="inplace", framework="numpy", **SMALL)
    assert ok.passed, failing_pairs(ok)
    bad = softcheck.check(K.numpy_inplace_no_mean, convention="inplace", framework="numpy", **SMALL)
    assert "candidate/analytic" in failing_pairs(bad)
    assert "candidate_loss/reference_loss" not in failing_pairs(bad)


# ----------------------------------------------------------------------------------- split

@pytest.mark.slow  # 7 s measured (2 cores, load ~1): CI runs the rest
def test_split_forward_and_backward():
    r = cli(f"{EX}/split_kernel.py:fwd", "--convention", "split", "--backward",
            f"{EX}/split_kernel.py:bwd", "--reduction", "none", "--ignore-index", "-100",
            "--json", "-")
    assert r.returncode == 0, r.stderr[-2000:]
    d = load_report(r.stdout)
    assert any(c["pair"] == ["candidate_lse", "reference_lse"] for c in d["cases"][0]["comparisons"])
    r = cli(f"{EX}/split_kernel.py:fwd_lse_off", "--convention", "split", "--backward",
            f"{EX}/split_kernel.py:bwd", "--reduction", "none", "--regime", "normal")
    assert r.returncode == 1 and "candidate_lse vs reference_lse" in r.stdout + r.stderr


# ------------------------------------------------------------------------ load validation

@pytest.mark.parametrize("args,needle", [
    (["tests/candidates/misbehaving.py:correct", "--convention", "split"], "needs --backward"),
    (["scripts/examples/numpy_ce.py:grad", "--convention", "loss"], "torch or JAX"),
    (["tests/candidates/conventions_kernels.py:NeedsExtra"], "--args"),
    (["tests/candidates/conventions_kernels.py:torch_loss", "--rename", "zz=q"], "--rename"),
    (["tests/candidates/conventions_kernels.py:torch_loss", "--convention", "loss",
      "--returns", "z_loss,loss"], "--returns"),
])
@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_target_that_cannot_be_called_so_is_one_line_exit_2(args, needle):
    r = cli(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert r.stderr.startswith("softcheck: error:") and "Traceback" not in r.stderr


def test_function_with_one_argument_is_refused_at_load(tmp_path):
    (tmp_path / "one.py").write_text("def one(logits):\n    return logits\n")
    r = cli(f"{tmp_path}/one.py:one")
    assert r.returncode == 2 and "cannot be called as (logits, target" in r.stderr


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_package_module_target_resolves_from_the_current_directory(tmp_path):
    pkg = tmp_path / "mykernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ce.py").write_text("import torch.nn.functional as F\n"
                               "def loss(logits, target):\n"
                               "    return F.cross_entropy(logits, target)\n")
    env_root = os.getcwd()
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", "mykernels.ce:loss",
                        "--convention", "loss", "--batch", "6", "--regime", "normal"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=env_root))
    assert r.returncode == 0, r.stderr[-1500:]


def test_missing_torch_is_one_line_with_the_install_hint(monkeypatch):
    from softcheck.candidate import frameworks

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(softcheck.SoftcheckError, match=r"pip install 'softcheck\[torch\]'"):
        frameworks.require("torch")


def test_bfloat16_reaches_torch_as_bfloat16():
    from softcheck.candidate.frameworks import to_framework

    import ml_dtypes

    t = to_framework(np.array([1.5, -2.0], ml_dtypes.bfloat16), "torch")
    assert t.dtype == torch.bfloat16 and t.tolist() == [1.5, -2.0]


def test_cuda_device(request):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: --device cuda is checked where a GPU is present")
    rep = softcheck.check(torch.nn.functional.cross_entropy, convention="loss", device="cuda",
                          **SMALL)
    assert rep.passed, failing_pairs(rep)


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_batch_group_takes_the_call_keys(tmp_path):
    f = tmp_path / "b.toml"
    root = os.getcwd()
    f.write_text(f'''
[[case]]
name = "liger"
target = "{root}/scripts/examples/liger_style_inplace.py:LigerStyleCE"
rename = ["z_loss=lse_square_scale"]
returns = "loss,z_loss"
z_loss = 1e-3
reduction = "none"
regime = "normal"
batch = 6

[[case]]
name = "split"
target = "{root}/scripts/examples/split_kernel.py:fwd_lse_off"
convention = "split"
backward = "{root}/scripts/examples/split_kernel.py:bwd"
reduction = "none"
regime = "normal"
batch = 6
''')
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([sys.executable, "-m", "softcheck", "batch", str(f), "--json", "-"],
                       capture_output=True, text=True, env=env)
    d = load_report(r.stdout)
    verdict = {c["group"]: c["passed"] for c in d["cases"]}
    assert r.returncode == 1 and verdict == {"liger": True, "split": False}
    f.write_text('[[case]]\nconvention = "loss"\n')
    r = subprocess.run([sys.executable, "-m", "softcheck", "batch", str(f)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "has none" in r.stderr
