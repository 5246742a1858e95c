"""Flax models: conditional U-Net and PhyCHarm."""

from phyjax.models.phycharm import PhyCHarm
from phyjax.models.unet import ConditionalUNet

__all__ = ["ConditionalUNet", "PhyCHarm"]
