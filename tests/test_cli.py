"""The CLI through click's CliRunner and through a real subprocess."""

import json
import pytest
import os
import subprocess
import sys

from reports import load_report
from click.testing import CliRunner

from softcheck.cli import cli

ONE_CASE = ["--classes", "7", "--batch", "3", "--dtype", "float64", "--targets", "index",
            "--reduction", "mean", "--regime", "normal"]


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env or {})


def test_one_case_when_every_axis_is_pinned():
    r = invoke("run", *ONE_CASE, "--json", "-")
    assert r.exit_code == 0, r.stderr
    d = load_report(r.stdout)
    assert d["summary"] == {"total": 1, "passed": 1, "failed": 0}
    assert [c["pair"] for c in d["cases"][0]["comparisons"]] == [
        ["analytic", "autodiff"], ["analytic", "finite_difference"], ["autodiff", "finite_difference"]]


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_default_suite_covers_the_axes_and_passes(tmp_path):
    out = tmp_path / "r.json"
    r = invoke("run", "--classes", "10", "--json", str(out))
    assert r.exit_code == 0
    d = load_report(out.read_text())
    cases = d["cases"]
    assert len(cases) >= 12
    for axis, values in {"dtype": {"float64", "float32", "bfloat16", "float16"},
                         "targets": {"index", "onehot", "probs"},
                         "reduction": {"mean", "sum", "none"},
                         "regime": {"normal", "large", "tied", "confident", "wrong", "masked", "spread"}}.items():
        assert {c["params"][axis] for c in cases} == values
    assert {c["params"]["batch"] for c in cases} >= {1} and max(c["params"]["batch"] for c in cases) > 1
    for c in cases:
        assert len(c["comparisons"]) == 3
        assert all(isinstance(x["max_abs_error"], float) for x in c["comparisons"])
    assert "CASE" not in r.stdout and "PASS" in r.stdout


def test_json_dash_prints_only_json():
    r = invoke("run", *ONE_CASE, "--json", "-")
    load_report(r.stdout)         # nothing but JSON on stdout
    assert "PASS" in r.stderr     # the table went to stderr


def test_json_round_trips(tmp_path):
    import softcheck

    rep = softcheck.run(classes=5, batch=2, dtype="float64", targets="probs", reduction="none",
                        regime="masked")
    d = load_report(rep.to_json())
    assert json.loads(json.dumps(d)) == d
    assert d["passed"] is True and d["schema_version"] == 1
    assert d["environment"]["backend"] == "cpu"


def test_unwritable_json_path_exits_2_and_writes_nothing(tmp_path):
    # (issue 21: a missing folder is now created; a FILE where a folder should be is not)
    (tmp_path / "afile").write_text("x")
    r = invoke("run", *ONE_CASE, "--json", str(tmp_path / "afile" / "sub" / "r.json"))
    assert r.exit_code == 2 and "is not a folder" in r.stderr
    assert (tmp_path / "afile").read_text() == "x"


def test_force_color_prints_ansi():
    r = invoke("run", *ONE_CASE, env={"FORCE_COLOR": "1"})
    assert "\x1b[" in r.stdout


def test_no_color_when_not_a_tty():
    r = invoke("run", *ONE_CASE)
    assert "\x1b[" not in r.stdout


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_real_subprocess_exit_codes(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    ok = subprocess.run([sys.executable, "-m", "softcheck", "run", *ONE_CASE, "--json", "-"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and load_report(ok.stdout)["passed"] is True
    bad = subprocess.run([sys.executable, "-m", "softcheck", "run", "--classes", "0"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_help_does_not_import_jax():
    code = ("import sys; from softcheck.cli import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit: pass\n"
            "assert 'jax' not in sys.modules, 'jax imported by --help'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_internal_error_exits_3_and_says_it_is_a_bug():
    """A bug inside softcheck (here: the engine raising) is exit 3, one line, not exit 2."""
    code = ("import sys\nimport softcheck.engine.suites as s\n"
            "def boom(*a, **k):\n    raise RuntimeError('boom')\n"
            "s.run = boom\nfrom softcheck.cli import main\nsys.argv = ['softcheck', 'run']\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "RuntimeError: boom" in err and "softcheck bug, please report it" in err
