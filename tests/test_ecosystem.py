"""Issue 21: the pytest plugin, --inputs FILE.npz, --atol/--rtol, the GitHub Action's script."""

import importlib.metadata
import os
import pytest
import pathlib
import subprocess
import sys
import tomllib

import numpy as np
from click.testing import CliRunner
from reports import load_report

from softcheck.cli import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAD = "tests/candidates/misbehaving.py"
EXAMPLE = "scripts/examples/numpy_ce.py:grad"

PLUGIN_TESTS = '''
import numpy as np
import softcheck.testing
import misbehaving


@softcheck.testing.parametrize(classes=10, batch=6, regime=("normal", "tied"))
def test_ce(case):
    softcheck.testing.check_case(misbehaving.correct, case)


@softcheck.testing.parametrize(classes=10, batch=6, dtype="float32", regime="normal")
def test_wrong(case):
    softcheck.testing.check_case(misbehaving.wrong_denominator, case)
'''


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_pyproject_registers_the_pytest_plugin():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"softcheck": "softcheck.testing.plugin"}


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_pytest_plugin_one_id_per_case_diagnosis_and_json(tmp_path):
    (tmp_path / "test_kernel.py").write_text(PLUGIN_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests/candidates")])}
    installed = any(e.value == "softcheck.testing.plugin"
                    for e in importlib.metadata.entry_points(group="pytest11"))
    out = tmp_path / "reports" / "softcheck.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                        *([] if installed else ["-p", "softcheck.testing.plugin"]),
                        "test_kernel.py", "--softcheck-json", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    for regime in ("normal", "tied"):
        for dt in ("float64", "float32"):
            assert f"test_ce[C10-B6-{dt}-{regime}] PASSED" in r.stdout
    assert "test_wrong[C10-B6-float32-normal] FAILED" in r.stdout
    assert "candidate vs analytic" in r.stdout and "max error" in r.stdout   # the diagnosis
    d = load_report(out.read_text())
    assert d["summary"] == {"total": 5, "passed": 4, "failed": 1}


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _arrays(n=4, c=7, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c)) * 3, rng.integers(0, c, n)


def test_inputs_file_is_one_more_case_beside_the_suite(tmp_path):
    z, y = _arrays()
    f = _npz(tmp_path / "captured.npz", logits=z, target=y)
    r = invoke("check", EXAMPLE, "--classes", "5", "--batch", "2", "--dtype", "float64",
               "--regime", "normal", "--inputs", f, "--json", "-")
    assert r.exit_code == 0, r.output
    d = load_report(r.stdout)
    assert [c["name"] for c in d["cases"]] == ["C5-B2-float64-index-mean-normal",
                                                "inputs[captured.npz]"]
    user = d["cases"][1]
    assert user["params"]["classes"] == 7 and user["params"]["batch"] == 4
    assert user["params"]["inputs"] == f and user["params"]["regime"] == "inputs"
    # the user's arrays are what the candidate saw: a wrong kernel fails on them too
    bad = load_report(invoke("check", f"{BAD}:wrong_denominator", "--classes", "5", "--batch",
                             "2", "--dtype", "float64", "--regime", "normal", "--inputs", f,
                             "--json", "-").stdout)
    assert not bad["cases"][1]["passed"]


def test_inputs_with_weight_and_grad_output_in_run(tmp_path):
    z, y = _arrays(5, 6)
    f = _npz(tmp_path / "w.npz", logits=z.astype(np.float32), target=y,
             weight=np.linspace(0.5, 2, 6), grad_output=np.linspace(0.5, 1.5, 5))
    r = invoke("run", "--classes", "4", "--batch", "1", "--dtype", "float64", "--targets",
               "index", "--regime", "normal", "--reduction", "none", "--inputs", f,
               "--json", "-")
    assert r.exit_code == 0, r.output
    user = load_report(r.stdout)["cases"][-1]
    assert user["params"]["dtype"] == "float32" and user["params"]["weight"][0] == 0.5
    assert user["passed"]


def test_bad_inputs_file_is_one_line_exit_2(tmp_path):
    f = _npz(tmp_path / "no_target.npz", logits=np.zeros((2, 3)))
    r = invoke("check", EXAMPLE, "--inputs", f)
    assert r.exit_code == 2 and "missing target" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = invoke("check", EXAMPLE, "--inputs", str(tmp_path / "nope.npz"))
    assert r.exit_code == 2 and "cannot read it" in r.stderr


