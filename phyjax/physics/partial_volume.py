"""Partial-volume re-synthesis: the signal of a voxel that holds two tissues.

A voxel of a T1w scan that holds grey matter and CSF gives the *sum* of both tissues' signals,
``f S(T1_gm) + (1 - f) S(T1_csf)``, and its quantitative T1 map (a fit, or the ground truth of a
simulation) holds one value between the two -- here the volume-fraction-weighted mean T1, as
:func:`phyjax.data.synthetic.quantitative_maps` defines it.  Because every T1w signal equation
is curved in T1, the signal of that mean T1 is not the mean signal.  Re-synthesizing the
held-out heads of the embedded benchmark from their *exact* mean-T1 and M0 maps with the
single-T1 equation over-counts CSF by 39-52 % and under-counts WM by 12-19 % under every site's
protocol (ANTs Atropos against the signal-mixed image; CSF and GM Dice 0.79-0.84); the two-tissue
model below gives CSF -2 to -22 %, GM +9 to +17 %, WM -1 to -10 % and Dice 0.86-0.98, and
halves the NRMSE (``benchmarks/partial_volume.py``, ``benchmarks/results/partial_volume.md``).
What it still misses is a subject's own relaxation times: a pure voxel whose T1 is off the
table's reads as a little of the neighbouring tissue.

:func:`two_tissue_fractions` reads a mean-T1 map as a mixture of the two adjacent tissues of
the tissue table (WM/GM below the GM value, GM/CSF above it) whose volume-weighted mean is that
T1 -- cortex and CSF, or cortex and white matter, the mixtures a brain voxel holds at 1-2 mm
(Tohka, Zijdenbos & Evans, NeuroImage 23:84, 2004: the mixed classes CSF/GM and GM/WM of a
partial-volume brain model).  :func:`mixture_signed_signal` then sums each tissue's signal,
each weighted by its fraction and its share of the voxel's M0.  A T1 beyond WM's or CSF's value
is that tissue alone, its T1 scaled (texture, a subject's own relaxation times).
"""

from __future__ import annotations

import jax.numpy as jnp

from phyjax.physics import signal
from phyjax.physics.sequences import Protocol
from phyjax.physics.tissues import TISSUES, nearest_table

assert TISSUES == ("csf", "gm", "wm")


def two_tissue_fractions(t1, field_strength):
    """Volume fractions ``(3, *t1.shape)`` (csf, gm, wm; summing to 1) of the two adjacent
    tissues whose fraction-weighted mean T1 is ``t1`` (s), from the tissue table of
    ``field_strength`` (T, scalar, may be traced), and the T1 scale ``t1 / sum_k f_k T1_k``
    (``t1.shape``; 1 inside ``[T1_wm, T1_csf]``, the ratio to the pure tissue's T1 beyond).

    Between WM's and GM's T1 the voxel is WM/GM, between GM's and CSF's GM/CSF, linearly in T1
    (the inverse of :func:`phyjax.data.synthetic.quantitative_maps`' mean for two tissues).
    Differentiable in ``t1``.  Raises ValueError for a concrete B0 without a table.
    """
    table = nearest_table(field_strength)
    t1_csf, t1_gm, t1_wm = table[0, 0], table[1, 0], table[2, 0]
    t = jnp.clip(t1, t1_wm, t1_csf)
    low = t <= t1_gm
    gm_low = (t - t1_wm) / (t1_gm - t1_wm)       # GM share of a WM/GM voxel
    csf_high = (t - t1_gm) / (t1_csf - t1_gm)    # CSF share of a GM/CSF voxel
    fractions = jnp.stack([jnp.where(low, 0.0, csf_high),
                           jnp.where(low, gm_low, 1.0 - csf_high),
                           jnp.where(low, 1.0 - gm_low, 0.0)])
    scale = t1 / jnp.tensordot(table[:, 0], fractions, axes=1)
    return fractions, scale


