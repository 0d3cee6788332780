"""The finite-difference step sweep: error of each method against the closed form, per h.

The classic V: truncation error falls as h² (central), h⁴ (Richardson) until rounding, which
grows as ε·|L|/h, takes over; the complex step has no subtraction and stays flat.
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
            g = references.finite_difference(inputs, method, step=h).grad
            errs.append(float(np.max(np.abs(g - ref))) / scale)
        out.append(Sweep(method, steps, tuple(errs), float(np.median(h_rows))))
    return out


def plot(sweeps: list[Sweep], path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise SoftcheckError("--plot needs matplotlib: pip install 'softcheck[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in sweeps:
        errs = np.maximum(np.array(s.errors), 1e-19)
        (line,) = ax.loglog(s.steps, errs, marker="o", ms=3, label=s.method)
        ax.axvline(s.derived, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("step h")
    ax.set_ylabel("max |FD − analytic| / gradient scale")
    ax.set_title(title + "  (dotted: the derived h)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def step_case(**options) -> Case:
    """The one float64 case ``softcheck steps`` sweeps (options as for ``run``)."""
    from ..suite.cases import suite
    from ..suite.config import config

    return suite(config(dtype="float64", **options))[0][0]
