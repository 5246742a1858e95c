"""The local SSIM map (Wang et al. 2004), pure JAX: shared by the SSIM loss and the SSIM metric.

It sits below :mod:`phyjax.losses` and :mod:`phyjax.evaluate` so that neither imports the other.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax


def _box_filter(x, size):
    """Mean over a ``size``^ndim window with symmetric ('reflect' in scipy) edges.

    Separable windowed sums (``lax.reduce_window``): each output adds ``size`` values per
    axis, so float32 error does not grow with the image's extent as a running sum's does."""
    r = (size - 1) // 2
    for axis in range(x.ndim):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        window = [1] * x.ndim
        window[axis] = size
        x = lax.reduce_window(jnp.pad(x, pad, mode="symmetric"), np.zeros((), x.dtype),
                              lax.add, tuple(window), (1,) * x.ndim, "VALID") / size
    return x


def ssim_map(x, y, data_range, win_size: int = 7, k1: float = 0.01, k2: float = 0.03):
    """Local SSIM map (Wang et al., IEEE TIP 13:600, 2004, Eq. 13).

    Uniform ``win_size`` window with sample covariance and reflected edges:
    the defaults of ``skimage.metrics.structural_similarity`` (full=True).
    Shapes: ``x``, ``y`` any N-d shape; returns the same shape.

    The local (co)variances are computed on both images shifted by the mean of ``y`` (they do
    not change; the means are shifted back for the luminance term), so that in float32 an
    intensity offset (raw scanner units, an image far from zero) does not cancel them away.
    """
    x = jnp.asarray(x)
    if x.dtype != jnp.float64:
        x = x.astype(jnp.float32)
    y = jnp.asarray(y, x.dtype)
    shift = lax.stop_gradient(jnp.mean(y))    # SSIM is exactly invariant to it
    x, y = x - shift, y - shift
    n_pixels = win_size ** x.ndim
    cov_norm = n_pixels / (n_pixels - 1.0)
    ux, uy = _box_filter(x, win_size), _box_filter(y, win_size)
    uxx, uyy, uxy = (_box_filter(x * x, win_size), _box_filter(y * y, win_size),
                     _box_filter(x * y, win_size))
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    ux, uy = ux + shift, uy + shift
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
