"""Grey-level discretisation, hard (PyRadiomics-exact) and soft (differentiable).

PyRadiomics (``radiomics.imageoperations.getBinEdges`` / ``binImage``, v3.1.0) bins the ROI values
``X`` with ``numpy.digitize(X, edges)``, i.e. grey level ``g(x) = #{k : e_k <= x}`` (1-based, bins
half-open ``[e_{k-1}, e_k)``), with the edges

* fixed bin width ``w`` ("binWidth", default 25): edges start from 0 in steps of ``w``,
  ``low = min X - (min X mod w)`` (floor-modulo, so ``low = w floor(min X / w)``) and
  ``e_k = low + k delta`` with ``delta = (low + w) - low`` (what ``numpy.arange`` fills in);
* fixed bin count ``n`` ("binCount"): ``numpy.histogram(X, n)`` edges
  ``e_k = min X + k (max X - min X) / n`` for ``k < n`` and ``e_n = max X + 1`` ("the last edge
  includes the maximum"); a flat ROI (``min X == max X``) uses ``min X -/+ 0.5`` as outer edges.

Only voxels inside the mask define the edges; grey levels outside the mask are 0.

Soft mode (``temperature = tau > 0``, in units of one bin width ``h``): the membership of ``x`` in
bin ``k`` is the probability that ``x`` plus logistic noise of scale ``tau h`` falls in that bin,

    c_k(x) = sigmoid((x - e_k) / (tau h) + s(tau)),   k = 1 .. N-1,   c_0 = 1, c_N = 0,
    w_k(x) = c_{k-1}(x) - c_k(x)     (k = 1 .. N;  w_k >= 0,  sum_k w_k = 1),

with the half-open tie-break ``s(tau) = max(0, -ln tau)``: a value exactly on an edge belongs to
the upper bin with weight ``1/(1 + tau)`` (PyRadiomics puts it there with weight 1). The shift
``tau s(tau) = tau ln(1/tau)`` (in bins) vanishes as ``tau -> 0``, so ``w_k(x) -> [g(x) = k]`` for
every ``x`` (edge values included) and every soft feature tends to its hard value. The first and
last bins extend to -inf / +inf so memberships of in-ROI values always sum to 1. Gradients flow into
``x`` (and, for the bin-count edges, into ``min X`` and ``max X``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Discretized", "bin_edges", "digitize", "discretize", "edges_from_range",
           "n_bins_for_width"]


class Discretized(NamedTuple):
    """Result of :func:`discretize` for one image.

    levels:     int32, image shape; hard grey level 1..n_bins inside the mask, 0 outside.
    membership: float, image shape + (n_bins,); soft bin memberships, zero outside the mask
                (``None`` in hard mode unless ``one_hot=True``: hard matrices are built from
                ``levels`` directly, which is the same as one-hot memberships but O(voxels)).
    n_levels:   int32 scalar; the largest hard grey level inside the ROI (PyRadiomics' ``Ng``).
    edges:      float, (n_bins + 1,) bin edges.
    """

    levels: jax.Array
    membership: jax.Array
    n_levels: jax.Array
    edges: jax.Array


def n_bins_for_width(vmin: float, vmax: float, bin_width: float) -> int:
    """Number of fixed-width bins PyRadiomics uses for ROI values in ``[vmin, vmax]`` (host side)."""
    import math

    low = vmin - (vmin % bin_width)
    return int(math.floor((vmax - low) / bin_width)) + 1


def _masked_min_max(x, mask):
    big = jnp.asarray(jnp.finfo(x.dtype).max, x.dtype)
    return jnp.min(jnp.where(mask, x, big)), jnp.max(jnp.where(mask, x, -big))


def bin_edges(x, mask, *, n_bins: int, bin_width=None, bin_count: int | None = None):
    """PyRadiomics bin edges for the ROI values ``x[mask]``.

    Args:
      x: float array, any shape. mask: bool array, same shape.
      n_bins: static number of bins N (edges has N + 1 entries). For ``bin_count`` it must equal
        ``bin_count``; for ``bin_width`` it must be at least the number of occupied bins.
      bin_width / bin_count: exactly one of them.
    Returns:
      (edges (N + 1,), h) with ``h`` the nominal bin width used to scale the soft temperature.
    """
    vmin, vmax = _masked_min_max(x, mask)
    return edges_from_range(vmin, vmax, n_bins=n_bins, bin_width=bin_width, bin_count=bin_count)


def edges_from_range(vmin, vmax, *, n_bins: int, bin_width=None, bin_count: int | None = None):
    """PyRadiomics bin edges from the ROI's minimum and maximum (scalars; vmap for many ROIs).

    Same arguments and result as :func:`bin_edges`.
    """
    dt = jnp.result_type(vmin)
    k = jnp.arange(n_bins + 1, dtype=dt)
    if (bin_width is None) == (bin_count is None):
        raise ValueError("give exactly one of bin_width and bin_count")
    if bin_width is not None:
        w = jnp.asarray(bin_width, dt)
        low = vmin - jnp.mod(vmin, w)
        delta = (low + w) - low
        return low + k * delta, delta
    if n_bins != bin_count:
        raise ValueError(f"fixed bin count needs n_bins == bin_count, got {n_bins} != {bin_count}")
    flat = vmin == vmax
    first = jnp.where(flat, vmin - 0.5, vmin)
    last = jnp.where(flat, vmax + 0.5, vmax)
    step = (last - first) / bin_count
    edges = k * step + first
    edges = edges.at[-1].set(last + 1.0)
    return edges, step


def digitize(x, edges, h):
    """``numpy.digitize(x, edges)`` for (nearly) uniform edges, clipped to 1..N (O(1) per voxel)."""
    n = edges.shape[0] - 1
    idx = jnp.floor((x - edges[0]) / h).astype(jnp.int32) + 1
    idx = jnp.clip(idx, 1, n)
    # Exact correction against the actual edges (floating-point rounding of the division).
    idx = idx - (x < edges[idx - 1]).astype(jnp.int32)
    idx = jnp.clip(idx, 1, n)
    idx = idx + (x >= edges[idx]).astype(jnp.int32)
    return jnp.clip(idx, 1, n)


def soft_membership(x, edges, h, temperature):
    """Soft bin memberships ``w_k(x)`` (see module docstring); shape ``x.shape + (N,)``."""
    tau = jnp.asarray(temperature, x.dtype)
    shift = jnp.maximum(0.0, -jnp.log(tau))
    inner = edges[1:-1]
    c = jax.nn.sigmoid((x[..., None] - inner) / (tau * h) + shift)
    ones = jnp.ones(x.shape + (1,), x.dtype)
    zeros = jnp.zeros(x.shape + (1,), x.dtype)
    c = jnp.concatenate([ones, c, zeros], axis=-1)
    return c[..., :-1] - c[..., 1:]


def discretize(x, mask, *, n_bins: int, bin_width=None, bin_count: int | None = None,
               temperature=None, one_hot: bool = False) -> Discretized:
    """Discretise ``x`` inside ``mask`` like PyRadiomics; soft memberships if ``temperature``.

    Args:
      x: float array (any spatial shape). mask: bool array, same shape.
      n_bins: static number of bins (see :func:`bin_edges`).
      temperature: ``None`` for hard (one-hot) memberships, else a positive float (bin widths).
      one_hot: in hard mode, also return the one-hot memberships.
    Returns:
      :class:`Discretized`. ``levels`` and ``n_levels`` are always the hard values.
    """
    mask = mask.astype(bool)
    edges, h = bin_edges(x, mask, n_bins=n_bins, bin_width=bin_width, bin_count=bin_count)
    levels = jnp.where(mask, digitize(x, edges, h), 0)
    n_levels = jnp.max(levels)
    if temperature is None:
        memb = jax.nn.one_hot(levels - 1, n_bins, dtype=x.dtype) if one_hot else None
    else:
        memb = soft_membership(x, edges, h, temperature) * mask[..., None].astype(x.dtype)
    return Discretized(levels.astype(jnp.int32), memb, n_levels.astype(jnp.int32), edges)
