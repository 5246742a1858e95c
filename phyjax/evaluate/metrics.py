"""Image-similarity metrics, in JAX, with the conventions of scikit-image.

All functions take arrays of equal shape (2-D or 3-D; a leading batch axis is
handled with ``jax.vmap`` by the caller) and an optional boolean mask of the
same shape that restricts the average to the brain.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from phyjax.ssim import ssim_map


def masked_mean(values, mask=None):
    """Mean of ``values`` over ``mask`` (all elements if None)."""
    if mask is None:
        return jnp.mean(values)
    mask = jnp.asarray(mask, values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def ssim(x, reference, mask=None, data_range=None, win_size: int = 7):
    """Mean SSIM of ``x`` against ``reference`` over ``mask``.

    ``data_range`` defaults to the reference's range (in the mask).
    """
    if data_range is None:
        data_range = _range(reference, mask)
    return masked_mean(ssim_map(x, reference, data_range, win_size), mask)


def psnr(x, reference, mask=None, data_range=None):
    """Peak signal-to-noise ratio (dB): ``10 log10(range^2 / MSE)`` over ``mask``."""
    if data_range is None:
        data_range = _range(reference, mask)
    mse = masked_mean((jnp.asarray(x) - jnp.asarray(reference)) ** 2, mask)
    return 10.0 * jnp.log10(data_range ** 2 / mse)


def nrmse(x, reference, mask=None):
    """Normalized RMSE ``||x - ref|| / ||ref||`` over ``mask`` (skimage's 'euclidean')."""
    x, reference = jnp.asarray(x), jnp.asarray(reference)
    err = masked_mean((x - reference) ** 2, mask)
    ref = masked_mean(reference ** 2, mask)
    return jnp.sqrt(err / ref)


def _range(reference, mask):
    reference = jnp.asarray(reference)
    if mask is None:
        return jnp.max(reference) - jnp.min(reference)
    mask = jnp.asarray(mask, bool)
    return jnp.max(jnp.where(mask, reference, -jnp.inf)) - jnp.min(jnp.where(mask, reference, jnp.inf))


def image_metrics(x, reference, mask) -> dict[str, float]:
    """``{"ssim", "psnr", "nrmse"}`` of ``x`` vs ``reference`` in ``mask`` as Python floats.

    Both images are set to zero outside ``mask`` before SSIM is computed, so that the 7-voxel
    windows at the brain's edge compare brain with brain: harmonizers output zero outside the
    mask, and comparing that with the reference's skull and background would score an output
    that equals the reference in every brain voxel below 1.  PSNR and NRMSE use only mask voxels.

    Args:
      x, reference: images of one shape (2-D or 3-D).
      mask: boolean array of that shape.

    Raises ValueError on shape mismatch or an empty mask.
    """
    x, reference, mask = np.asarray(x), np.asarray(reference), np.asarray(mask, bool)
    if x.shape != reference.shape or mask.shape != x.shape:
        raise ValueError(f"shape mismatch: image {x.shape}, reference {reference.shape}, "
                         f"mask {mask.shape}.")
    if not mask.any():
        raise ValueError("empty mask: no voxels to evaluate.")
    x_in, ref_in = np.where(mask, x, 0), np.where(mask, reference, 0)
    return {"ssim": float(ssim(x_in, ref_in, mask)), "psnr": float(psnr(x, reference, mask)),
            "nrmse": float(nrmse(x, reference, mask))}
