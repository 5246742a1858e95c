"""Loss functions for PhyCHarm (pure; arrays ``(B, H, W, 1)``, masks likewise)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phyjax.ssim import ssim_map


def masked_l1(x, y, mask):
    """Mean ``|x - y|`` over the mask (scalar)."""
    return jnp.sum(jnp.abs(x - y) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def r1_m0_map_loss(t1, m0, t1_true, m0_true, mask):
    """Map loss: L1 on R1 = 1/T1 (1/s) plus L1 on M0, in the mask.

    R1 rather than T1 because T1-weighted contrast is close to linear in R1 and
    CSF's long, poorly determined T1 would otherwise dominate.
    """
    safe_true = jnp.where(mask > 0, t1_true, 1.0)
    return masked_l1(1.0 / t1, 1.0 / safe_true, mask) + masked_l1(m0, m0_true, mask)


def physics_consistency(source, resynth_source, mask):
    """Self-supervised physics loss: the source must be re-synthesized from the maps.

    The unknown receive gain (and normalization) is removed per slice by the
    least-squares scale ``g = <s, r> / <r, r>`` over the mask; the loss is
    ``sum |s - g r| / sum |s|`` over the mask, averaged over the batch.
    """
    axes = tuple(range(1, source.ndim))
    g = jnp.sum(source * resynth_source * mask, axes, keepdims=True) / jnp.maximum(
        jnp.sum(resynth_source ** 2 * mask, axes, keepdims=True), 1e-8)
    err = jnp.sum(jnp.abs(source - g * resynth_source) * mask, axes)
    return jnp.mean(err / jnp.maximum(jnp.sum(jnp.abs(source) * mask, axes), 1e-8))


def ssim_loss(x, y, mask, data_range=1.0):
    """``1 - mean SSIM`` over the mask for a batch of 2-D slices ``(B, H, W, 1)``."""
    maps = jax.vmap(lambda a, b: ssim_map(a[..., 0], b[..., 0], data_range))(x, y)
    m = mask[..., 0]
    return 1.0 - jnp.sum(maps * m) / jnp.maximum(jnp.sum(m), 1.0)


def _differences(x, mask):
    """Forward differences of ``(B, H, W, 1)`` arrays along H and W, each with the mask of the
    pixel pairs both inside ``mask``: ``[(dx, mx), (dy, my)]``."""
    return [(x[:, 1:] - x[:, :-1], mask[:, 1:] * mask[:, :-1]),
            (x[:, :, 1:] - x[:, :, :-1], mask[:, :, 1:] * mask[:, :, :-1])]


def gradient_difference(x, y, mask):
    """Gradient-difference loss (Mathieu, Couprie & LeCun, ICLR 2016, Eq. 5, alpha = 1).

    ``sum | |dy| - |dx| |`` over the pixel pairs inside ``mask`` along both in-plane axes,
    divided by their number: an image that is right on average but blurred (weaker edges than
    the target) or that invents edges pays for it, which L1 and SSIM on intensities reward
    only weakly.  ``x``, ``y``, ``mask``: ``(B, H, W, 1)``; returns a scalar (image units per
    pixel).
    """
    total, count = 0.0, 0.0
    for (dx, m), (dy, _) in zip(_differences(x, mask), _differences(y, mask)):
        total += jnp.sum(jnp.abs(jnp.abs(dy) - jnp.abs(dx)) * m)
        count += jnp.sum(m)
    return total / jnp.maximum(count, 1.0)


def edge_agreement(x, reference, mask, eta: float = 0.5):
    """Normalized-gradient-field distance (Haber & Modersitzki, MICCAI 2006, Eqs. 3-4).

    ``1 - mean over the mask of (grad x . grad r)^2 / ((|grad x|^2 + e_x^2)(|grad r|^2 +
    e_r^2))``: 0 where every edge of ``x`` lies where ``reference`` has one, in the same or
    the opposite direction -- contrast-free, so it compares images of different protocols
    (a harmonized image and its source) by their anatomy only.  ``e`` = ``eta`` times the
    image's mean in-mask gradient magnitude (their Eq. 5), per slice, so flat noisy regions
    count little.  Central differences; ``(B, H, W, 1)`` arrays; returns a scalar in [0, 1].
    """
    def grads(a):
        gx = 0.5 * (jnp.roll(a, -1, 1) - jnp.roll(a, 1, 1))
        gy = 0.5 * (jnp.roll(a, -1, 2) - jnp.roll(a, 1, 2))
        return gx, gy

    # only pixels whose 4 neighbours are inside the mask (no edge against the zeroed outside)
    inner = mask * jnp.roll(mask, 1, 1) * jnp.roll(mask, -1, 1) * jnp.roll(mask, 1, 2) \
        * jnp.roll(mask, -1, 2)
    axes = (1, 2, 3)
    n = jnp.maximum(jnp.sum(inner, axes, keepdims=True), 1.0)

    def normed(a):
        gx, gy = grads(a)
        mag2 = gx ** 2 + gy ** 2
        eps = eta * jnp.sum(jnp.sqrt(mag2 + 1e-12) * inner, axes, keepdims=True) / n
        return gx, gy, mag2 + eps ** 2 + 1e-12

    ax, ay, na = normed(x)
    bx, by, nb = normed(reference)
    # outside ``inner`` the quotient is not used; dividing by 1 there keeps its gradient finite
    # (a flat zeroed pixel's ``na * nb`` ~ 1e-24, whose square underflows in float32)
    align = (ax * bx + ay * by) ** 2 / jnp.where(inner > 0, na * nb, 1.0)
    return 1.0 - jnp.sum(align * inner) / jnp.maximum(jnp.sum(inner), 1.0)


def smallest_gap(levels):
    """The smallest distance between two of the tissue signal levels ``levels`` ``(K,)``, K >= 2
    (sorted or not): the scale of the soft tissue classes and of the mixture's initial spread."""
    gaps = jnp.abs(levels[:, None] - levels[None, :]) + jnp.eye(levels.shape[0]) * 1e9
    return jnp.min(gaps)


