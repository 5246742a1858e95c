"""First-order (intensity histogram and statistics) features, PyRadiomics 3.1.0 conventions.

Let ``X`` be the ``N_p`` ROI intensities, ``c`` the ``voxelArrayShift`` (default 0), ``V`` the
voxel volume (product of the spacing, mm^3), ``p(i)`` the normalised histogram of the discretised
grey levels and ``eps = 2.2e-16`` (``numpy.spacing(1)``):

    Energy = sum (X + c)^2;  TotalEnergy = V * Energy;  RootMeanSquared = sqrt(Energy / N_p)
    Entropy = -sum_i p(i) log2(p(i) + eps);  Uniformity = sum_i p(i)^2
    Minimum, Maximum, Range, Mean, Median, 10Percentile, 90Percentile, InterquartileRange
      (percentiles: ``numpy.percentile`` linear interpolation between order statistics)
    MeanAbsoluteDeviation = mean |X - mean X|
    RobustMeanAbsoluteDeviation = the same over the values with P10 <= X <= P90
    Variance = mean (X - mean X)^2 = mu_2;  StandardDeviation = sqrt(mu_2)  (deprecated in PyRadiomics)
    Skewness = mu_3 / mu_2^1.5,  Kurtosis = mu_4 / mu_2^2 (not excess; mu_2 := 1 for a flat ROI)

The histogram features use the (hard or soft) memberships, the others the raw intensities, so all
are differentiable in soft mode (order statistics through ``sort``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["FIRSTORDER_FEATURES", "firstorder_features", "grey_histogram"]

FIRSTORDER_FEATURES = (
    "10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis",
    "Maximum", "Mean", "MeanAbsoluteDeviation", "Median", "Minimum", "Range",
    "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "StandardDeviation",
    "TotalEnergy", "Uniformity", "Variance",
)

_EPS = 2.220446049250313e-16  # numpy.spacing(1)


def _percentile_sorted(xs, n, q):
    """``numpy.percentile(values, q)`` (method 'linear') of the first ``n`` entries of sorted ``xs``."""
    quantile = q / 100.0
    nf = n.astype(xs.dtype)
    virtual = nf * quantile + (1.0 - quantile) - 1.0  # numpy's _compute_virtual_index(alpha=beta=1)
    lo = jnp.clip(jnp.floor(virtual), 0, nf - 1)
    frac = virtual - lo
    lo_i = lo.astype(jnp.int32)
    hi_i = jnp.minimum(lo_i + 1, n - 1)
    a, b = xs[lo_i], xs[hi_i]
    diff = b - a
    # numpy._lerp: a + diff * t, computed from the upper end when t >= 0.5
    return jnp.where(frac >= 0.5, b - diff * (1.0 - frac), a + diff * frac)


def grey_histogram(n_bins, levels=None, membership=None):
    """Grey-level counts (N,): from hard ``levels`` (1..N, 0 = outside) or soft ``membership``."""
    if membership is not None:
        return jnp.sum(membership.reshape(-1, membership.shape[-1]), axis=0)
    lv = levels.reshape(-1)
    cnt = jax.ops.segment_sum((lv > 0).astype(jnp.int32), jnp.maximum(lv - 1, 0), num_segments=n_bins)
    return cnt.astype(jnp.result_type(float))


def firstorder_features(x, mask, hist, spacing, voxel_array_shift=0.0, roi_index=None):
    """All first-order features of one ROI.

    Args:
      x: float, spatial shape (any rank). mask: bool, same shape.
      hist: (N,) grey-level counts in the ROI (:func:`grey_histogram`; soft counts in soft mode).
      spacing: (3,) or (2,) voxel spacing (only its product is used, for TotalEnergy).
      voxel_array_shift: PyRadiomics' ``voxelArrayShift`` ``c``.
      roi_index: optional (K,) flat indices of the ROI voxels, padded with ``x.size`` (from
        ``jnp.nonzero(mask, size=K, fill_value=x.size)``); the order statistics then sort only these
        K values instead of the whole canvas (much faster on big, sparse canvases).
    Returns:
      dict name -> scalar (names without the ``firstorder_`` prefix).
    """
    dt = x.dtype
    m = mask.astype(bool).reshape(-1)
    xf = x.reshape(-1)
    n = jnp.sum(m.astype(jnp.int32))
    nf = n.astype(dt)
    xm = jnp.where(m, xf, 0.0)

    shifted = jnp.where(m, xf + voxel_array_shift, 0.0)
    energy = jnp.sum(shifted**2)
    voxel_volume = jnp.prod(jnp.asarray(spacing, dt))

    big = jnp.asarray(jnp.finfo(dt).max, dt)
    if roi_index is not None:
        xs = jnp.sort(jnp.concatenate([jnp.where(m, xf, big), big[None]])[roi_index])
    else:
        xs = jnp.sort(jnp.where(m, xf, big))
    vmin = xs[0]
    vmax = xs[jnp.maximum(n - 1, 0)]
    p10 = _percentile_sorted(xs, n, 10.0)
    p25 = _percentile_sorted(xs, n, 25.0)
    p50 = _percentile_sorted(xs, n, 50.0)
    p75 = _percentile_sorted(xs, n, 75.0)
    p90 = _percentile_sorted(xs, n, 90.0)

    mean = jnp.sum(xm) / nf
    dev = jnp.where(m, xf - mean, 0.0)
    mu2 = jnp.sum(dev**2) / nf
    mu3 = jnp.sum(dev**3) / nf
    mu4 = jnp.sum(dev**4) / nf
    mu2_safe = jnp.where(mu2 == 0, 1.0, mu2)
    mad = jnp.sum(jnp.abs(dev)) / nf

    robust = m & (xf >= p10) & (xf <= p90)
    nr = jnp.sum(robust.astype(dt))
    rmean = jnp.sum(jnp.where(robust, xf, 0.0)) / nr
    rmad = jnp.sum(jnp.where(robust, jnp.abs(xf - rmean), 0.0)) / nr

    p = hist.astype(dt) / nf
    entropy = -jnp.sum(p * jnp.log2(p + _EPS))
    uniformity = jnp.sum(p**2)

    return {
        "10Percentile": p10,
        "90Percentile": p90,
        "Energy": energy,
        "Entropy": entropy,
        "InterquartileRange": p75 - p25,
        "Kurtosis": mu4 / mu2_safe**2,
        "Maximum": vmax,
        "Mean": mean,
        "MeanAbsoluteDeviation": mad,
        "Median": p50,
        "Minimum": vmin,
        "Range": vmax - vmin,
        "RobustMeanAbsoluteDeviation": rmad,
        "RootMeanSquared": jnp.sqrt(energy / nf),
        "Skewness": mu3 / mu2_safe**1.5,
        "StandardDeviation": jnp.sqrt(mu2),
        "TotalEnergy": voxel_volume * energy,
        "Uniformity": uniformity,
        "Variance": mu2,
    }
