"""Tissue relaxation values per field strength: the one table of them in phyjax.

Values are T1, T2, T2* in seconds and PD as a fraction of the water proton
density.  Sources:

* 1.5 T: BrainWeb (Aubert-Broche et al., NeuroImage 32:138, 2006, Table 1):
  CSF 2569/329/58 ms, GM 833/83/69 ms, WM 500/70/61 ms (T1/T2/T2*),
  PD 1.0/0.86/0.77.
* 3 T: T1 of WM 0.81 s and GM 1.35 s from Marques et al. (NeuroImage 49:1271,
  2010, Table 2, MP2RAGE at 3 T); CSF T1 4.2 s (mid-range of 4.0-4.5 s reported
  at 3 T, e.g. Lu et al., JMRI 22:13, 2005); T2 of GM 110 ms and WM 80 ms from
  Wansapura et al. (JMRI 9:531, 1999); T2* of GM 66 ms and WM 53 ms from Peters
  et al. (MRI 25:748, 2007); CSF T2 and T2* are not well defined in vivo and are
  set long (1.0 s / 0.2 s), which makes them irrelevant for T1-weighted contrast.
  PD as at 1.5 T (PD does not depend on B0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

TISSUES = ("csf", "gm", "wm")


class TissueParameters(NamedTuple):
    """Relaxation values of one tissue.  Times in s, PD dimensionless."""

    t1: float
    t2: float
    t2star: float
    pd: float


_TABLE: dict[float, dict[str, TissueParameters]] = {
    1.5: {
        "csf": TissueParameters(2.569, 0.329, 0.058, 1.00),
        "gm": TissueParameters(0.833, 0.083, 0.069, 0.86),
        "wm": TissueParameters(0.500, 0.070, 0.061, 0.77),
    },
    3.0: {
        "csf": TissueParameters(4.200, 1.000, 0.200, 1.00),
        "gm": TissueParameters(1.350, 0.110, 0.066, 0.86),
        "wm": TissueParameters(0.810, 0.080, 0.053, 0.77),
    },
}

FIELD_STRENGTHS = tuple(sorted(_TABLE))


def tissue_parameters(field_strength: float) -> dict[str, TissueParameters]:
    """Return ``{"csf"|"gm"|"wm": TissueParameters}`` at ``field_strength`` (T).

    Raises:
      ValueError: if no table exists within 0.05 T of ``field_strength``.
    """
    for b0, table in _TABLE.items():
        if abs(b0 - float(field_strength)) < 0.05:
            return dict(table)
    raise ValueError(
        f"No tissue relaxation table for B0 = {field_strength} T; "
        f"available: {FIELD_STRENGTHS} T."
    )


def tissue_array(field_strength: float) -> np.ndarray:
    """Table as an array of shape ``(3, 4)``: rows csf, gm, wm; columns t1, t2, t2star, pd."""
    table = tissue_parameters(field_strength)
    return np.array([table[name] for name in TISSUES], dtype=np.float64)