def soft_tissue_classes(x, levels, width):
    """Soft tissue classification of an image by the tissues' signal levels under its protocol.

    ``p_k = softmax_k(-(x - levels_k)^2 / (2 width^2))`` (a Gaussian mixture with equal priors
    and variances whose means come from the signal equation, not from the image).
    ``x``: ``(...)``; ``levels``: ``(K,)`` (e.g. CSF, GM, WM); ``width``: scalar; returns
    ``(..., K)``.
    """
    d = (x[..., None] - levels) ** 2 / (2.0 * width ** 2)
    return jax.nn.softmax(-d, axis=-1)


def tissue_consistency(x, y, mask, levels):
    """Mean over the mask of ``sum_k |p_k(x) - p_k(y)|`` (in [0, 2]) with
    :func:`soft_tissue_classes` at ``levels`` ``(K,)`` (the target protocol's CSF/GM/WM signal,
    sorted or not) and a width of a quarter of the smallest gap between two levels (the
    memberships of a tissue's own level are then > 0.99): an error that moves a voxel across a
    tissue boundary -- what a segmentation and a tissue volume see -- costs far more than one
    of the same size inside a tissue.  ``(B, H, W, 1)`` arrays."""
    width = 0.25 * smallest_gap(levels)
    px = soft_tissue_classes(x[..., 0], levels, width)
    py = soft_tissue_classes(y[..., 0], levels, width)
    m = mask[..., 0]
    return jnp.sum(jnp.sum(jnp.abs(px - py), -1) * m) / jnp.maximum(jnp.sum(m), 1.0)


