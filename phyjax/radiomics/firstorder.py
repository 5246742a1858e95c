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

__all__ = [
    "FIRSTORDER_FEATURES", "firstorder_core", "firstorder_features", "grey_histogram",
    "sort_by_segment", "sort_values",
]

FIRSTORDER_FEATURES = (
    "10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis",
    "Maximum", "Mean", "MeanAbsoluteDeviation", "Median", "Minimum", "Range",
    "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "StandardDeviation",
    "TotalEnergy", "Uniformity", "Variance",
)

_EPS = 2.220446049250313e-16  # numpy.spacing(1)


def _percentile_sorted(xs, n, q, offset=0):
    """``numpy.percentile(values, q)`` (method 'linear') of ``xs[offset : offset + n]`` (sorted)."""
    quantile = q / 100.0
    nf = n.astype(xs.dtype)
    virtual = nf * quantile + (1.0 - quantile) - 1.0  # numpy's _compute_virtual_index(alpha=beta=1)
    lo = jnp.clip(jnp.floor(virtual), 0, nf - 1)
    frac = virtual - lo
    lo_i = lo.astype(jnp.int32)
    hi_i = jnp.minimum(lo_i + 1, n - 1)
    a, b = xs[offset + lo_i], xs[offset + hi_i]
    diff = b - a
    # numpy._lerp: a + diff * t, computed from the upper end when t >= 0.5
    return jnp.where(frac >= 0.5, b - diff * (1.0 - frac), a + diff * frac)


def _order_keys(x):
    """Signed integers of the same width whose order is the order of the floats ``x`` (no NaN)."""
    it = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(x.dtype).itemsize]
    b = jax.lax.bitcast_convert_type(x, it)
    return jnp.where(b < 0, b ^ jnp.iinfo(it).max, b)  # negative floats: reverse magnitude order


def _from_order_keys(k, dtype):
    b = jnp.where(k < 0, k ^ jnp.iinfo(k.dtype).max, k)
    return jax.lax.bitcast_convert_type(b, dtype)


def sort_values(x):
    """``jnp.sort(x, axis=-1)`` for non-NaN floats, through integer keys (not differentiable).

    XLA:CPU sorts one integer operand about 5x faster than floats (whose comparator handles
    NaN) -- the order statistics are the largest cost of the first-order features otherwise.
    """
    return _from_order_keys(jnp.sort(_order_keys(x), axis=-1), x.dtype)


def sort_by_segment(values, segment, n_segments: int):
    """``values`` sorted by (segment, value), for non-NaN floats (not differentiable).

    Two single-operand integer sorts instead of one two-operand sort (about 2x faster on
    XLA:CPU): sort the value keys, replace every value by its rank ``r`` among all values, sort
    ``segment * K + r``. Falls back to the two-operand sort when that does not fit the integer
    width (32-bit mode with ``n_segments * K >= 2^31``).
    """
    k = values.shape[0]
    keys = _order_keys(values)
    if jnp.iinfo(keys.dtype).max // max(n_segments, 1) <= k:
        return jax.lax.sort((segment, values), num_keys=2)[1]
    sorted_keys = jnp.sort(keys)
    rank = jnp.searchsorted(sorted_keys, keys).astype(keys.dtype)
    composite = jnp.sort(segment.astype(keys.dtype) * k + rank)
    return _from_order_keys(sorted_keys[composite % k], values.dtype)


def grey_histogram(n_bins, levels=None, membership=None):
    """Grey-level counts (N,): from hard ``levels`` (1..N, 0 = outside) or soft ``membership``."""
    if membership is not None:
        return jnp.sum(membership.reshape(-1, membership.shape[-1]), axis=0)
    lv = levels.reshape(-1)
    cnt = jax.ops.segment_sum((lv > 0).astype(jnp.int32), jnp.maximum(lv - 1, 0), num_segments=n_bins)
    return cnt.astype(jnp.result_type(float))


