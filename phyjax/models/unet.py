"""2-D U-Net whose blocks are modulated (FiLM) by a conditioning vector.

The conditioning vector carries the acquisition parameters (Borges et al. 2019
feed them through an MLP branch; FiLM, Perez et al., AAAI 2018, is the form used
here), so one network serves every protocol.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class FiLMBlock(nn.Module):
    """Two 3x3 conv + GroupNorm + GELU, feature-wise affine modulation from ``cond``."""

    features: int

    @nn.compact
    def __call__(self, x, cond):
        groups = min(4, self.features)
        for _ in range(2):
            x = nn.Conv(self.features, (3, 3))(x)
            x = nn.GroupNorm(num_groups=groups)(x)
            film = nn.Dense(2 * self.features, kernel_init=nn.initializers.zeros)(cond)
            scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
            x = nn.gelu(x * (1.0 + scale) + shift)
        return x


class ConditionalUNet(nn.Module):
    """U-Net ``(B, H, W, C_in), (B, P) -> (B, H, W, out_channels)``.

    H and W must be divisible by ``2 ** (len(features) - 1)``.

    Attributes:
      features: channels per level, e.g. ``(16, 32, 64)``.
      out_channels: output channels (linear output).
      cond_features: width of the conditioning MLP.
    """

    features: Sequence[int] = (16, 32, 64)
    out_channels: int = 1
    cond_features: int = 32

    @nn.compact
    def __call__(self, x, cond):
        cond = nn.gelu(nn.Dense(self.cond_features)(cond))
        cond = nn.gelu(nn.Dense(self.cond_features)(cond))
        skips = []
        for f in self.features[:-1]:
            x = FiLMBlock(f)(x, cond)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = FiLMBlock(self.features[-1])(x, cond)
        for f, skip in zip(reversed(self.features[:-1]), reversed(skips)):
            x = jax.image.resize(x, skip.shape[:3] + (x.shape[-1],), "nearest")
            x = FiLMBlock(f)(jnp.concatenate([x, skip], axis=-1), cond)
        return nn.Conv(self.out_channels, (1, 1))(x)
