"""Issue 27: kernels called as they ship, with no glue file: required keyword parameters,
--kwarg / --off-value constants, nn.Module losses, fused autograd.Functions called
positionally, dtypes that fit the kernel, (B, T, V) causal losses."""

import os
import subprocess
import sys

import pytest
from reports import load_report

torch = pytest.importorskip("torch")

K = "tests/candidates/real_kernels.py"
FAST = ("--batch", "6", "--regime", "normal,confident")


def cli(*args, env=None):
    e = dict(os.environ, PYTHONPATH=os.getcwd(), **(env or {}))
    return subprocess.run([sys.executable, "-m", "softcheck", "check", *args],
                          capture_output=True, text=True, env=e)


def one_line_exit_2(r, needle):
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


# ------------------------------------------------------ P1: required keyword parameters

def test_required_weight_parameter_is_passed_not_refused():
    ok = cli(f"{K}:grad_weight_required", "--weight", "random", *FAST)
    assert ok.returncode == 0, ok.stdout[-1500:] + ok.stderr[-1500:]
    bad = cli(f"{K}:grad_weight_required_wrong", "--weight", "random", *FAST)
    assert bad.returncode == 1, bad.stdout[-1500:] + bad.stderr[-1500:]


def test_required_grad_output_parameter_is_passed_not_refused():
    ok = cli(f"{K}:grad_output_required", "--reduction", "none", *FAST)
    assert ok.returncode == 0, ok.stdout[-1500:] + ok.stderr[-1500:]
    bad = cli(f"{K}:grad_output_required_wrong", "--reduction", "none", *FAST)
    assert bad.returncode == 1, bad.stdout[-1500:] + bad.stderr[-1500:]


def test_required_parameter_softcheck_cannot_supply_is_refused_by_name():
    one_line_exit_2(cli(f"{K}:grad_mystery_required"), "passes no 'mystery'")


def test_signature_check_is_plain_data():
    """The judge can validate a signature sent back by the worker: describe() is picklable
    data, check_params needs no function."""
    import pickle

    from softcheck.candidate.signatures import check_params, describe
    from softcheck.spec import SoftcheckError

    from candidates import real_kernels as R

    params = pickle.loads(pickle.dumps(describe(R.grad_weight_required)))
    check_params(params, 2, {"weight"}, label="g", conv="grad")
    with pytest.raises(SoftcheckError, match="passes no 'weight'"):
        check_params(params, 2, {"ignore_index"}, label="g", conv="grad")
    with pytest.raises(SoftcheckError, match="cannot be called as"):
        check_params(params[:1], 2, set(), label="g", conv="grad")


# ------------------------------------------------------------- P2: --kwarg, --off-value

def test_kwarg_constant_reaches_the_kernel():
    ok = cli(f"{K}:torch_impl_required", "--convention", "loss", "--kwarg", "impl=torch_compile",
             *FAST)
    assert ok.returncode == 0, ok.stdout[-1500:] + ok.stderr[-1500:]
    wrong = cli(f"{K}:torch_impl_required", "--convention", "loss", "--kwarg", "impl=cce",
                *FAST)
    assert wrong.returncode == 1 and "unknown impl" in wrong.stdout + wrong.stderr
    one_line_exit_2(cli(f"{K}:torch_impl_required", "--convention", "loss"), "passes no 'impl'")
    one_line_exit_2(cli(f"{K}:torch_impl_required", "--convention", "loss", "--kwarg",
                        "impl=x", "--kwarg", "nope=1"), "takes no keyword 'nope'")
    one_line_exit_2(cli(f"{K}:torch_impl_required", "--convention", "loss", "--kwarg",
                        "reduction=sum"), "softcheck passes that option itself")


def test_kwarg_values_are_literals_else_strings():
    from softcheck.candidate.signatures import pairs

    assert pairs(["filter_eps=None", "impl=torch_compile", "k=2", "s='x'"], "--kwarg") == (
        ("filter_eps", None), ("impl", "torch_compile"), ("k", 2), ("s", "x"))
    assert pairs({"impl": "cce_exact", "filter_eps": "None"}, "--kwarg") == (
        ("impl", "cce_exact"), ("filter_eps", None))


UNSLOTH = ("--convention", "loss", "--rename", "softcap=logit_softcapping", "--rename",
           "logit_scale=logit_scaling", "--off-value", "softcap=0", "--off-value",
           "logit_scaling=0", "--ignore-index", "-100", "--dtype", "float32", *FAST)


def test_off_value_is_what_the_kernel_gets_when_an_option_is_off():
    """Unsloth: 0 means off (None crashes its kernel); on, the option's own value."""
    crash = cli(f"{K}:unsloth_style", *UNSLOTH[:6], "--ignore-index", "-100", *FAST)
    assert crash.returncode == 1                      # None for an off softcap: its TypeError
    for extra in ((), ("--softcap", "3"), ("--logit-scale", "2"),
                  ("--softcap", "3", "--logit-scale", "2")):
        ok = cli(f"{K}:unsloth_style", *UNSLOTH, *extra)
        assert ok.returncode == 0, (extra, ok.stdout[-1500:] + ok.stderr[-1500:])
    bad = cli(f"{K}:unsloth_style_wrong_order", *UNSLOTH, "--softcap", "3", "--logit-scale",
              "2")
    assert bad.returncode == 1, bad.stdout[-1500:]
    one_line_exit_2(cli(f"{K}:unsloth_style", *UNSLOTH[:6], "--off-value", "reduction=x"),
                    "--off-value reduction")


def test_kwarg_and_off_value_in_a_batch_file(tmp_path):
    root = os.getcwd()
    f = tmp_path / "b.toml"
    f.write_text(f'''
[[case]]
name = "cce"
target = "{root}/{K}:torch_impl_required"
convention = "loss"
kwarg = {{impl = "torch_compile"}}
batch = 6
regime = "normal"

[[case]]
name = "unsloth"
target = "{root}/{K}:unsloth_style"
convention = "loss"
rename = ["softcap=logit_softcapping", "logit_scale=logit_scaling"]
off_value = ["softcap=0", "logit_scale=0"]
ignore_index = -100
dtype = "float32"
batch = 6
regime = "normal"
''')
    r = subprocess.run([sys.executable, "-m", "softcheck", "batch", str(f), "--json", "-"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root))
    assert r.returncode == 0, r.stderr[-2000:]
    groups = {c["group"] for c in load_report(r.stdout)["cases"]}
    assert groups == {"cce", "unsloth"}
