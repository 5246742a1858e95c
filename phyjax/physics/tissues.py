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
* 7 T: T1 of WM 1.15 s and GM 1.92 s from Marques et al. (NeuroImage 49:1271,
  2010, MP2RAGE at 7 T); CSF T1 4.4 s from Rooney et al. (Magn. Reson. Med.
  57:308, 2007, 4.43 s at 7 T); T2 of frontal GM 47 ms and WM 47 ms from Cox &
  Gowland (Magn. Reson. Med. 64:1440, 2010, gradient-echo sampling of a spin
  echo: GM and WM T2 are equal at 7 T within that study's precision, so the
  GM > WM ordering of T2 at 1.5 and 3 T does not hold here); T2* of frontal GM
  33.2 ms and WM 26.8 ms from Peters et al. (MRI 25:748, 2007, same study as the
  3 T T2* values).  CSF T2 and T2* set long as at 3 T; PD as at 1.5 T.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from phyjax.physics.tracing import concrete

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
    7.0: {
        "csf": TissueParameters(4.400, 1.000, 0.200, 1.00),
        "gm": TissueParameters(1.920, 0.047, 0.0332, 0.86),
        "wm": TissueParameters(1.150, 0.047, 0.0268, 0.77),
    },
}

FIELD_STRENGTHS = tuple(sorted(_TABLE))

#: How far a scanner's B0 may be from a tabulated one (T).  Nominal 3 T systems report 2.89 T
#: (Siemens Trio/Verio/Skyra/Prisma write 2.89362 into MagneticFieldStrength) and 1.5 T ones
#: 1.494 T; T1 changes by about 1 % over 0.15 T near 3 T (Rooney et al., MRM 57:308, 2007:
#: T1 ~ B0^0.3-0.4), well inside the tissues' own spread.  A 1.0 T or 0.55 T scan is not within
#: it of any table and is refused, not snapped to 1.5 T.
FIELD_TOLERANCE_T = 0.15


def table_field(field_strength: float) -> float:
    """The tabulated B0 (an entry of :data:`FIELD_STRENGTHS`, T) within
    :data:`FIELD_TOLERANCE_T` of ``field_strength`` (T, a concrete scalar).

    Raises:
      ValueError: when none is (or ``field_strength`` is not finite), naming the value and the
        tables there are.
    """
    b0 = float(field_strength)
    for table_b0 in FIELD_STRENGTHS:
        if abs(table_b0 - b0) <= FIELD_TOLERANCE_T:
            return table_b0
    raise ValueError(
        f"No tissue relaxation table for B0 = {field_strength} T (tables: {FIELD_STRENGTHS} T, "
        f"each used within {FIELD_TOLERANCE_T} T); relaxation times change with B0, so a scan "
        "at another field strength cannot be modelled with these tissue values.")


def tissue_parameters(field_strength: float) -> dict[str, TissueParameters]:
    """Return ``{"csf"|"gm"|"wm": TissueParameters}`` at ``field_strength`` (T).

    Raises:
      ValueError: if no table exists within :data:`FIELD_TOLERANCE_T` of ``field_strength``
        (:func:`table_field`).
    """
    return dict(_TABLE[table_field(field_strength)])


def check_field_strengths(*field_strengths) -> None:
    """:func:`table_field` on every concrete value (scalars or arrays; ValueError for one
    without a table); traced values (inside ``jit``) pass unchecked -- their callers check
    them at the boundary."""
    for b0 in field_strengths:
        value = concrete(b0)
        for v in (np.unique(value[0]) if value is not None else ()):
            table_field(float(v))


def tissue_array(field_strength: float) -> np.ndarray:
    """Table as an array of shape ``(3, 4)``: rows csf, gm, wm; columns t1, t2, t2star, pd."""
    table = tissue_parameters(field_strength)
    return np.array([table[name] for name in TISSUES], dtype=np.float64)


def nearest_table(field_strength):
    """:func:`tissue_array` of the tabulated B0 nearest ``field_strength`` (T, a scalar that may
    be traced), as a float32 JAX array ``(3, 4)`` (rows csf, gm, wm; columns t1, t2, t2star,
    pd).  Raises ValueError for a concrete B0 without a table (:func:`check_field_strengths`);
    a traced one is snapped to the nearest, so its caller checks it at the boundary."""
    import jax.numpy as jnp

    check_field_strengths(field_strength)
    fields = jnp.asarray(FIELD_STRENGTHS)
    tables = jnp.asarray(np.stack([tissue_array(b) for b in FIELD_STRENGTHS]), jnp.float32)
    return tables[jnp.argmin(jnp.abs(fields - field_strength))]


def _t1_anchor_table() -> tuple[np.ndarray, np.ndarray]:
    fields = np.array(FIELD_STRENGTHS, dtype=np.float64)
    rows = [[tissue_parameters(b)[name].t1 for name in ("wm", "gm", "csf")] for b in fields]
    return fields, np.array(rows, dtype=np.float64)


def convert_t1(t1, from_field_strength, to_field_strength):
    """Map T1 (s) measured at one B0 to another, through the tissue anchors of the table.

    T1 is converted piecewise-linearly through the (WM, GM, CSF) T1 values of
    :data:`_TABLE` at the two field strengths, with linear extrapolation beyond
    WM and CSF.  Partial-volume T1 maps that mix two adjacent tissues
    linearly (as :func:`phyjax.data.synthetic.quantitative_maps` does) are
    mapped exactly; three-tissue mixtures and subject-specific values
    approximately.  This is the field-strength dependence of T1 (T1
    dispersion; e.g. Rooney et al., MRM 57:308, 2007) reduced to the tissues
    of the table.

    Args:
      t1: T1 values in s, any shape.
      from_field_strength, to_field_strength: B0 in T, scalars (may be traced); each must be
        within :data:`FIELD_TOLERANCE_T` of a field strength of the table, whose values are
        used.  Concrete values are checked here; traced ones are snapped to the nearest
        table, so a traced caller checks its inputs first (:func:`check_field_strengths`).
    Returns: converted T1, shape of ``t1``.  Differentiable in ``t1``.
    Raises:
      ValueError: for a concrete field strength without a table.
    """
    import jax.numpy as jnp

    check_field_strengths(from_field_strength, to_field_strength)
    fields, table = _t1_anchor_table()
    src = jnp.asarray(table)[jnp.argmin(jnp.abs(fields - from_field_strength))]
    dst = jnp.asarray(table)[jnp.argmin(jnp.abs(fields - to_field_strength))]
    seg = jnp.clip(jnp.searchsorted(src, t1) - 1, 0, 1)  # 0: WM-GM segment, 1: GM-CSF
    x0, x1 = src[seg], src[seg + 1]
    y0, y1 = dst[seg], dst[seg + 1]
    return y0 + (t1 - x0) * (y1 - y0) / (x1 - x0)
