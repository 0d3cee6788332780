"""What the user got wrong is one line and exit 2, never "a softcheck bug" (exit 3): an
unwritable report path, --plot without matplotlib (real subprocesses)."""

import os
import subprocess
import sys

import pytest

ONE_CASE = ["--classes", "4", "--batch", "1", "--dtype", "float64", "--targets", "index",
            "--reduction", "mean", "--regime", "normal"]


def softcheck(*args, env=None):
    return subprocess.run([sys.executable, "-m", "softcheck", *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("flag", ["--markdown", "--json", "--junit"])
def test_report_path_in_proc_is_exit_2_with_the_reason_and_no_file(flag):
    out = softcheck("run", *ONE_CASE, flag, "/proc/softcheck-report.out")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write /proc/softcheck-report.out" in lines[0], lines
    assert "softcheck bug" not in out.stderr and not os.path.exists("/proc/softcheck-report.out")


def test_steps_plot_without_matplotlib_is_exit_2_with_the_install_hint(tmp_path):
    fake = tmp_path / "matplotlib"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]))
    out = softcheck("steps", "--plot", str(tmp_path / "steps.png"), env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "softcheck: error: --plot needs matplotlib (No module named 'matplotlib'): pip install "
        "'softcheck[plot]'"]
    assert out.stdout == "" and not (tmp_path / "steps.png").exists()   # before any work
