"""Scanner/site effects as deterministic functions, with separate samplers.

Following torchio's split, a ``sample_*`` function draws parameters from an
explicit PRNG key and a deterministic function applies them, so every effect is
reproducible and testable.  Arrays are volumes of shape ``(X, Y, Z)`` (any
3-D shape) unless stated otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class ScannerEffects:
    """Parameters of one scanner/site.

    Attributes:
      b1_scale: mean transmit flip-angle scale B1+ (dimensionless, ~0.8-1.2 at 3 T).
      b1_curvature: fractional B1+ drop from the centre to the corners of the
        volume (centre-bright pattern typical at 3 T).
      bias_amplitude: peak-to-peak fraction of the smooth multiplicative
        receive bias field (0-0.4).
      noise_fraction: Rician noise sigma as a fraction of the 99th percentile
        of the noiseless brain signal (0-0.09).
      slice_fwhm: through-plane Gaussian slice-profile FWHM along the last
        axis, in voxels (0 = none).
      gain: receive gain (a.u.).
    """

    b1_scale: float = 1.0
    b1_curvature: float = 0.0
    bias_amplitude: float = 0.0
    noise_fraction: float = 0.0
    slice_fwhm: float = 0.0
    gain: float = 1.0


def _normalized_grid(shape):
    axes = [jnp.linspace(-1.0, 1.0, n) for n in shape]
    return jnp.meshgrid(*axes, indexing="ij")


def b1_field(shape, b1_scale, b1_curvature):
    """B1+ map ``b1_scale * (1 - b1_curvature * r^2 / ndim)``, r the normalized radius.

    Shape ``shape``; equals ``b1_scale`` at the centre and
    ``b1_scale * (1 - b1_curvature)`` at the corners.
    """
    grid = _normalized_grid(shape)
    r2 = sum(g ** 2 for g in grid) / len(shape)
    return b1_scale * (1.0 - b1_curvature * r2)


def bias_field(shape, coefficients):
    """Smooth multiplicative bias ``exp(sum_k c_k P_k(x))`` over first- and second-order monomials.

    Args:
      shape: volume shape (3-D).
      coefficients: array ``(9,)`` for x, y, z, x^2, y^2, z^2, xy, xz, yz on [-1, 1]^3.
    Returns: positive field of ``shape``.
    """
    x, y, z = _normalized_grid(shape)
    basis = jnp.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z])
    return jnp.exp(jnp.tensordot(jnp.asarray(coefficients), basis, axes=1))


def sample_bias_coefficients(key, amplitude):
    """Draw :func:`bias_field` coefficients whose field spans about ``amplitude`` peak to peak.

    Returns ``(9,)``; the log-field range over [-1, 1]^3 is rescaled to
    ``log(1 + amplitude)``, so ``amplitude = 0`` gives a flat field.
    """
    c = jax.random.normal(key, (9,))
    # Range of the log-field over the cube, evaluated on a coarse grid.
    log_field = jnp.log(bias_field((9, 9, 9), c))
    span = jnp.max(log_field) - jnp.min(log_field)
    return c * jnp.log1p(amplitude) / jnp.maximum(span, 1e-6)


def rician_noise(image, sigma, key):
    """Magnitude of ``image`` plus complex Gaussian noise of std ``sigma`` per channel.

    ``|image + n_re + i n_im|``, ``n ~ N(0, sigma^2)``: Rician for ``sigma > 0``
    (Gudbjartsson & Patz, MRM 34:910, 1995).  Shape of ``image``.
    """
    return rician_magnitude(image, sigma, *unit_noise(key, jnp.shape(image)))


def rician_magnitude(image, sigma, z_re, z_im, sqrt=jnp.sqrt):
    """``|image + sigma z_re + i sigma z_im|``: :func:`rician_noise` from its standard normal
    draws (:func:`unit_noise`).  ``sqrt=np.sqrt`` with float32 numpy arrays and a float32
    ``sigma`` gives the same values to the bit, in numpy (many noise levels on one image:
    :func:`phyjax.data.simulated.fit_site_effects`)."""
    return sqrt((image + sigma * z_re) ** 2 + (sigma * z_im) ** 2)


def unit_noise(key, shape):
    """The standard normal draws ``(z_re, z_im)`` (each ``shape``) that :func:`rician_noise`
    scales by ``sigma`` with the same ``key``: one draw serves many noise levels on one image
    (:func:`phyjax.data.simulated.fit_site_effects`)."""
    k_re, k_im = jax.random.split(key)
    return jax.random.normal(k_re, shape), jax.random.normal(k_im, shape)


def slice_profile(volume, fwhm_voxels, axis=-1):
    """Blur ``volume`` along ``axis`` with a Gaussian slice profile of FWHM ``fwhm_voxels``.

    Models a thicker slice than the voxel grid.  Edges are reflected.
    ``fwhm_voxels`` must be a Python float (it sets the kernel size).
    """
    if fwhm_voxels <= 0:
        return volume
    sigma = fwhm_voxels / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    radius = int(np.ceil(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel = jnp.asarray(kernel / kernel.sum(), dtype=volume.dtype)
    moved = jnp.moveaxis(volume, axis, -1)
    padded = jnp.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius, radius)], mode="symmetric")
    flat = padded.reshape(-1, padded.shape[-1])
    out = jax.vmap(lambda row: jnp.convolve(row, kernel, mode="valid"))(flat)
    return jnp.moveaxis(out.reshape(moved.shape), -1, axis)


def sample_scanner_effects(key, b1_scale=(0.8, 1.2), b1_curvature=(0.0, 0.3),
                           bias_amplitude=(0.0, 0.4), noise_fraction=(0.0, 0.09),
                           slice_fwhm=(0.0, 2.0), gain=(0.5, 2.0)) -> ScannerEffects:
    """Draw a :class:`ScannerEffects` uniformly from ``(low, high)`` ranges with PRNG ``key``.

    Defaults span the ranges of ``DESIGN.md`` Sec. 3 (B1+ 0.8-1.2 at 3 T, bias
    0-40 %, Rician noise 0-9 % of the brightest tissue); ``gain`` is drawn
    log-uniformly.  Deterministic given ``key``; apply the result with
    :func:`b1_field`, :func:`bias_field`, :func:`slice_profile` and
    :func:`rician_noise` (see :func:`phyjax.data.synthetic.acquire`).
    """
    keys = jax.random.split(key, 6)
    u = [jax.random.uniform(k) for k in keys]

    def draw(v, bounds):
        lo, hi = bounds
        return float(lo + (hi - lo) * v)

    log_gain = draw(u[5], (np.log(gain[0]), np.log(gain[1])))
    return ScannerEffects(b1_scale=draw(u[0], b1_scale), b1_curvature=draw(u[1], b1_curvature),
                          bias_amplitude=draw(u[2], bias_amplitude),
                          noise_fraction=draw(u[3], noise_fraction),
                          slice_fwhm=draw(u[4], slice_fwhm), gain=float(np.exp(log_gain)))


def noise_sigma_for_snr(signal_level, snr):
    """Rician ``sigma`` (per channel) giving ``snr = signal_level / sigma``."""
    return signal_level / snr