def test_atol_rtol_judge_the_candidate_and_are_recorded_beside_the_derived_ones():
    args = ["check", f"{BAD}:off_by_1e6", "--classes", "5", "--batch", "3", "--dtype",
            "float64", "--regime", "normal", "--json", "-"]
    strict = load_report(invoke(*args).stdout)
    assert not strict["cases"][0]["passed"]                     # 1e-6 relative: caught
    loose = invoke(*args, "--atol", "1e-5", "--rtol", "1e-5")
    assert loose.exit_code == 0, loose.output
    case = load_report(loose.stdout)["cases"][0]
    assert case["params"]["user_tolerance"] == {"atol": 1e-5, "rtol": 1e-5}
    for c in case["comparisons"]:
        if c["pair"][0] == "candidate":
            assert c["user_atol"] == 1e-5 and c["user_rtol"] == 1e-5
            assert c["atol"] < 1e-12                           # the derived one still shown
        else:
            assert "user_atol" not in c                          # references: derived
    # a user tolerance tighter than the error fails, naming it
    tight = load_report(invoke(*args, "--atol", "0", "--rtol", "1e-9").stdout)
    reasons = [c["reason"] or "" for c in tight["cases"][0]["comparisons"]]
    assert any("(--atol/--rtol)" in x for x in reasons)


def test_negative_atol_is_a_usage_error():
    r = invoke("check", EXAMPLE, "--atol", "-1")
    assert r.exit_code == 2 and "--atol must be a finite number >= 0" in r.stderr


def _run_action(tmp_path, batch_text):
    ws = tmp_path / "ws"
    (ws / "ci").mkdir(parents=True)
    (ws / "ci" / "softcheck.toml").write_text(batch_text)
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    summary.write_text("earlier step\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GITHUB_WORKSPACE": str(ws),
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output),
           "RUNNER_TEMP": str(tmp_path), "INPUT_FILE": "ci/softcheck.toml",
           "INPUT_JUNIT": "out/softcheck-junit.xml", "INPUT_JSON": "out/softcheck.json",
           "INPUT_ARGS": "--timeout 30", "SOFTCHECK_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "action.py")], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    return r, ws, summary.read_text(), dict(
        line.split("=", 1) for line in output.read_text().splitlines())


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_action_script_passing_batch_fills_summary_junit_and_outputs(tmp_path):
    import junitparser

    r, ws, summary, outputs = _run_action(tmp_path, (
        f'[[case]]\nname = "ce"\ntarget = "{ROOT / EXAMPLE}"\nclasses = 5\nbatch = 2\n'
        'dtype = "float64"\nregime = "normal"\n'))
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary.startswith("earlier step\n## ✅ softcheck batch: 1/1 cases passed")
    suite = list(junitparser.JUnitXml.fromfile(str(ws / "out" / "softcheck-junit.xml")))
    assert suite[0].name == "ce" and suite[0].tests == 1
    load_report((ws / "out" / "softcheck.json").read_text())
    assert outputs == {"passed": "true", "failed": "0"}


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_action_script_failing_batch_exits_1_with_the_failure_in_the_summary(tmp_path):
    r, ws, summary, outputs = _run_action(tmp_path, (
        f'[[case]]\nname = "bad"\ntarget = "{ROOT / BAD}:wrong_denominator"\nclasses = 5\n'
        'batch = 2\ndtype = "float64"\nregime = "normal"\n'))
    assert r.returncode == 1
    assert "## ❌ softcheck batch: 0/1 cases passed" in summary and "FAIL" in summary
    assert outputs == {"passed": "false", "failed": "1"}
    assert "::error::softcheck: 1 case(s) failed" in r.stderr


def test_action_yml_runs_the_script_with_the_inputs_it_reads():
    import re

    text = (ROOT / "action.yml").read_text()
    assert "using: composite" in text and "scripts/action.py" in text
    script = (ROOT / "scripts" / "action.py").read_text()
    for name in set(re.findall(r"INPUT_[A-Z]+", script)):
        assert f"{name}: ${{{{ inputs." in text, name
