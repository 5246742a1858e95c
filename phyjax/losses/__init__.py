"""Losses: pure functions of predictions and targets (batched ``(B, H, W, C)`` arrays)."""

from phyjax.losses.losses import (
    edge_agreement,
    gradient_difference,
    intensity_distribution,
    masked_l1,
    mixture_consistency,
    mixture_posteriors,
    physics_consistency,
    r1_m0_map_loss,
    soft_tissue_classes,
    ssim_loss,
    tissue_consistency,
    tissue_distribution,
)

__all__ = ["edge_agreement", "gradient_difference", "intensity_distribution", "masked_l1",
           "mixture_consistency", "mixture_posteriors",
           "physics_consistency", "r1_m0_map_loss", "soft_tissue_classes", "ssim_loss",
           "tissue_consistency", "tissue_distribution"]
