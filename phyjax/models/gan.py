"""Image-to-image GAN networks: ResNet generator, PatchGAN discriminator, U-Net generator and a
small tissue/ROI segmenter (flax linen, NHWC).

* :class:`ResnetGenerator` -- the CycleGAN generator (Zhu et al., ICCV 2017; Johnson et al.,
  ECCV 2016): reflection-padded 7x7 stem, ``n_down`` stride-2 convolutions, ``n_blocks`` residual
  blocks (reflection padding, 3x3 conv, instance norm, ReLU), ``n_down`` transposed
  convolutions and a reflection-padded 7x7 output with ``tanh``.  The layout of the public
  PyTorch CycleGAN (``ResnetGenerator`` of junyanz/pytorch-CycleGAN-and-pix2pix) with instance
  norm without affine parameters, as there.  ``residual=True``: the output is the input plus a
  correction whose last layer starts at zero, so an untrained generator is the identity
  (:func:`residual_output`).
* :class:`PatchDiscriminator` -- the 70x70 PatchGAN of Isola et al. (CVPR 2017): 4x4 convs,
  stride 2, LeakyReLU 0.2, instance norm from the second layer, one logit per patch.
* :class:`UNetGenerator` -- Pix2Pix's U-Net generator (Isola et al. 2017: 4x4 stride-2 encoder
  with LeakyReLU, transposed-conv decoder with ReLU, skip connections, ``tanh`` output), with
  ``depth`` levels so that it fits small slices; ``residual=True`` as for the ResNet generator.
* :class:`Segmenter` -- a small U-Net giving per-pixel class logits; Kim et al. (IEEE Access
  12:19482, 2024) train one per site, freeze it and put a Dice loss through it.

:func:`init_params` initializes any of them quickly (see there).  Every network takes and returns ``(B, H, W, C)`` float arrays.  The generators' height and width
must be multiples of ``2 ** n_down`` (``2 ** depth`` for the U-Nets); ValueError otherwise.
"""

from __future__ import annotations

from functools import partial
from typing import Any

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


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def instance_norm(x, eps: float = 1e-5):
    """Instance normalization without affine parameters (PyTorch ``InstanceNorm2d`` default):
    per sample and channel, over H and W; ``x (B, H, W, C)``.

    With its gradient written out (``y = (x - mean) / sd``: ``dx = (g - mean(g) - y mean(g y))
    / sd``, what PyTorch's ``native_batch_norm_backward`` computes): two reductions and one
    element-wise pass over the saved output, where autodiff of the two-pass forward makes XLA
    re-derive ``x - mean`` and reduce through the variance's chain rule.  With :class:`Conv`'s
    cancelled bias: the CycleGAN step's CPU time -2 to -3 % (before/after steps interleaved in
    one process; inside the round-to-round spread of ``benchmarks/cyclegan_step.py``).
    Same values and gradients as flax's ``nn.InstanceNorm`` to float rounding (tested)."""
    return _instance_norm_fwd(x, eps)[0]


def _instance_norm_fwd(x, eps):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    xc = x - mean
    inv_sd = jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=(1, 2), keepdims=True) + eps)
    y = xc * inv_sd
    return y, (y, inv_sd)


def _instance_norm_bwd(eps, res, g):
    y, inv_sd = res
    g_mean = jnp.mean(g, axis=(1, 2), keepdims=True)
    gy_mean = jnp.mean(g * y, axis=(1, 2), keepdims=True)
    return (inv_sd * (g - g_mean - y * gy_mean),)


instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


