"""Losses of the radiomics-guided CycleGAN (Kim et al., IEEE Access 12:19482, 2024) and Pix2Pix
(Isola et al., CVPR 2017): pure functions of batched ``(B, H, W, C)`` arrays.

* :func:`lsgan_discriminator`, :func:`lsgan_generator` -- least-squares GAN (Mao et al., ICCV
  2017, eq. 2 with a=0, b=c=1), the objective of the public CycleGAN;
* :func:`l1` -- cycle-consistency and identity terms (Zhu et al., ICCV 2017, eqs. 2 and 6) and
  Pix2Pix's L1 term (Isola et al. eq. 3);
* :func:`soft_dice_loss` -- 1 - soft Dice (Milletari et al., 3DV 2016, eq. 1) between a frozen
  segmenter's class probabilities on a translated image and on its source;
* :func:`rf_loss` -- the radiomic-feature (RF) loss of Kim et al.: L1 between the selected
  radiomic features of harmonized images and the target site's values.  Their public notebook
  computes it with PyRadiomics on a detached NumPy copy (no gradient); here the features are the
  differentiable soft-binned features of :mod:`phyjax.radiomics` (``temperature`` in bin widths),
  so the loss passes gradients into the generator.  Each feature's error is divided by its
  target scale (``|target mean|``), so features of different units weigh alike (a relative L1;
  Kim et al. report the relative error of each feature, their Table 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from phyjax.radiomics.api import RadiomicsConfig, extract_features, feature_names

__all__ = ["l1", "lsgan_discriminator", "lsgan_generator", "radiomics_config", "relative_errors",
           "rf_loss", "soft_dice_loss", "soft_features"]


def l1(x, y, mask=None):
    """Mean ``|x - y|`` (over ``mask`` when given, broadcast to ``x``); scalar."""
    if mask is None:
        return jnp.mean(jnp.abs(x - y))
    mask = jnp.broadcast_to(mask, x.shape)
    return jnp.sum(jnp.abs(x - y) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def lsgan_discriminator(d_real, d_fake):
    """``0.5 [mean (D(real) - 1)^2 + mean D(fake)^2]`` (Mao et al. 2017); any shapes."""
    return 0.5 * (jnp.mean(jnp.square(d_real - 1.0)) + jnp.mean(jnp.square(d_fake)))


def lsgan_generator(d_fake):
    """``mean (D(G(x)) - 1)^2``: the generator's least-squares adversarial loss."""
    return jnp.mean(jnp.square(d_fake - 1.0))


def soft_dice_loss(probs, target, weight=None, eps: float = 1e-6):
    """``1 - mean_k 2 sum(p_k q_k) / (sum p_k + sum q_k)`` over the batch and pixels.

    Args:
      probs, target: ``(B, H, W, K)`` class probabilities (``target`` may be one-hot).
      weight: ``(B, H, W, 1)`` region the Dice counts (e.g. the brain mask); None = everywhere.
    Returns: scalar in [0, 1] (0 = identical segmentations).
    """
    if weight is not None:
        probs, target = probs * weight, target * weight
    inter = jnp.sum(probs * target, axis=(0, 1, 2))
    total = jnp.sum(probs, axis=(0, 1, 2)) + jnp.sum(target, axis=(0, 1, 2))
    return 1.0 - jnp.mean((2.0 * inter + eps) / (total + eps))


def radiomics_config(names: Sequence[str], bin_width: float, n_bins: int) -> RadiomicsConfig:
    """2-D (``force2d``) :class:`RadiomicsConfig` computing only the classes ``names`` need.

    Raises ValueError for a name no class provides.
    """
    classes = tuple(c for c in ("firstorder", "glcm", "glrlm")
                    if any(n.startswith(c + "_") for n in names))
    cfg = RadiomicsConfig(bin_width=bin_width, n_bins=n_bins, force2d=True,
                          classes=classes or ("firstorder",))
    unknown = sorted(set(names) - set(feature_names(cfg)))
    if unknown:
        raise ValueError(f"unknown radiomic features {unknown}.")
    return cfg


def soft_features(images, masks, names: Sequence[str], config: RadiomicsConfig,
                  temperature: float):
    """Soft radiomic features ``(B, K)`` of ``names`` of each image's ROI.

    Args:
      images: ``(B, H, W, 1)`` (or ``(B, H, W)``) float, the units of the bin width.
      masks: same shape, the ROI (0/1 or bool).
      names: feature names (:func:`phyjax.radiomics.api.feature_names`), K of them.
      config: static radiomics settings (:func:`radiomics_config`).
      temperature: soft-bin temperature (> 0, in bin widths; :mod:`phyjax.radiomics.discretize`).
    """
    if images.ndim == 4:
        images, masks = images[..., 0], masks[..., 0]

    def one(im, m):
        f = extract_features(im, m > 0.5, config, temperature=temperature)
        return jnp.stack([f[n] for n in names])

    return jax.vmap(one)(images, masks)


def relative_errors(values, target):
    """``|values - target| / |target|`` (broadcast; ``target`` nonzero)."""
    return jnp.abs(values - target) / jnp.abs(target)


def rf_loss(images, masks, names: Sequence[str], target, config: RadiomicsConfig,
            temperature: float):
    """Radiomic-feature loss (Kim et al. 2024): mean over images and selected features of
    ``|f_k(image) - target_k| / |target_k|``.

    Args:
      images: ``(B, H, W, 1)`` harmonized images; masks: their ROIs, same shape.
      names: the K selected features (:func:`phyjax.radiomics.selection.select_features`).
      target: ``(K,)`` target-site values of those features (nonzero; the selection drops
        features with a zero mean).
      config, temperature: as :func:`soft_features`.
    Returns: ``(loss scalar, features (B, K))``.
    """
    f = soft_features(images, masks, names, config, temperature)
    return jnp.mean(relative_errors(f, jnp.asarray(target, f.dtype))), f
