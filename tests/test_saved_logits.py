"""#28, Liger-Kernel #272: a kernel that stores its gradient into the logits behind autograd's
back (tl.store / .data: the version counter does not move) corrupts an op upstream that saved
them for its backward.  softcheck's fresh leaf logits never showed it; the upstream check
(engine/saved_logits.py) calls a torch autograd kernel on relu(h) too and judges h's gradient.

Real subprocesses on scripts/examples/liger_style_inplace.py."""

import os
import subprocess
import sys

import pytest
from reports import load_report

pytest.importorskip("torch")

EXAMPLE = "scripts/examples/liger_style_inplace.py"
ARGS = ("--rename", "z_loss=lse_square_scale", "--returns", "loss,z_loss", "--batch", "6",
        "--regime", "normal", "--dtype", "float32", "--json", "-")


def check(fn, *extra):
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{EXAMPLE}:{fn}", *ARGS,
                        *extra], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, load_report(r.stdout)["cases"][0]


def saved(case):
    return [i for i in case["invariants"] if i["name"] == "logits_saved_upstream"]


def test_a_store_behind_autograds_back_fails_naming_liger_272():
    """Regression: the kernel passed every check (its own gradient is right on a leaf)."""
    code, case = check("BehindAutogradCE")
    assert code == 1
    (inv,) = saved(case)
    assert not inv["passed"] and "version counter did not move" in inv["detail"]
    assert all(c["passed"] for c in case["comparisons"])           # right on a leaf
    assert case["diagnosis"] == [next(h for h in case["diagnosis"] if "#272" in h)]


@pytest.mark.slow  # 6 s measured (2 cores, load ~2): CI runs the rest
def test_a_write_autograd_sees_passes_and_the_check_can_be_turned_off():
    code, case = check("LigerStyleCE")                  # copy_: the version counter moves
    assert code == 0
    (inv,) = saved(case)
    assert inv["passed"] and "autograd refused" in inv["detail"]
    code, case = check("BehindAutogradCE", "--upstream-check", "off")
    assert code == 0 and saved(case) == []


@pytest.mark.slow  # 4 s measured (2 cores, load ~2): CI runs the rest
def test_a_loss_kernel_is_checked_upstream_too():
    r = subprocess.run([sys.executable, "-m", "softcheck", "check",
                        "torch.nn.functional:cross_entropy", "--convention", "loss", "--batch",
                        "6", "--regime", "normal", "--dtype", "float64", "--json", "-"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (inv,) = saved(load_report(r.stdout)["cases"][0])
    assert inv["passed"] and "is the kernel's own" in inv["detail"]


@pytest.mark.slow  # 5 s measured (2 cores, load ~3): CI runs the rest
def test_a_store_of_positive_values_and_a_low_precision_kernel(tmp_path):
    """Review findings: with relu(h) as the upstream op, a kernel storing softmax p (> 0)
    behind autograd's back kept relu's mask and passed; and a correct bfloat16 loss failed
    on relu's shifted logits (its own precision) with the #272 hint.  The op now reads its
    saved values, on the case's own logits, against the kernel's own gradient."""
    k = tmp_path / "k.py"
    k.write_text('''
import torch, torch.nn.functional as F

class StoreP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target):
        x = logits.detach().double()
        p = torch.softmax(x, -1)
        g = p.clone()
        g[torch.arange(len(x)), target] -= 1
        ctx.save_for_backward(g / len(x))
        ctx.dt = logits.dtype
        logits.data.copy_(p.to(logits.dtype))          # p > 0, behind autograd's back
        return F.cross_entropy(x, target).to(logits.dtype)

    @staticmethod
    def backward(ctx, go):
        (g,) = ctx.saved_tensors
        return (g * go).to(ctx.dt), None

def loss(logits, target, reduction="mean"):
    return F.cross_entropy(logits.float(), target, reduction=reduction)
''')

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "softcheck", "check", *args, "--batch", "6",
                            "--json", "-"], capture_output=True, text=True, timeout=300)
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, load_report(r.stdout)["cases"]

    code, cases = run(f"{k}:StoreP", "--regime", "normal", "--dtype", "float32")
    assert code == 1 and not saved(cases[0])[0]["passed"]
    assert "Liger-Kernel #272" in cases[0]["diagnosis"][0]
    code, cases = run(f"{k}:loss", "--convention", "loss", "--dtype", "bfloat16",
                      "--regime", "spread,normal")
    assert code == 0, [c["invariants"] for c in cases]
