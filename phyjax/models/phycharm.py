"""PhyCHarm: quantitative-maps generator + physics re-synthesis + harmonizer.

Lee, Ye & Oh, "PhyCHarm: physics-constrained harmonization of MR images",
NeuroImage (2025).  The generator maps a source T1w slice and its acquisition
parameters to T1 and M0; the target protocol's signal equation
(:func:`phyjax.physics.signal.synthesize`) re-synthesizes the target-contrast
image from those maps; the harmonizer takes the source and the re-synthesized
image and predicts the target-protocol T1w as a residual on the
re-synthesis (the published model, ``base="resynth"``) or on a per-voxel blend of the
re-synthesis and the source slice whose weight it also predicts (``base="gated"``, phyjax's
default; docs/phycharm_ablation.md, item 42).  Everything is differentiable end to end.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from phyjax.models.unet import ConditionalUNet
from phyjax.physics import partial_volume as partial_volume_module, signal
from phyjax.physics.sequences import Protocol
from phyjax.physics.tissues import convert_t1


#: ``PhyCHarm.partial_volume``: how a voxel's T1/M0 become a signal -- ``single`` (one tissue of
#: that T1: the signal equation of the map) or ``two_tissue`` (the two adjacent tissues whose
#: mean T1 it is, their signals summed: :mod:`phyjax.physics.partial_volume`)
PARTIAL_VOLUME = ("single", "two_tissue")
#: ``PhyCHarm.base``: what the harmonizer's residual is added to -- ``resynth`` (the target
#: re-synthesized from the maps, the published model) or ``gated`` (a per-voxel blend, weight
#: from the harmonizer, of the re-synthesis and the source's own centre slice)
BASES = ("resynth", "gated")


def synthesize_maps(protocol: Protocol, t1, m0, maps_field_strength, partial_volume="single"):
    """Magnitude image of ``protocol`` from a batch of maps ``t1`` (s), ``m0``, each
    ``(B, ...)``, predicted at ``maps_field_strength`` (T, scalar or ``(B,)``), with
    ``partial_volume`` (:data:`PARTIAL_VOLUME`): ``single`` converts T1 to ``protocol``'s B0
    (:func:`phyjax.physics.tissues.convert_t1`) and takes its signal equation
    (:func:`phyjax.physics.signal.synthesize`); ``two_tissue`` sums the signals of the two
    tissues each voxel's mean T1 stands for
    (:func:`phyjax.physics.partial_volume.mixture_synthesize`).  T2/T2* folded into M0.
    Raises ValueError for another ``partial_volume``."""
    b0 = jnp.broadcast_to(maps_field_strength, jnp.shape(t1)[:1])
    if partial_volume == "single":
        t1_there = jax.vmap(convert_t1, in_axes=(0, 0, None))(t1, b0, protocol.field_strength)
        return signal.synthesize(protocol, t1_there, jnp.inf, jnp.inf, m0)
    if partial_volume == "two_tissue":
        return jax.vmap(partial_volume_module.mixture_synthesize, in_axes=(None, 0, 0, 0))(
            protocol, t1, m0, b0)
    raise ValueError(f"partial_volume={partial_volume!r}; expected one of {PARTIAL_VOLUME}.")


def masked_gaussian(image, mask, sigma: float):
    """In-plane Gaussian smoothing of ``image`` ``(B, H, W, 1)`` inside ``mask`` (same shape):
    normalized convolution, ``G * (image mask) / G * mask`` on the mask and 0 outside it, so the
    background's zeros do not darken the brain's edge. ``sigma``: the Gaussian's standard
    deviation in voxels (> 0; the kernel is truncated at 3 sigma, at least 1 voxel each side).
    Differentiable; a fixed filter, no parameters."""
    radius = max(1, math.ceil(3.0 * sigma))
    taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=image.dtype) / sigma) ** 2)
    taps = taps / jnp.sum(taps)

    def blur(x):
        dn = ("NHWC", "HWIO", "NHWC")
        x = jax.lax.conv_general_dilated(x, taps.reshape(-1, 1, 1, 1), (1, 1), "SAME",
                                         dimension_numbers=dn)
        return jax.lax.conv_general_dilated(x, taps.reshape(1, -1, 1, 1), (1, 1), "SAME",
                                            dimension_numbers=dn)

    weight = blur(mask)
    return jnp.where(mask > 0, blur(image * mask) / jnp.maximum(weight, 1e-6), 0.0)


def masked_bilateral(image, mask, sigma: float, range_sd: float):
    """Edge-preserving in-plane smoothing of ``image`` ``(B, H, W, 1)`` inside ``mask``: a
    bilateral filter (Tomasi & Manduchi, ICCV 1998), each voxel the mean of its neighbours
    within 3 ``sigma`` (voxels) weighted by a spatial Gaussian of sd ``sigma`` times
    ``exp(-(I_q - I_p)^2 / (2 range_sd^2))`` (``range_sd`` in the image's intensity units) and by
    the mask, so neighbours across a tissue boundary much higher than ``range_sd`` hardly count
    and the boundary is not blurred; 0 outside the mask.  ``range_sd -> inf`` is
    :func:`masked_gaussian`.  Differentiable; no parameters."""
    radius = max(1, math.ceil(3.0 * sigma))
    height, width = image.shape[1:3]
    pad = ((0, 0), (radius, radius), (radius, radius), (0, 0))
    values, weights = jnp.pad(image * mask, pad), jnp.pad(mask, pad)
    num = jnp.zeros_like(image)
    den = jnp.zeros_like(image)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            window = (slice(None), slice(radius + dy, radius + dy + height),
                      slice(radius + dx, radius + dx + width), slice(None))
            v, m = values[window], weights[window]
            w = m * math.exp(-0.5 * (dy * dy + dx * dx) / sigma ** 2) * jnp.exp(
                -0.5 * ((v - image) / range_sd) ** 2)
            num, den = num + w * v, den + w
    return jnp.where(mask > 0, num / jnp.maximum(den, 1e-6), 0.0)


def reference_signal(protocol: Protocol, tissue) -> jnp.ndarray:
    """``synthesize`` of ``protocol`` for one tissue (``TissueParameters``, T2* folded into M0)."""
    return signal.synthesize(protocol, tissue.t1, jnp.inf, jnp.inf, tissue.pd)


class PhyCHarm(nn.Module):
    """Forward pass on a batch of 2-D slices.

    Call with ``source (B, H, W, C)`` (the slice and its neighbours, centre
    channel ``C // 2``), ``mask (B, H, W, 1)``, ``source_code (B, P)``,
    ``target_code (B, P)`` (from :func:`phyjax.physics.encode`), the target
    :class:`Protocol`, its reference signal and the source B0 (T, ``(B,)`` or
    scalar).  The predicted T1 is at the source B0; the target image is re-synthesized from
    the maps by :func:`synthesize_maps` with ``partial_volume`` (``single``: T1 converted to the
    target B0 and one signal per voxel, the published model; ``two_tissue``: each voxel the
    sum of its two tissues' signals, :mod:`phyjax.physics.partial_volume`).  ``base``
    (:data:`BASES`): the harmonizer's output is a residual on the re-synthesis (``resynth``, the
    published model), or on ``g * resynth + (1 - g) * source centre slice`` with a per-voxel
    gate ``g`` in (0, 1) that the harmonizer predicts as a second channel (``gated``: the
    supervised U-Net's residual-on-the-source prior where the source's contrast is already the
    target's, the physics where it is not; the gate is returned as ``gate``; ``gate_prior`` in
    (0, 1) offsets its logit, so that an untrained network's gate is near it: 0.5 no offset;
    ``source_smoothing`` > 0: the source slice in that blend is first smoothed in-plane by a
    Gaussian of that standard deviation in voxels inside the mask, :func:`masked_gaussian`, so
    the source's noise is not passed on where the gate opens to it -- the network still sees
    the unsmoothed source and its residual can put detail back); ``source_range`` > 0 with it:
    edge-preserving instead, :func:`masked_bilateral` with that intensity sd; ``detail_gate``
    with ``source_smoothing`` > 0: a third harmonizer channel ``d`` in (0, 1) chooses per voxel
    between the raw and the smoothed source slice, ``own = d * raw + (1 - d) * smoothed``,
    returned as ``detail``, so the network can keep the raw slice's edges (the cortex) and take
    the smoothed one in flat tissue; an untrained ``d`` is near 0.5); ``source_smoothing_wide``
    > 0 with the detail gate: a third, wider Gaussian arm (that sd, voxels), and a fourth
    harmonizer channel: the weights of the raw, the smoothed and the widely smoothed slice are a
    softmax of ``(c2, 0, c3)``, returned as ``detail`` (the raw slice's) and ``wide`` (the
    widest's), so where a source is noisier than the target's the network can take more of its
    noise out; an untrained network weighs the three about equally.
    Returns a dict of
    ``(B, H, W, 1)`` arrays: ``t1`` (s), ``m0``, ``resynth`` (target contrast
    from the maps) and ``harmonized``; all zero outside ``mask`` except ``t1``
    which is set there to ``t1_max / 2`` to keep signal equations finite.
    """

    features: Sequence[int] = (16, 32, 64)
    cond_features: int = 32
    t1_max: float = 5.0
    m0_max: float = 1.5
    partial_volume: str = "single"
    base: str = "resynth"
    gate_prior: float = 0.5
    source_smoothing: float = 0.0
    source_range: float = 0.0
    detail_gate: bool = False
    source_smoothing_wide: float = 0.0

    def setup(self):
        if self.base not in BASES:
            raise ValueError(f"base={self.base!r}; expected one of {BASES}.")
        if self.detail_gate and not (self.base == "gated" and self.source_smoothing > 0):
            raise ValueError("detail_gate chooses between the raw and the smoothed source slice "
                             "of the gated base: it needs base='gated' and source_smoothing > 0.")
        if self.source_smoothing_wide > 0 and not self.detail_gate:
            raise ValueError("source_smoothing_wide is a third arm of the detail gate: it needs "
                             "detail_gate=True.")
        self.generator = ConditionalUNet(self.features, 2, self.cond_features)
        channels = (1 if self.base == "resynth" else 2 if not self.detail_gate
                    else 4 if self.source_smoothing_wide > 0 else 3)
        self.harmonizer = ConditionalUNet(self.features, channels, self.cond_features)

    def maps(self, source, mask, source_code):
        raw = self.generator(source, source_code)
        t1 = self.t1_max * jax.nn.sigmoid(raw[..., :1])
        m0 = self.m0_max * jax.nn.sigmoid(raw[..., 1:])
        t1 = jnp.where(mask > 0, t1, 0.5 * self.t1_max)
        return t1, m0 * mask

    def __call__(self, source, mask, source_code, target_code, target: Protocol,
                 target_reference, source_field_strength):
        t1, m0 = self.maps(source, mask, source_code)
        # Maps are predicted at the source's B0 (so re-synthesizing the source is
        # consistent); the target image needs T1 at the target's B0.
        resynth = synthesize_maps(target, t1, m0, source_field_strength,
                                  self.partial_volume) / target_reference * mask
        code = jnp.concatenate([source_code, target_code], axis=-1)
        head = self.harmonizer(jnp.concatenate([source, resynth], axis=-1), code)
        residual, base = head[..., :1], resynth
        if self.base == "gated":    # where the source already has the target's contrast, its
            # own detail; elsewhere the re-synthesis (an untrained gate starts near gate_prior)
            offset = math.log(self.gate_prior / (1.0 - self.gate_prior))
            gate = jax.nn.sigmoid(head[..., 1:2] + offset)
            centre = source.shape[-1] // 2
            raw = own = source[..., centre:centre + 1]
            if self.source_smoothing > 0 and self.source_range > 0:
                own = masked_bilateral(raw, mask, self.source_smoothing, self.source_range)
            elif self.source_smoothing > 0:
                own = masked_gaussian(raw, mask, self.source_smoothing)
            if self.detail_gate and self.source_smoothing_wide > 0:   # raw, smoothed, wider
                wide_arm = masked_gaussian(raw, mask, self.source_smoothing_wide)
                w = jax.nn.softmax(jnp.concatenate(
                    [head[..., 2:3], jnp.zeros_like(head[..., 2:3]), head[..., 3:4]], -1), -1)
                detail, wide = w[..., 0:1], w[..., 2:3]
                own = detail * raw + w[..., 1:2] * own + wide * wide_arm
            elif self.detail_gate:  # the raw slice where its edges matter, smoothed elsewhere
                detail = jax.nn.sigmoid(head[..., 2:3])
                own = detail * raw + (1.0 - detail) * own
            base = gate * resynth + (1.0 - gate) * own
        harmonized = (base + residual) * mask
        out = {"t1": t1, "m0": m0, "resynth": resynth, "harmonized": harmonized}
        if self.base == "gated":
            out["gate"] = gate * mask
        if self.detail_gate:
            out["detail"] = detail * mask
        if self.detail_gate and self.source_smoothing_wide > 0:
            out["wide"] = wide * mask
        return out
