"""The finite-difference step sweep: error of each method against the closed form, per h.

The classic V: truncation error falls as h² (central), h⁴ (Richardson) until rounding, which
grows as ε·|L|/h, takes over; the complex step has no subtraction and stays flat.  Both sides
of each difference are evaluated here, as the derivation of the step assumes; the reference's
own sweep takes the closed difference where it can (sweep.py), whose rounding does not grow
as h shrinks, so at the derived step it errs no more than shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..reference import analytic
from ..reference import finite_difference as references
from ..spec import SoftcheckError
from ..suite.cases import Case
from ..suite.inputs import make_inputs

STEPS = tuple(10.0 ** -k for k in range(0, 13))
COMPLEX_STEPS = tuple(10.0 ** -k for k in (1, 2, 4, 6, 8, 10, 15, 20, 50, 100, 300))


@dataclass(frozen=True)
class Sweep:
    method: str
    steps: tuple[float, ...]
    errors: tuple[float, ...]      # max |FD − analytic| / scale
    derived: float                 # the step softcheck derives for this case (median over rows)

    @property
    def best(self) -> int:
        """Index of the step with the smallest error."""
        return int(np.argmin(self.errors))

    @property
    def nearest_derived(self) -> int:
        """Index of the swept step closest (in decades) to the derived one."""
        return int(np.argmin([abs(np.log10(h / self.derived)) for h in self.steps]))

    def rows(self) -> list[tuple[str, str, bool]]:
        """Table rows: the step (marked ``*`` nearest the derived h, ``(min)`` at the best),
        the error, and whether it is the best."""
        out = []
        for i, (h, e) in enumerate(zip(self.steps, self.errors)):
            mark = (" *" if i == self.nearest_derived else "") + (" (min)" if i == self.best else "")
            out.append((f"{h:.0e}{mark}", f"{e:.1e}", i == self.best))
        return out


def sweep(case: Case) -> list[Sweep]:
    inputs = make_inputs(case).float64()
    ref = analytic.gradient(inputs)
    stats = references.row_stats(inputs)
    scale = stats.scale or 1.0
    out = []
    for method, steps in (("central", STEPS), ("richardson", STEPS), ("complex", COMPLEX_STEPS)):
        h_rows, _ = references.fd_plan(stats, method)
        errs = []
        for h in steps:
            g = references.finite_difference(inputs, method, step=h, evaluated=True).grad
            errs.append(float(np.max(np.abs(g - ref))) / scale)
        out.append(Sweep(method, steps, tuple(errs), float(np.median(h_rows))))
    return out


#: a step counts as accurate when its error is within this factor of the method's best
ACCURATE = 1e6
#: a panel spans at most this many decades of accurate steps (the complex step stays
#: accurate down to 1e-300: the panel shows where it becomes so, and the derived h)
MAX_DECADES = 12
FLOOR = 1e-19               # an error of exactly 0 drawn here (log axes)


def panel_limits(s: Sweep) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (x, y) limits of a method's panel: the steps where it is accurate (within
    :data:`ACCURATE` of its best error, at most :data:`MAX_DECADES` from the largest), widened
    to the derived h, with a decade of context each side; y fits the errors shown."""
    errs = np.maximum(np.array(s.errors), FLOOR)
    steps = np.array(s.steps)
    ok = steps[errs <= ACCURATE * np.min(errs)]
    hi = float(np.max(ok))
    lo = max(float(np.min(ok)), hi * 10.0 ** -MAX_DECADES)
    hi, lo = max(hi, s.derived) * 10, min(lo, s.derived) / 10
    shown = errs[(steps >= lo) & (steps <= hi)]
    return (lo, hi), (float(np.min(shown)) / 3, float(np.max(shown)) * 3)


def pyplot():
    """matplotlib.pyplot (the Agg backend), or one line and exit 2 where it does not import
    (not installed, or broken)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SoftcheckError(f"--plot needs matplotlib ({e}): pip install "
                             "'softcheck[plot]'") from None
    return plt


def figure(sweeps: list[Sweep], title: str):
    """One panel per method family, each with its own axes (``panel_limits``)."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 4.2))
    for ax, s in zip(np.atleast_1d(axes), sweeps):
        errs = np.maximum(np.array(s.errors), FLOOR)
        ax.loglog(s.steps, errs, marker="o", ms=3)
        ax.axvline(s.derived, color="k", ls=":", lw=1, label=f"derived h = {s.derived:.1g}")
        (x0, x1), (y0, y1) = panel_limits(s)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(s.method)
        ax.set_xlabel("step h")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("max |FD − analytic| / gradient scale")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(sweeps: list[Sweep], path: str, title: str) -> None:
    plt = pyplot()
    fig = figure(sweeps, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def step_case(**options) -> Case:
    """The one float64 case ``softcheck steps`` sweeps (options as for ``run``)."""
    from ..suite.cases import suite
    from ..suite.config import config

    return suite(config(dtype="float64", **options))[0][0]
