"""Loss functions for PhyCHarm (pure; arrays ``(B, H, W, 1)``, masks likewise)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phyjax.ssim import ssim_map


def masked_l1(x, y, mask):
    """Mean ``|x - y|`` over the mask (scalar)."""
    return jnp.sum(jnp.abs(x - y) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def r1_m0_map_loss(t1, m0, t1_true, m0_true, mask):
    """Map loss: L1 on R1 = 1/T1 (1/s) plus L1 on M0, in the mask.

    R1 rather than T1 because T1-weighted contrast is close to linear in R1 and
    CSF's long, poorly determined T1 would otherwise dominate.
    """
    safe_true = jnp.where(mask > 0, t1_true, 1.0)
    return masked_l1(1.0 / t1, 1.0 / safe_true, mask) + masked_l1(m0, m0_true, mask)


def physics_consistency(source, resynth_source, mask):
    """Self-supervised physics loss: the source must be re-synthesized from the maps.

    The unknown receive gain (and normalization) is removed per slice by the
    least-squares scale ``g = <s, r> / <r, r>`` over the mask; the loss is
    ``sum |s - g r| / sum |s|`` over the mask, averaged over the batch.
    """
    axes = tuple(range(1, source.ndim))
    g = jnp.sum(source * resynth_source * mask, axes, keepdims=True) / jnp.maximum(
        jnp.sum(resynth_source ** 2 * mask, axes, keepdims=True), 1e-8)
    err = jnp.sum(jnp.abs(source - g * resynth_source) * mask, axes)
    return jnp.mean(err / jnp.maximum(jnp.sum(jnp.abs(source) * mask, axes), 1e-8))


def ssim_loss(x, y, mask, data_range=1.0):
    """``1 - mean SSIM`` over the mask for a batch of 2-D slices ``(B, H, W, 1)``."""
    maps = jax.vmap(lambda a, b: ssim_map(a[..., 0], b[..., 0], data_range))(x, y)
    m = mask[..., 0]
    return 1.0 - jnp.sum(maps * m) / jnp.maximum(jnp.sum(m), 1.0)
