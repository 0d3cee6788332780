"""softcheck steps: the V-shaped sweep, its minimum near the derived step, and the plot."""

import numpy as np
from click.testing import CliRunner

from softcheck.suite.cases import Case
from softcheck.cli import cli
from softcheck.spec import LossSpec
from softcheck.tools.steps import sweep


def test_minimum_lies_near_the_derived_step():
    for s in sweep(Case(10, 6, "float64", "normal", 0, LossSpec())):
        if s.method == "complex":
            assert max(s.errors[4:]) < 1e-14          # flat once h ≤ 1e-8: no cancellation
            continue
        best = s.steps[int(np.argmin(s.errors))]
        assert abs(np.log10(best / s.derived)) <= 1.5, (s.method, best, s.derived)


def test_plot_is_written(tmp_path):
    out = tmp_path / "steps.png"
    r = CliRunner().invoke(cli, ["steps", "--classes", "10", "--plot", str(out)])
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
