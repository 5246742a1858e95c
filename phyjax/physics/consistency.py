"""Data consistency of predicted quantitative maps with the image they were predicted from.

A network that maps one T1-weighted image to T1 and M0 regresses to the conditional mean where
the image does not determine the answer, so its maps -- and every image re-synthesised from
them -- are smoother than the anatomy: thin cortex and gyral white matter fade.  The measured
image still holds that detail.  This module puts it back by the physics: each voxel's (T1, M0)
is moved to the maximum a posteriori estimate under

    y = g S(T1, M0) + n,   n ~ N(0, sigma^2),
    T1 ~ N(T1_net, (a T1_net)^2),   M0 ~ N(M0_net, (b M0_net)^2),

with ``S`` the source protocol's signal equation (:func:`phyjax.physics.signal.synthesize`,
T2/T2* folded into M0 as PhyCHarm's generator does; for a model of two-tissue voxels the
signal of the two tissues each mean T1 stands for, :mod:`phyjax.physics.partial_volume`),
``g`` the smooth receive gain (bias field times the image's normalisation, :func:`local_gain`),
the network's maps as the prior mean and its relative errors ``a``, ``b`` as the prior widths.
The posterior mode is found by Gauss-Newton on the linearised signal equation -- for one
measurement and a diagonal prior the update has the closed form of a Kalman gain (iterated
extended Kalman filter; Bell & Cathey, IEEE TAC 38:294, 1993; the data-consistency step of
model-based reconstruction, e.g. Schlemper et al., IEEE TMI 37:491, 2018, in its Bayesian form).
Where the image is noisy or insensitive to T1 (``|dS/dT1|`` small against ``sigma``) the prior
wins and the maps stay the network's; where it is informative the residual detail moves into the
maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from phyjax.physics import signal
from phyjax.physics.sequences import Protocol

#: lower bound of a refined T1 (s): keeps every signal equation finite
T1_MIN = 0.05


def local_gain(image, synthesized, mask, sigma_voxels) -> np.ndarray:
    """Smooth receive gain ``g`` with ``image ~ g * synthesized`` (local least squares).

    ``g = G*(image * synthesized * mask) / G*(synthesized**2 * mask)`` with ``G`` a Gaussian of
    standard deviation ``sigma_voxels`` (voxels; a scalar or one per axis): the per-slice gain
    of PhyCHarm's physics-consistency loss (:func:`phyjax.losses.physics_consistency`) made
    local, so a bias field is absorbed and nothing finer.  Shapes ``(X, Y, Z)``; returns
    float32 ``(X, Y, Z)``, 0 where no masked voxel is within reach.  Raises ValueError for a
    non-positive width.
    """
    sigma = np.broadcast_to(np.asarray(sigma_voxels, float), (np.ndim(image),))
    if np.any(sigma <= 0):
        raise ValueError(f"local_gain: sigma_voxels must be > 0, got {sigma_voxels!r}")
    m = np.asarray(mask, np.float64)
    s = np.asarray(synthesized, np.float64) * m
    num = ndimage.gaussian_filter(np.asarray(image, np.float64) * s, sigma, mode="constant")
    den = ndimage.gaussian_filter(s * s, sigma, mode="constant")
    tiny = 1e-12 * max(float(den.max()), 1e-30)
    return np.where(den > tiny, num / np.maximum(den, tiny), 0.0).astype(np.float32)


def _signal_and_jacobian(protocol: Protocol, t1, m0, forward=None):
    """``S``, ``dS/dT1``, ``dS/dM0`` voxelwise of ``forward(t1, m0)``, by default
    :func:`signal.synthesize` of ``protocol`` (T2/T2* folded)."""
    if forward is None:
        def forward(t1_, m0_):
            return signal.synthesize(protocol, t1_, jnp.inf, jnp.inf, m0_)

    s, d_t1 = jax.jvp(lambda x: forward(x, m0), (t1,), (jnp.ones_like(t1),))
    _, d_m0 = jax.jvp(lambda x: forward(t1, x), (m0,), (jnp.ones_like(m0),))
    return s, d_t1, d_m0


def map_update(protocol: Protocol, image, t1_prior, m0_prior, gain, *, t1_sd=0.15, m0_sd=0.08,
               noise=0.06, iterations=3, t1_max=5.0, m0_max=1.5, forward=None):
    """Maximum a posteriori (T1, M0) of each voxel given its measured ``image`` value.

    Minimises ``(image - gain S(T1, M0))^2 / noise^2 + (T1 - T1p)^2 / (t1_sd T1p)^2 +
    (M0 - M0p)^2 / (m0_sd M0p)^2`` per voxel by ``iterations`` Gauss-Newton steps from the prior
    (module docstring; one measurement, so each step is ``x = x_p + K (r + G (x - x_p))`` with
    ``G = gain * dS/dx`` at the current ``x``, ``K = V G^T / (G V G^T + noise^2)``).

    Args:
      protocol: the protocol ``image`` was acquired with (its B0 is the maps' B0).
      image: measured magnitude, in the units ``gain`` maps the signal equation to; any shape.
      t1_prior: network T1 (s), same shape; m0_prior: network M0 (PD fraction).
      gain: receive gain per voxel (:func:`local_gain`); 0 leaves a voxel at its prior.
      t1_sd, m0_sd: relative prior standard deviations (the network's relative map errors).
      noise: noise standard deviation of ``image`` (same units).
      iterations: Gauss-Newton steps (>= 1).
      t1_max, m0_max: the model's map bounds; the result is clipped to
        ``[T1_MIN, t1_max]`` and ``[0, m0_max]``.
      forward: the voxelwise signal model ``S(t1, m0)`` (arrays of one shape, differentiable);
        ``None``: one tissue of that T1 through ``protocol``'s signal equation
        (:func:`signal.synthesize`).  A model of two-tissue voxels passes
        ``lambda t1, m0: mixture_synthesize(protocol, t1, m0, protocol.field_strength)``
        (:mod:`phyjax.physics.partial_volume`), so the fit explains the image with the voxel
        model the maps were predicted under.

    Returns ``(t1, m0)`` of the input shape.  Pure and differentiable (jit-able); raises
    ValueError for ``iterations < 1`` or a non-positive Python ``noise``.
    """
    if iterations < 1:
        raise ValueError(f"map_update: iterations must be >= 1, got {iterations}")
    if isinstance(noise, (int, float)) and not noise > 0:
        raise ValueError(f"map_update: noise must be > 0, got {noise}")
    t1p = jnp.clip(jnp.asarray(t1_prior, jnp.float32), T1_MIN, t1_max)
    m0p = jnp.clip(jnp.asarray(m0_prior, jnp.float32), 0.0, m0_max)
    y = jnp.asarray(image, jnp.float32)
    g = jnp.asarray(gain, jnp.float32)
    v1, v0 = (t1_sd * t1p) ** 2, (m0_sd * m0p) ** 2
    t1, m0 = t1p, m0p
    for _ in range(int(iterations)):
        s, ds1, ds0 = _signal_and_jacobian(protocol, t1, m0, forward)
        g1, g0 = g * ds1, g * ds0
        # innovation of the linearisation at (t1, m0), referred to the prior mean
        r = y - g * s + g1 * (t1 - t1p) + g0 * (m0 - m0p)
        den = g1 * g1 * v1 + g0 * g0 * v0 + noise ** 2
        t1 = jnp.clip(t1p + v1 * g1 * r / den, T1_MIN, t1_max)
        m0 = jnp.clip(m0p + v0 * g0 * r / den, 0.0, m0_max)
    return t1, m0
