"""Image-to-image GAN networks: ResNet generator, PatchGAN discriminator, U-Net generator and a
small tissue/ROI segmenter (flax linen, NHWC).

* :class:`ResnetGenerator` -- the CycleGAN generator (Zhu et al., ICCV 2017; Johnson et al.,
  ECCV 2016): reflection-padded 7x7 stem, ``n_down`` stride-2 convolutions, ``n_blocks`` residual
  blocks (reflection padding, 3x3 conv, instance norm, ReLU), ``n_down`` transposed
  convolutions and a reflection-padded 7x7 output with ``tanh``.  The layout of the public
  PyTorch CycleGAN (``ResnetGenerator`` of junyanz/pytorch-CycleGAN-and-pix2pix) with instance
  norm without affine parameters, as there.
* :class:`PatchDiscriminator` -- the 70x70 PatchGAN of Isola et al. (CVPR 2017): 4x4 convs,
  stride 2, LeakyReLU 0.2, instance norm from the second layer, one logit per patch.
* :class:`UNetGenerator` -- Pix2Pix's U-Net generator (Isola et al. 2017: 4x4 stride-2 encoder
  with LeakyReLU, transposed-conv decoder with ReLU, skip connections, ``tanh`` output), with
  ``depth`` levels so that it fits small slices.
* :class:`Segmenter` -- a small U-Net giving per-pixel class logits; Kim et al. (IEEE Access
  12:19482, 2024) train one per site, freeze it and put a Dice loss through it.

:func:`init_params` initializes any of them quickly (see there).  Every network takes and returns ``(B, H, W, C)`` float arrays.  The generators' height and width
must be multiples of ``2 ** n_down`` (``2 ** depth`` for the U-Nets); ValueError otherwise.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def init_params(module: nn.Module, seed: int, *inputs):
    """``module``'s parameters for example ``inputs``, initialized in one compiled call from an
    ``rbg`` key (XLA's RngBitGenerator).

    Why not the default threefry key with flax's op-by-op ``init``: on this CPU, XLA compiles
    every threefry draw separately in ~2.5 s (one per layer: ~25 s for a small ResNet
    generator), the ``rbg`` draw in ~0.3 s, and one jitted ``init`` compiles them together
    (~3 s).  ``rbg`` streams are deterministic for a given key on one platform (not across
    CPU/GPU), which is what a seeded initialization needs here.
    """
    key = jax.random.key(seed, impl="rbg")
    return jax.jit(module.init)(key, *inputs)["params"]


def reflect_pad(x, pad: int):
    """Reflection padding of the two spatial axes of ``x (B, H, W, C)`` by ``pad`` pixels
    (PyTorch ``nn.ReflectionPad2d``: the edge pixel is not repeated)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(x, eps: float = 1e-5):
    """Instance normalization without affine parameters (PyTorch ``InstanceNorm2d`` default):
    per sample and channel, over H and W; ``x (B, H, W, C)``."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * (1.0 / jnp.sqrt(var + eps))


def _check_multiple(x, multiple: int, name: str):
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise ValueError(f"{name}: height and width must be multiples of {multiple}, got {h}x{w}.")


class ResidualBlock(nn.Module):
    """``x + IN(conv3x3(pad(ReLU(IN(conv3x3(pad(x)))))))`` (reflection padding)."""

    features: int

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.features, (3, 3), padding="VALID")(reflect_pad(x, 1))
        y = nn.relu(instance_norm(y))
        y = nn.Conv(self.features, (3, 3), padding="VALID")(reflect_pad(y, 1))
        return x + instance_norm(y)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator ``(B, H, W, C_in) -> (B, H, W, out_channels)`` in ``(-1, 1)``.

    Attributes:
      features: channels of the first layer (``ngf``; doubled at each down-sampling).
      n_blocks: residual blocks at the lowest resolution (9 in the paper for 256^2 images).
      n_down: stride-2 down-samplings (2 in the paper).
      out_channels: output channels.
    """

    features: int = 16
    n_blocks: int = 4
    n_down: int = 2
    out_channels: int = 1

    @nn.compact
    def __call__(self, x):
        _check_multiple(x, 2 ** self.n_down, "ResnetGenerator")
        x = nn.Conv(self.features, (7, 7), padding="VALID")(reflect_pad(x, 3))
        x = nn.relu(instance_norm(x))
        f = self.features
        for _ in range(self.n_down):
            f *= 2
            x = nn.Conv(f, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x)
            x = nn.relu(instance_norm(x))
        for _ in range(self.n_blocks):
            x = ResidualBlock(f)(x)
        for _ in range(self.n_down):
            f //= 2
            x = nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME")(x)
            x = nn.relu(instance_norm(x))
        x = nn.Conv(self.out_channels, (7, 7), padding="VALID")(reflect_pad(x, 3))
        return jnp.tanh(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN ``(B, H, W, C) -> (B, H', W', 1)`` logits (LSGAN: no sigmoid).

    With ``n_layers=3`` each output sees a 70x70 patch (Isola et al. 2017); H' ~ H / 2^n_layers.

    Attributes:
      features: channels of the first layer (``ndf``), doubled per layer up to 8x.
      n_layers: stride-2 layers.
    """

    features: int = 16
    n_layers: int = 3

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1))
        x = nn.leaky_relu(nn.Conv(self.features, (4, 4), strides=(2, 2), padding=pad)(x), 0.2)
        for n in range(1, self.n_layers + 1):
            f = self.features * min(2 ** n, 8)
            stride = 2 if n < self.n_layers else 1
            x = nn.Conv(f, (4, 4), strides=(stride, stride), padding=pad, use_bias=False)(x)
            x = nn.leaky_relu(instance_norm(x), 0.2)
        return nn.Conv(1, (4, 4), padding=pad)(x)


class UNetGenerator(nn.Module):
    """Pix2Pix U-Net ``(B, H, W, C_in) -> (B, H, W, out_channels)`` in ``(-1, 1)``.

    Encoder: ``depth`` 4x4 stride-2 convs (instance norm from the second, LeakyReLU 0.2);
    decoder: 4x4 stride-2 transposed convs (instance norm, ReLU; dropout is left out: Isola et
    al. use it as the noise source, which the evaluation here does not want) concatenated with
    the mirrored encoder features; ``tanh`` output.

    Attributes:
      features: channels of the first level (doubled per level up to 8x).
      depth: down-samplings; H and W must be multiples of ``2 ** depth``.
      out_channels: output channels.
    """

    features: int = 16
    depth: int = 4
    out_channels: int = 1

    @nn.compact
    def __call__(self, x):
        _check_multiple(x, 2 ** self.depth, "UNetGenerator")
        pad = ((1, 1), (1, 1))
        skips = []
        for n in range(self.depth):
            f = self.features * min(2 ** n, 8)
            if n:
                x = nn.leaky_relu(x, 0.2)
            x = nn.Conv(f, (4, 4), strides=(2, 2), padding=pad)(x)
            if 0 < n < self.depth - 1:
                x = instance_norm(x)
            skips.append(x)
        skips.pop()
        for n in reversed(range(self.depth - 1)):
            f = self.features * min(2 ** n, 8)
            x = nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME")(nn.relu(x))
            x = jnp.concatenate([instance_norm(x), skips[n]], axis=-1)
        x = nn.ConvTranspose(self.out_channels, (4, 4), strides=(2, 2), padding="SAME")(nn.relu(x))
        return jnp.tanh(x)


class Segmenter(nn.Module):
    """Small U-Net ``(B, H, W, C_in) -> (B, H, W, n_classes)`` logits (two 3x3 conv + instance
    norm + ReLU per level, max-pool down, nearest up-sampling, skip connections).

    Attributes:
      n_classes: output classes.
      features: channels per level, e.g. ``(8, 16)``; H and W multiples of
        ``2 ** (len(features) - 1)``.
    """

    n_classes: int = 3
    features: tuple[int, ...] = (8, 16)

    @nn.compact
    def __call__(self, x):
        _check_multiple(x, 2 ** (len(self.features) - 1), "Segmenter")

        def block(x, f):
            for _ in range(2):
                x = nn.relu(instance_norm(nn.Conv(f, (3, 3))(x)))
            return x

        skips = []
        for f in self.features[:-1]:
            x = block(x, f)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = block(x, self.features[-1])
        for f, skip in zip(reversed(self.features[:-1]), reversed(skips)):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = block(jnp.concatenate([x, skip], axis=-1), f)
        return nn.Conv(self.n_classes, (1, 1))(x)