def intensity_distribution(x, y, mask):
    """1-D Wasserstein-1 distance between the in-mask intensities of ``x`` and ``y``, per slice.

    For two samples of equal size the Wasserstein-1 (earth mover's) distance is the mean
    absolute difference of their sorted values -- the histogram loss of Risser, Wilmot &
    Barnes (arXiv:1701.08893, 2017, Sec. 4.2) in its exact sorted form.  Both images share the
    mask (one subject, one grid), so each slice's in-mask values are sorted after every voxel
    outside the mask is set to the same large constant in both images (those sort last and
    cancel).  The loss compares intensity *distributions*, blind to where a voxel is: it
    punishes an output whose histogram is narrower or shifted at the tails -- the
    regression-to-the-mean that moves tissue boundaries for a histogram-fitting segmenter
    (a Gaussian-mixture HMRF) -- which voxel-wise L1/SSIM tolerate.

    ``x``, ``y``, ``mask``: ``(B, H, W, 1)``; returns the mean over slices with any mask voxel
    of ``sum |sort(x_m) - sort(y_m)| / n_m`` (image units).
    """
    big = 1e6
    m = mask.reshape(mask.shape[0], -1) > 0
    xs = jnp.sort(jnp.where(m, x.reshape(m.shape), big), axis=-1)
    ys = jnp.sort(jnp.where(m, y.reshape(m.shape), big), axis=-1)
    n = jnp.sum(m, axis=-1)
    per_slice = jnp.sum(jnp.abs(xs - ys), axis=-1) / jnp.maximum(n, 1)
    has = n > 0
    return jnp.sum(jnp.where(has, per_slice, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def tissue_distribution(x, y, mask, levels):
    """Wasserstein-1 distance of ``x`` against ``y`` inside each tissue class of ``y``, per slice.

    Every in-mask voxel is assigned to the tissue ``k`` whose signal level ``levels[k]`` (the
    target protocol's CSF/GM/WM signal, :func:`phyjax.methods.phycharm.tissue_levels`) is
    nearest to ``y`` (the target image); within each class the in-mask values of ``x`` and ``y``
    are compared as distributions (:func:`intensity_distribution`, the sorted form of the 1-D
    Wasserstein-1 distance), and the per-class sums are divided by the slice's in-mask voxel
    count: ``sum_k n_k W1(x|k, y|k) / n``, the class-size-weighted mean of the per-tissue
    distances.  It is the histogram loss of Risser et al. (arXiv:1701.08893, 2017, Sec. 4.2)
    conditioned on the target's tissue: it cannot trade a too-bright grey matter against a
    too-dark white matter the way the whole-slice distance can (it is never smaller than
    :func:`intensity_distribution`, since it allows fewer couplings), and it asks each tissue's
    intensity spread -- narrowed by regression to the mean in partial-volume voxels -- to be
    the target's.

    ``x``, ``y``, ``mask``: ``(B, H, W, 1)``; ``levels``: ``(K,)``.  Returns the mean over the
    slices with any mask voxel (image units); differentiable in ``x`` (the classes come from
    ``y`` only).
    """
    big = 1e6
    b = mask.shape[0]
    inside = mask.reshape(b, -1) > 0
    xf, yf = x.reshape(b, -1), y.reshape(b, -1)
    cls = jnp.argmin(jnp.abs(yf[..., None] - levels), axis=-1)
    total = jnp.zeros((b,), x.dtype)
    for k in range(levels.shape[0]):
        m = inside & (cls == k)
        xs = jnp.sort(jnp.where(m, xf, big), axis=-1)
        ys = jnp.sort(jnp.where(m, yf, big), axis=-1)
        total = total + jnp.sum(jnp.abs(xs - ys), axis=-1)
    n = jnp.sum(inside, axis=-1)
    has = n > 0
    per_slice = total / jnp.maximum(n, 1)
    return jnp.sum(jnp.where(has, per_slice, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def mixture_posteriors(x, mask, init_means, iterations: int = 5, min_sd: float = 0.01):
    """Tissue posteriors of a 1-D Gaussian mixture fitted to the image itself by EM.

    The fixed segmenter of the benchmark (ANTs Atropos, Avants et al., Neuroinformatics 2011,
    Eqs. 1-3; DIPY's HMRF likewise) models each tissue's intensities as a Gaussian whose mean,
    variance and prior are estimated from the image it segments; a voxel's class is then its
    posterior.  Which voxels it calls grey matter therefore depends on the image's own class
    means, spreads and proportions -- a smoother, lower-contrast or histogram-narrowed image
    moves the boundaries even where every voxel is close to the target.  This is that mixture
    without the MRF prior: ``iterations`` EM steps (Dempster, Laird & Rubin 1977; the updates
    of Bishop, *PRML*, Eqs. 9.23-9.27 in 1-D) from means ``init_means``, equal priors and a
    standard deviation of half the smallest gap between two initial means, over every in-mask
    voxel of the batch pooled (one mixture per batch, as one per volume in the segmenter), then
    the posteriors ``p_k = pi_k N(x; mu_k, s_k) / sum_j pi_j N(x; mu_j, s_j)``.  Differentiable
    in ``x`` through the fitted parameters.

    ``x``, ``mask``: ``(B, H, W, 1)`` (or any equal shape); ``init_means``: ``(K,)``, e.g. the
    target protocol's CSF/GM/WM levels; ``min_sd``: floor of each class's standard deviation
    (image units; keeps a class from collapsing onto a few voxels).  Returns
    ``(posteriors (..., K), means (K,), sds (K,), priors (K,))``; posteriors are computed for
    every voxel, only the in-mask ones enter the fit.
    """
    w = (mask > 0).astype(x.dtype).reshape(-1)
    v = x.reshape(-1)
    mu = jnp.asarray(init_means, x.dtype)
    k = mu.shape[0]
    var = jnp.full((k,), (0.5 * smallest_gap(mu)) ** 2, x.dtype)
    log_pi = jnp.full((k,), -jnp.log(float(k)), x.dtype)

    def e_step(mu, var, log_pi):
        logp = log_pi - 0.5 * jnp.log(2.0 * jnp.pi * var) - (v[:, None] - mu) ** 2 / (2.0 * var)
        return jax.nn.softmax(logp, axis=-1)

    for _ in range(iterations):
        r = e_step(mu, var, log_pi) * w[:, None]
        n_k = jnp.maximum(jnp.sum(r, 0), 1e-6)
        mu = jnp.sum(r * v[:, None], 0) / n_k
        var = jnp.maximum(jnp.sum(r * (v[:, None] - mu) ** 2, 0) / n_k, min_sd ** 2)
        log_pi = jnp.log(n_k / jnp.maximum(jnp.sum(w), 1.0))
    post = e_step(mu, var, log_pi)
    return post.reshape(x.shape + (k,)), mu, jnp.sqrt(var), jnp.exp(log_pi)


def mixture_consistency(x, y, mask, init_means, iterations: int = 5):
    """Mean over the mask of ``sum_k |p_k(x) - p_k(y)|`` (in [0, 2]), each image's posteriors
    from a Gaussian mixture fitted to *that* image (:func:`mixture_posteriors`): a
    differentiable stand-in for segmenting the harmonized image and the target each on its
    own, as the benchmark's fixed segmenter does, so that the output is asked for the
    target's segmentation -- its tissue volumes and boundaries -- under the segmenter's own
    re-estimation of class means and spreads.  :func:`tissue_consistency` instead classifies
    both images at the same fixed signal levels.  ``y``'s posteriors are constants (no
    gradient).  ``x``, ``y``, ``mask``: ``(B, H, W, 1)``; ``init_means``: ``(K,)`` (the target
    protocol's tissue levels); returns a scalar."""
    px = mixture_posteriors(x, mask, init_means, iterations)[0]
    py = jax.lax.stop_gradient(mixture_posteriors(y, mask, init_means, iterations)[0])
    m = (mask > 0).astype(x.dtype)
    return jnp.sum(jnp.sum(jnp.abs(px - py), -1) * m) / jnp.maximum(jnp.sum(m), 1.0)