def mixture_signed_signal(protocol: Protocol, t1, m0, maps_field_strength, b1=1.0):
    """Signed signal of ``protocol`` from a mean-T1 map and an M0 map read as two-tissue voxels.

    ``t1`` (s) and ``m0`` (PD fraction) are maps at ``maps_field_strength`` (T) -- e.g.
    PhyCHarm's generator, predicting at the source scan's B0 -- broadcasting together.  Each
    voxel's fractions and T1 scale come from :func:`two_tissue_fractions` at that B0; tissue
    ``k`` then has T1 ``scale * T1_k`` from ``protocol``'s own B0 table (so the maps move
    between field strengths tissue by tissue, as :func:`phyjax.physics.tissues.convert_t1`
    does for a mean T1) and M0 ``m0 * PD_k / sum_j f_j PD_j`` (the voxel's M0 shared by the
    tissues' proton densities), and the signal is ``sum_k f_k S_protocol(T1_k, M0_k)``
    (:func:`phyjax.physics.signal.signed_signal`, T2/T2* folded into M0 as PhyCHarm does).
    For a voxel of one tissue it is the single-T1 signal of ``convert_t1(t1)``.  Scalars may
    be traced.  Raises ValueError for a concrete B0 without a tissue table.
    """
    fractions, scale = two_tissue_fractions(t1, maps_field_strength)
    table = nearest_table(protocol.field_strength)
    pd = table[:, 3].reshape((3,) + (1,) * jnp.ndim(fractions[0]))
    m0_k = m0 * pd / jnp.sum(fractions * pd, axis=0)          # (3, ...)
    if jnp.ndim(b1) == 0:
        return _mixture_one_evaluation(protocol, t1, fractions, scale, m0_k, maps_field_strength,
                                       table, b1)
    total = 0.0
    for k in range(3):
        total = total + fractions[k] * signal.signed_signal(
            protocol, scale * table[k, 0], jnp.inf, jnp.inf, m0_k[k], b1)
    return total


def _mixture_one_evaluation(protocol, t1, fractions, scale, m0_k, maps_field_strength, table,
                            b1):
    """:func:`mixture_signed_signal` for a scalar ``b1`` with one per-voxel evaluation of the
    signal equation instead of three (the single-T1 model's count).  Between WM's and CSF's T1
    the scale is exactly 1 -- the fractions interpolate the table linearly, so
    ``sum_k f_k T1_k`` is ``t1`` -- and each tissue's signal is that of its table T1: three
    scalars per protocol, per unit M0 (every signal equation is proportional to M0).  Beyond,
    the voxel is one tissue (WM below, CSF above) at ``scale`` times its T1: one evaluation.
    Same values and gradients (the scale is flat inside)."""
    pure = jnp.stack([signal.signed_signal(protocol, table[k, 0], jnp.inf, jnp.inf, 1.0, b1)
                      for k in range(3)])
    inside = sum(fractions[k] * m0_k[k] * pure[k] for k in range(3))
    maps_table = nearest_table(maps_field_strength)
    below = t1 < maps_table[2, 0]                     # shorter than WM's: WM alone
    above = t1 > maps_table[0, 0]                     # longer than CSF's: CSF alone
    alone_t1 = scale * jnp.where(below, table[2, 0], table[0, 0])
    alone_m0 = jnp.where(below, m0_k[2], m0_k[0])
    alone = signal.signed_signal(protocol, jnp.where(below | above, alone_t1, table[1, 0]),
                                 jnp.inf, jnp.inf, alone_m0, b1)
    return jnp.where(below | above, alone, inside)


def mixture_synthesize(protocol: Protocol, t1, m0, maps_field_strength, b1=1.0):
    """Magnitude of :func:`mixture_signed_signal` (the image a scanner reconstructs)."""
    return jnp.abs(mixture_signed_signal(protocol, t1, m0, maps_field_strength, b1))
