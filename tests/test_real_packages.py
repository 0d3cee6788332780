"""Issue 27: shipped kernels checked as they ship, no glue file (slow; each test skips when
its package is missing).  Triton kernels run on CPU only under TRITON_INTERPRET=1, whose
16-bit arithmetic is unreliable (it computes on bit patterns): these tests use float32/64.

Liger's CE Function and Module fail by default, rightly: they write the gradient into the
logits behind autograd's back (Liger-Kernel #272, open); they pass with ``--upstream-check
off``.  Run with the ``kernels`` extra (``pip install -e '.[test,kernels]'``; pinned there): on CPU,
2026-12-07, all six passed in 98 s (triton 3.8.0, liger-kernel 0.8.5, cut-cross-entropy
25.1.1, megatron-core 0.19.2, transformers 5.25.0). Without a package its test skips."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
FAST = ("--batch", "6", "--regime", "normal,confident", "--classes", "12")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "softcheck", "check", *args],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=os.getcwd(), **(env or {})))


def passes(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


HF = "transformers.loss.loss_utils"
LOSS = ("--convention", "loss", "--ignore-index", "-100", "--reduction", "mean")


def test_hf_fixed_cross_entropy_and_its_swallowed_keywords():
    pytest.importorskip("transformers")
    passes(cli(f"{HF}:fixed_cross_entropy", *LOSS, *FAST))
    # its **kwargs swallows label_smoothing: softcheck passes it, the loss ignores it
    r = cli(f"{HF}:fixed_cross_entropy", *LOSS, *FAST, "--label-smoothing", "0.1")
    assert r.returncode == 1, r.stdout[-2000:]


def test_hf_for_causal_lm_loss_with_shape_btv_shift_and_kwarg():
    """(B, T, V) logits, labels shifted inside, vocab_size a required constant; it upcasts
    to float32, so the float64 probe drops the float64 cases (noted)."""
    pytest.importorskip("transformers")
    r = cli(f"{HF}:ForCausalLMLoss", *LOSS, *FAST, "--shape", "btv", "--shift", "1",
            "--kwarg", "vocab_size=12")
    passes(r)
    assert "computes in float32" in r.stdout + r.stderr


INTERPRET = {"TRITON_INTERPRET": "1"}


def test_liger_cross_entropy_function_and_module_default_dtypes():
    """Its Function stores the gradient into the logits with tl.store (the version counter
    does not move): the upstream check fails it by default, naming Liger-Kernel #272 (open
    upstream, PR #1251); with --upstream-check off every other case passes."""
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel")
    fn = "liger_kernel.ops.cross_entropy:LigerCrossEntropyFunction"
    args = (fn, "--rename", "z_loss=lse_square_scale", *FAST, "--ignore-index", "-100")
    r = cli(*args, env=INTERPRET)
    assert r.returncode == 1 and "Liger-Kernel #272" in r.stdout, r.stdout[-2000:]
    passes(cli(*args, "--upstream-check", "off", env=INTERPRET))
    mod = "liger_kernel.transformers.cross_entropy:LigerCrossEntropyLoss"
    args = (mod, "--rename", "z_loss=lse_square_scale", *FAST, "--dtype", "float32")
    r = cli(*args, env=INTERPRET)
    assert r.returncode == 1 and "Liger-Kernel #272" in r.stdout, r.stdout[-2000:]
    passes(cli(*args, "--upstream-check", "off", env=INTERPRET))


def test_liger_fused_linear_function_positional():
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel")
    fn = "liger_kernel.ops.fused_linear_cross_entropy:LigerFusedLinearCrossEntropyFunction"
    passes(cli(fn, "--hidden", "16", "--rename", "z_loss=lse_square_scale", "--dtype",
               "float32", *FAST, env=INTERPRET))


def test_apple_cce_torch_compile_by_kwarg():
    pytest.importorskip("triton")
    pytest.importorskip("cut_cross_entropy")
    passes(cli("cut_cross_entropy:linear_cross_entropy", "--hidden", "16", "--convention",
               "loss", "--kwarg", "impl=torch_compile",
               "--dtype", "float32", *FAST))


def test_megatron_core_with_rank_setup_on_two_gloo_ranks():
    pytest.importorskip("megatron.core")
    fn = "megatron.core.tensor_parallel.cross_entropy:vocab_parallel_cross_entropy"
    passes(cli(fn, "--convention", "loss", "--tensor-parallel", "2", "--rank-setup",
               "megatron", "--reduction", "none", "--dtype", "float32", "--repeat", "1",
               *FAST))


UNSLOTH = ("--convention", "loss", "--shape", "btv", "--rename", "softcap=logit_softcapping",
           "--rename", "logit_scale=logit_scaling", "--off-value", "softcap=0",
           "--off-value", "logit_scale=0", "--ignore-index", "-100", "--reduction", "mean")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="Unsloth's Triton kernel needs a GPU: on CPU "
                    "unsloth 2026.10.9 imports (its CPU fallback) but its kernel fails under "
                    "TRITON_INTERPRET=1 outside softcheck too (InterpreterError: 'Did you "
                    "forget to add @triton.jit?', triton 3.8.0), and without the interpreter "
                    "Triton has no CPU driver")
def test_unsloth_fast_cross_entropy_loss_with_off_value():
    """(B, T, V) logits, 0 for an option that is off (None crashes it), on the GPU."""
    pytest.importorskip("unsloth")
    fn = "unsloth.kernels.cross_entropy_loss:fast_cross_entropy_loss"
    passes(cli(fn, *UNSLOTH, "--device", "cuda", "--batch", "8", "--classes", "1000"))
    passes(cli(fn, *UNSLOTH, "--device", "cuda", "--batch", "8", "--classes", "1000",
               "--softcap", "30", "--dtype", "float32"))