def firstorder_features(x, mask, hist, spacing, voxel_array_shift=0.0, roi_index=None,
                        differentiable=True):
    """All first-order features of one ROI.

    Args:
      x: float, spatial shape (any rank). mask: bool, same shape.
      hist: (N,) grey-level counts in the ROI (:func:`grey_histogram`; soft counts in soft mode).
      spacing: (3,) or (2,) voxel spacing (only its product is used, for TotalEnergy).
      voxel_array_shift: PyRadiomics' ``voxelArrayShift`` ``c``.
      roi_index: optional (K,) flat indices of the ROI voxels, padded with ``x.size`` (from
        ``jnp.nonzero(mask, size=K, fill_value=x.size)``); the order statistics then sort only these
        K values instead of the whole canvas (much faster on big, sparse canvases).
      differentiable: ``False`` (hard mode) sorts through integer keys (:func:`sort_values`,
        faster on CPU, no gradient); ``True`` uses ``jnp.sort`` (gradients reach the order
        statistics).
    Returns:
      dict name -> scalar (names without the ``firstorder_`` prefix).
    """
    dt = x.dtype
    m = mask.astype(bool).reshape(-1)
    xf = x.reshape(-1)
    n = jnp.sum(m.astype(jnp.int32))
    big = jnp.asarray(jnp.finfo(dt).max, dt)
    sort = jnp.sort if differentiable else sort_values
    if roi_index is not None:
        xs = sort(jnp.concatenate([jnp.where(m, xf, big), big[None]])[roi_index])
    else:
        xs = sort(jnp.where(m, xf, big))
    voxel_volume = jnp.prod(jnp.asarray(spacing, dt))
    return firstorder_core(xf, lambda f: jnp.sum(jnp.where(m, f, 0.0)), lambda s: s, n, xs, 0,
                           hist, voxel_volume, voxel_array_shift)


def firstorder_core(x, roi_sum, expand, n, xs, offset, hist, voxel_volume, voxel_array_shift=0.0):
    """First-order features from voxel values and per-ROI reductions (layout-independent).

    One formula for every data layout: a single ROI on a canvas (``roi_sum`` = masked sum,
    ``expand`` = identity) or many ROIs packed into one voxel list (``roi_sum`` = segment sum,
    ``expand`` = gather the per-ROI value back to the voxels; see :mod:`phyjax.radiomics.packed`).

    Args:
      x: float voxel values (flat). roi_sum: ``f (voxels) -> per-ROI sums`` over the ROI voxels.
      expand: per-ROI values -> per-voxel values. n: int ROI voxel counts.
      xs: the ROI values sorted, ROI ``b`` at ``xs[offset_b : offset_b + n_b]``.
      hist: grey-level counts (..., N). voxel_volume: mm^3. voxel_array_shift: ``c``.
    Returns:
      dict name -> per-ROI value (names without the ``firstorder_`` prefix).
    """
    dt = x.dtype
    nf = n.astype(dt)
    energy = roi_sum((x + voxel_array_shift) ** 2)

    vmin = xs[offset]
    vmax = xs[offset + jnp.maximum(n - 1, 0)]
    p10 = _percentile_sorted(xs, n, 10.0, offset)
    p25 = _percentile_sorted(xs, n, 25.0, offset)
    p50 = _percentile_sorted(xs, n, 50.0, offset)
    p75 = _percentile_sorted(xs, n, 75.0, offset)
    p90 = _percentile_sorted(xs, n, 90.0, offset)

    mean = roi_sum(x) / nf
    dev = x - expand(mean)
    mu2 = roi_sum(dev**2) / nf
    mu3 = roi_sum(dev**3) / nf
    mu4 = roi_sum(dev**4) / nf
    mu2_safe = jnp.where(mu2 == 0, 1.0, mu2)
    mad = roi_sum(jnp.abs(dev)) / nf

    robust = (x >= expand(p10)) & (x <= expand(p90))
    nr = roi_sum(robust.astype(dt))
    rmean = roi_sum(jnp.where(robust, x, 0.0)) / nr
    rmad = roi_sum(jnp.where(robust, jnp.abs(x - expand(rmean)), 0.0)) / nr

    p = hist.astype(dt) / nf[..., None]
    entropy = -jnp.sum(p * jnp.log2(p + _EPS), axis=-1)
    uniformity = jnp.sum(p**2, axis=-1)

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
