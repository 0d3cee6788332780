"""pytest per case (``parametrize`` + ``check_case``) as a user runs it: through pytest
itself, an ``autograd.Function`` and a ``convention="loss"`` kernel, right and wrong; a
failure's message opens with the hint and shows none of softcheck's frames; the
``--softcheck-json`` report records each case's test id."""

import json
import pytest
import os
import re
import subprocess
import sys

import softcheck

TESTS = '''
import torch
import softcheck.testing
from softcheck.testing import check_case, parametrize


class _CE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target):
        z = logits.double()
        lse = torch.logsumexp(z, 1)
        p = torch.softmax(z, 1)
        p[torch.arange(len(target)), target] -= 1
        ctx.save_for_backward((p / len(target)).to(logits.dtype))
        return (lse - z.gather(1, target[:, None])[:, 0]).mean().to(logits.dtype)


class Right(_CE):
    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0] * g, None


class DropsGradOutput(_CE):
    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0], None


def loss(logits, target):
    return torch.nn.functional.cross_entropy(logits, target)


def halved_loss(logits, target):
    return torch.nn.functional.cross_entropy(logits, target) / 2


@parametrize(classes=10, batch=6, dtype="float64,float32", regime="normal")
def test_function_right(case):
    check_case(Right, case)


@parametrize(classes=10, batch=6, dtype="float64,float32", regime="normal")
def test_loss_right(case):
    check_case(loss, case, convention="loss")


@parametrize(classes=10, batch=6, dtype="float64", regime="normal")
def test_function_wrong(case):
    check_case(DropsGradOutput, case)


@parametrize(classes=10, batch=6, dtype="float64", regime="normal")
def test_loss_wrong(case):
    check_case(halved_loss, case, convention="loss")
'''


@pytest.mark.slow  # 26 s measured (2 cores, load ~1): CI runs the rest
def test_per_case_pytest_autograd_function_and_loss_convention(tmp_path):
    (tmp_path / "test_kernel.py").write_text(TESTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(softcheck.__file__)), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                          "test_kernel.py", "--softcheck-json", "report.json"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=600)
    text = out.stdout
    assert out.returncode == 1, text + out.stderr
    outcome = dict((t, o) for o, t in re.findall(r"^(PASSED|FAILED) (\S+)", text, re.M))
    assert len(outcome) == 6, text
    for test, result in outcome.items():
        assert result == ("FAILED" if "_wrong" in test else "PASSED"), (test, text)
    # the message opens with the hint; softcheck's own frames are hidden
    first = {m[0]: m[1] for m in re.findall(r"^_+ (test_\w+)\[.*?\] _+\n(?:.*\n)*?E +"
                                            r"AssertionError: (.*)$", text, re.M)}
    assert first["test_function_wrong"].startswith(
        "looks like a known bug: the upstream gradient (grad_output) is ignored"), text
    assert first["test_loss_wrong"].startswith("off by a constant factor 0.5"), text
    assert "softcheck/testing" not in text and "softcheck/engine" not in text
    report = json.loads((tmp_path / "report.json").read_text())
    ids = sorted(c["group"] for c in report["cases"])
    assert ids == sorted(outcome) and all(i.startswith("test_kernel.py::test_") for i in ids)


def test_check_case_names_a_wrong_keyword():
    import pytest

    from softcheck.testing import cases, check_case

    case = cases(classes=4, batch=2, dtype="float64", regime="normal")[0]
    with pytest.raises(softcheck.SoftcheckError, match="unknown keyword 'convetion'"):
        check_case(lambda z, y: z, case, convetion="loss")


def test_api_takes_comma_lists_and_its_errors_name_the_keyword():
    import pytest

    from softcheck.testing import cases

    found = cases(classes="10,20", batch=2, dtype="float32,bfloat16", regime="normal")
    assert sorted({(c.classes, c.dtype) for c in found}) == [
        (10, "bfloat16"), (10, "float32"), (20, "bfloat16"), (20, "float32")]
    assert [c.dtype for c in cases(classes=4, dtype=["float64"], regime="normal",
                                   batch=1)] == ["float64"]
    with pytest.raises(softcheck.SoftcheckError) as e:
        softcheck.run(dtype="float33")
    assert str(e.value).startswith("dtype must be one of") and "--" not in str(e.value)
    with pytest.raises(softcheck.SoftcheckError, match="^label_smoothing must lie"):
        softcheck.check(test_api_takes_comma_lists_and_its_errors_name_the_keyword,
                        label_smoothing=2)
    for kw in ("dtype", "label_smoothing", "convention", "ignore_index"):
        assert kw in softcheck.check.__doc__