def residual_output(x_in, correction):
    """``x_in``'s centre channel (all channels when ``correction`` has as many) plus
    ``correction (B, H, W, C_out)``, without ``tanh`` (the result may leave ``[-1, 1]``).

    Why: a CycleGAN or Pix2Pix generator that must first learn the identity from a random
    initialization spends its first hundreds of unpaired steps far from its input (on the
    default benchmark 100 steps gave SSIM 0.61 where the unharmonized input has 0.97).  With
    the correction's last convolution initialized to zero the untrained generator returns its
    input exactly and training only has to learn the site difference -- the same choice as the
    supervised U-Net's ``unet.residual`` (and the zero-initialized final layers of residual
    networks, Goyal et al. 2017).
    """
    c_in, c_out = x_in.shape[-1], correction.shape[-1]
    if c_out == c_in:
        return x_in + correction
    if c_out != 1:
        raise ValueError(f"residual output: {c_out} output channels for {c_in} input channels; "
                         "expected 1 or as many as the input.")
    return x_in[..., c_in // 2:c_in // 2 + 1] + correction


def upsample_conv(x, kernel):
    """``lax.conv_transpose(x, kernel, (2, 2), "SAME")`` (NHWC, HWIO, kernel not flipped: what
    ``flax.linen.ConvTranspose(strides=(2, 2), padding="SAME")`` computes), ``(B, H, W, C) ->
    (B, 2H, 2W, O)``, with stride-1 convolutions only: one per output phase ``(r, s)`` (output
    pixels ``(2i + r, 2j + s)``), each with the kernel taps that reach that phase, interleaved.

    Why: XLA lowers a transposed convolution to a convolution with ``lhs_dilation`` 2 over the
    zero-inflated input, and its kernel gradient to a convolution XLA:CPU computes on a slow
    path: forward + backward of the CycleGAN generator's two up-sampling layers took 228 and
    248 ms on one core vs 30 and 62 ms in PyTorch, the whole gap between the two frameworks'
    train steps (``benchmarks/cyclegan_layers.py``).  The four phase convolutions do exactly the
    non-zero work, forward and backward (24 and 33 ms).  Same values to float rounding (tested
    against lax).  Stride-2 convolutions need no such rewrite: XLA's are as fast as PyTorch's,
    backward included (a space-to-depth formulation measured 1.5-3x slower).
    """
    k = kernel.shape[0]
    pad_a = k - 1 if 2 > k - 1 else -(-k // 2)     # lax's 'SAME' transpose padding, stride 2

    def phase(r):
        taps = [t for t in range(k) if (r + t - pad_a) % 2 == 0]
        offsets = [(r + t - pad_a) // 2 for t in taps]
        return taps, offsets[0], offsets[-1]

    h, w = x.shape[1:3]
    rows = []
    for r in range(2):
        taps_r, lo_r, hi_r = phase(r)
        cols = []
        for s_ in range(2):
            taps_s, lo_s, hi_s = phase(s_)
            xp = jax.lax.pad(x, jnp.zeros((), x.dtype),
                             ((0, 0, 0), (-lo_r, hi_r, 0), (-lo_s, hi_s, 0), (0, 0, 0)))
            wk = kernel[jnp.asarray(taps_r)][:, jnp.asarray(taps_s)]
            cols.append(jax.lax.conv_general_dilated(
                xp, wk, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        rows.append(jnp.stack(cols, axis=3))          # (B, H, W, 2, O)
    y = jnp.stack(rows, axis=2)                       # (B, H, 2, W, 2, O)
    return y.reshape(x.shape[0], 2 * h, 2 * w, kernel.shape[-1])


class UpConv(nn.Module):
    """``flax.linen.ConvTranspose(features, (k, k), strides=(2, 2), padding="SAME")`` with the
    same parameters and initializers, computed by :func:`upsample_conv`."""

    features: int
    kernel_size: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_cancelled: bool = False

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        kernel, x = kernel.astype(jnp.result_type(kernel, x)), x.astype(jnp.result_type(kernel, x))
        y = upsample_conv(x, kernel)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y if self.bias_cancelled else y + bias


class Conv(nn.Module):
    """``flax.linen.Conv(features, (k, k), strides=(s, s), padding=padding, use_bias=use_bias)``
    (NHWC, HWIO) with the same parameters and initializers; ``bias_cancelled=True`` when an
    instance norm follows: the bias parameter is kept (flax's parameter tree, saved models) but
    not added, since the norm subtracts every per-channel constant (its gradient is then 0
    instead of float rounding noise, and XLA saves one pass over the activations)."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: Any = "VALID"
    use_bias: bool = True
    bias_cancelled: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.strides
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        dt = jnp.result_type(kernel, x)
        y = jax.lax.conv_general_dilated(x.astype(dt), kernel.astype(dt), (s, s), self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            if not self.bias_cancelled:
                y = y + bias.astype(dt)
        return y


CONV_IMPLS = ("phases", "lax")


def _check_impl(impl: str) -> None:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")


def _down(impl: str, features: int, k: int, name: str, use_bias: bool = True,
          normed: bool = False):
    """A stride-2 ``k x k`` convolution with padding 1: flax's ``Conv`` (``impl="lax"``, or an
    un-normalized output) or :class:`Conv` with the bias left out before an instance norm
    (``normed``)."""
    _check_impl(impl)
    if impl == "phases" and normed:
        return Conv(features, k, 2, ((1, 1), (1, 1)), use_bias, bias_cancelled=True, name=name)
    return nn.Conv(features, (k, k), strides=(2, 2), padding=((1, 1), (1, 1)),
                   use_bias=use_bias, name=name)


def _conv(impl: str, features: int, k: int, name: str | None = None, normed: bool = False):
    """A stride-1 ``k x k`` 'VALID' convolution (the input is reflection-padded): flax's
    ``Conv`` (``impl="lax"``) or :class:`Conv` (bias left out before an instance norm)."""
    _check_impl(impl)
    if impl == "phases":
        return Conv(features, k, bias_cancelled=normed, name=name)
    return nn.Conv(features, (k, k), padding="VALID", name=name)


def _up(impl: str, features: int, k: int, name: str, kernel_init=None, normed: bool = False):
    """A x2 transposed ``k x k`` convolution, padding 'SAME': :class:`UpConv` (``impl="phases"``)
    or flax's ``ConvTranspose`` (``"lax"``)."""
    _check_impl(impl)
    init = kernel_init or nn.initializers.lecun_normal()
    if impl == "phases":
        return UpConv(features, k, init, bias_cancelled=normed, name=name)
    return nn.ConvTranspose(features, (k, k), strides=(2, 2), padding="SAME",
                            kernel_init=init, name=name)


def _check_multiple(x, multiple: int, name: str):
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise ValueError(f"{name}: height and width must be multiples of {multiple}, got {h}x{w}.")


class ResidualBlock(nn.Module):
    """``x + IN(conv3x3(pad(ReLU(IN(conv3x3(pad(x)))))))`` (reflection padding)."""

    features: int
    conv_impl: str = "phases"

    @nn.compact
    def __call__(self, x):
        y = _conv(self.conv_impl, self.features, 3, "Conv_0", normed=True)(reflect_pad(x, 1))
        y = nn.relu(instance_norm(y))
        y = _conv(self.conv_impl, self.features, 3, "Conv_1", normed=True)(reflect_pad(y, 1))
        return x + instance_norm(y)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator ``(B, H, W, C_in) -> (B, H, W, out_channels)`` in ``(-1, 1)``.

    Attributes:
      features: channels of the first layer (``ngf``; doubled at each down-sampling).
      n_blocks: residual blocks at the lowest resolution (9 in the paper for 256^2 images).
      n_down: stride-2 down-samplings (2 in the paper).
      out_channels: output channels.
      residual: output ``input + correction`` (last layer zero-initialized, no ``tanh``;
        :func:`residual_output`) instead of ``tanh(last layer)``.
      conv_impl: ``"phases"`` -- the transposed convolutions as four stride-1 phase
        convolutions (:class:`UpConv`, :func:`upsample_conv`; 4-10x faster backward on
        XLA:CPU) and the biases that an instance norm cancels not added (:class:`Conv`);
        ``"lax"`` -- flax's ``ConvTranspose`` and ``Conv``.  Same parameters (names, shapes,
        initial values) and outputs.
    """

    features: int = 16
    n_blocks: int = 4
    n_down: int = 2
    out_channels: int = 1
    residual: bool = False
    conv_impl: str = "phases"

    @nn.compact
    def __call__(self, x):
        _check_multiple(x, 2 ** self.n_down, "ResnetGenerator")
        x_in = x
        x = _conv(self.conv_impl, self.features, 7, "Conv_0", normed=True)(reflect_pad(x, 3))
        x = nn.relu(instance_norm(x))
        f = self.features
        for i in range(self.n_down):
            f *= 2
            x = _down(self.conv_impl, f, 3, f"Conv_{i + 1}", normed=True)(x)
            x = nn.relu(instance_norm(x))
        for i in range(self.n_blocks):
            x = ResidualBlock(f, self.conv_impl, name=f"ResidualBlock_{i}")(x)
        for i in range(self.n_down):
            f //= 2
            x = _up(self.conv_impl, f, 3, f"ConvTranspose_{i}", normed=True)(x)
            x = nn.relu(instance_norm(x))
        name = f"Conv_{self.n_down + 1}"
        if self.residual:
            x = nn.Conv(self.out_channels, (7, 7), padding="VALID", name=name,
                        kernel_init=nn.initializers.zeros)(reflect_pad(x, 3))
            return residual_output(x_in, x)
        x = nn.Conv(self.out_channels, (7, 7), padding="VALID", name=name)(reflect_pad(x, 3))
        return jnp.tanh(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN ``(B, H, W, C) -> (B, H', W', 1)`` logits (LSGAN: no sigmoid).

    With ``n_layers=3`` each output sees a 70x70 patch (Isola et al. 2017); H' ~ H / 2^n_layers.

    Attributes:
      features: channels of the first layer (``ndf``), doubled per layer up to 8x.
      n_layers: stride-2 layers.
      conv_impl: as for :class:`ResnetGenerator`.
    """

    features: int = 16
    n_layers: int = 3
    conv_impl: str = "phases"

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1))
        x = nn.leaky_relu(_down(self.conv_impl, self.features, 4, "Conv_0")(x), 0.2)
        for n in range(1, self.n_layers + 1):
            f = self.features * min(2 ** n, 8)
            if n < self.n_layers:
                x = _down(self.conv_impl, f, 4, f"Conv_{n}", use_bias=False)(x)
            else:
                x = nn.Conv(f, (4, 4), padding=pad, use_bias=False, name=f"Conv_{n}")(x)
            x = nn.leaky_relu(instance_norm(x), 0.2)
        return nn.Conv(1, (4, 4), padding=pad, name=f"Conv_{self.n_layers + 1}")(x)


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
      residual: output ``input + correction`` (:func:`residual_output`) instead of ``tanh``.
      conv_impl: as for :class:`ResnetGenerator`.
    """

    features: int = 16
    depth: int = 4
    out_channels: int = 1
    residual: bool = False
    conv_impl: str = "phases"

    @nn.compact
    def __call__(self, x):
        _check_multiple(x, 2 ** self.depth, "UNetGenerator")
        x_in = x
        skips = []
        for n in range(self.depth):
            f = self.features * min(2 ** n, 8)
            if n:
                x = nn.leaky_relu(x, 0.2)
            x = _down(self.conv_impl, f, 4, f"Conv_{n}")(x)
            if 0 < n < self.depth - 1:
                x = instance_norm(x)
            skips.append(x)
        skips.pop()
        for n in reversed(range(self.depth - 1)):
            f = self.features * min(2 ** n, 8)
            x = _up(self.conv_impl, f, 4, f"ConvTranspose_{self.depth - 2 - n}")(nn.relu(x))
            x = jnp.concatenate([instance_norm(x), skips[n]], axis=-1)
        last = f"ConvTranspose_{self.depth - 1}"
        if self.residual:
            x = _up(self.conv_impl, self.out_channels, 4, last,
                    kernel_init=nn.initializers.zeros)(nn.relu(x))
            return residual_output(x_in, x)
        x = _up(self.conv_impl, self.out_channels, 4, last)(nn.relu(x))
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
