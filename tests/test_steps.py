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


def test_plot_has_one_panel_per_method_fitted_to_where_it_is_accurate():
    """Regression (issue 21): one shared x-axis spanned 1e-315…1e13 (the complex step swept
    to 1e-300), squeezing the central/Richardson V into a sliver."""
    from softcheck.tools.steps import MAX_DECADES, figure

    sweeps = sweep(Case(10, 6, "float64", "normal", 0, LossSpec()))
    fig = figure(sweeps, "t")
    assert [ax.get_title() for ax in fig.axes] == ["central", "richardson", "complex"]
    for ax, s in zip(fig.axes, sweeps):
        x0, x1 = ax.get_xlim()
        assert np.log10(x1 / x0) <= MAX_DECADES + 8        # not 300 decades
        assert x0 <= s.derived <= x1 and x0 >= 1e-30
        best = s.steps[s.best]
        if s.method != "complex":
            assert x0 < best < x1                          # the bottom of the V is shown
            # both arms of the V: a step on each side of the best one is inside
            assert any(x0 <= h < best for h in s.steps) and any(best < h <= x1 for h in s.steps)
        y0, y1 = ax.get_ylim()
        assert y0 <= max(min(s.errors), 1e-19) and np.log10(y1 / y0) < 20
