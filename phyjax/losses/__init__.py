"""Losses: pure functions of predictions and targets (batched ``(B, H, W, C)`` arrays)."""

from phyjax.losses.losses import masked_l1, physics_consistency, r1_m0_map_loss, ssim_loss

__all__ = ["masked_l1", "physics_consistency", "r1_m0_map_loss", "ssim_loss"]
