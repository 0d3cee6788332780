"""The finite differences' step and error band per row (the derivation is in
finite_difference.py's module docstring, "Step and error band")."""

from __future__ import annotations


import dataclasses
import math
from dataclasses import dataclass

import numpy as np

U64 = 2.0**-53
COMPLEX_STEP = 1e-20


@dataclass(frozen=True)
class RowStats:
    """Per-row magnitudes that bound the gradient and its derivatives (module docstring)."""

    a: np.ndarray      # |α|·Σm
    b: np.ndarray      # 2|β|·COEF
    lse: np.ndarray    # |lse|
    vmax: np.ndarray   # max finite |v| per row
    temperature: float
    softcap: float | None
    classes: int
    s: np.ndarray | None = None     # Σ exp(v − top) per row (0 where the max is not finite)
    top: np.ndarray | None = None   # max v per row (NaN or ±inf where not finite)
    plain: np.ndarray | None = None  # rows whose every v is finite (their min and max are)

    def rows(self, r0: int, r1: int) -> "RowStats":
        """Rows r0..r1 (a block of a streamed case's)."""
        cut = {k: getattr(self, k)[r0:r1] for k in ("a", "b", "lse", "vmax", "s", "top", "plain")
               if getattr(self, k) is not None}
        return dataclasses.replace(self, **cut)

    @property
    def scale(self) -> float:
        """The gradient's scale: the largest magnitude any entry can have (tolerances.py)."""
        s = np.max(self.a + self.b * self.lse, initial=0.0) / self.temperature
        return float(s)


def _bounds(st: RowStats):
    s, t = st.softcap, st.temperature
    a, b, lse = st.a, st.b, st.lse
    f1 = a + b * lse
    f2 = a / 4 + b * (1 + lse / 4)
    f3 = 0.0962 * a + b * (0.445 + 0.0962 * lse)
    m3 = f3 + ((2.31 * f2 / s + 2 * f1 / s**2) if s else 0.0)
    m3 = m3 / t**3
    m5 = (0.05 * a + b * (1 + 0.05 * lse)) * ((1 + 3 / s) ** 4 if s else 1.0) / t**5
    r = a * (lse + st.vmax) + b * lse**2 / 2
    gamma = 8 + math.log2(max(st.classes, 2))
    m2 = (f2 + (0.77 * f1 / s if s else 0.0)) / t**2
    return f1, m2, m3, m5, r, gamma


#: the spacing of the subnormal doubles, 2^-1074 (the absolute floor of every rounding)
SUBNORMAL = 2.0**-1074


def fd_plan(st: RowStats, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row step h and predicted error band for ``method`` (see the module docstring)."""
    f1, m2, m3, m5, r, gamma = _bounds(st)
    floor = gamma * SUBNORMAL         # each rounding errs by u·|x| or, below 2^-1022, by this
    noise = gamma * U64 * r + floor
    cap = st.temperature * min(1.0, st.softcap or 1.0)       # keep h inside the Taylor region
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "central":
            h = np.where(m3 > 0, np.cbrt(3 * noise / m3), cap * 1e-4)
            h = np.clip(np.nan_to_num(h, nan=cap * 1e-4), 1e-12 * cap, 0.25 * cap)
            band = m3 * h**2 / 6 + noise / h
        elif method == "richardson":
            h = np.where(m5 > 0, (360 * noise / m5) ** 0.2, cap * 1e-2)
            h = np.clip(np.nan_to_num(h, nan=cap * 1e-2), 1e-8 * cap, 0.5 * cap)
            band = m5 * h**4 / 480 + 3 * noise / h
        elif method == "complex":
            h = np.full_like(r, COMPLEX_STEP * cap)
            kappa = 1 + st.lse + st.vmax
            band = (gamma * U64 * kappa * f1 / st.temperature + m3 * h**2 / 6 + m2 * h**2
                    + floor / h)
        else:
            raise ValueError(method)
    return h, band
