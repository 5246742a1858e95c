"""The physics gold standard: tissue probabilities from a quantitative R1 map.

Borges et al., "Physics-informed brain MRI segmentation", SASHIMI 2019 (arXiv:2001.10767),
"physics gold standard": the reference
segmentation is computed from the quantitative R1 = 1/T1 map, not from any weighted image, so it
does not depend on the acquisition whose segmentation is being judged.  Each tissue's R1 is
modelled by a normal distribution -- their values (3 T multi-parameter maps): GM
0.683 +- 0.080 s^-1, WM 1.036 +- 0.080 s^-1, CSF 0.240 +- 0.03 s^-1 -- and a voxel's tissue
probabilities are the normalized likelihoods (Bayes' rule with the given priors; equal by
default):

    p(t | R1) = pi_t N(R1; mu_t, sigma_t) / sum_s pi_s N(R1; mu_s, sigma_s).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: Order of the tissue classes everywhere in :mod:`phyjax.segment` (as
#: :data:`phyjax.physics.tissues.TISSUES` and the label values 1, 2, 3 of
#: :data:`phyjax.evaluate.overlap.TISSUE_LABELS`).
CLASSES = ("csf", "gm", "wm")

#: Borges et al. (2019): R1 mean and sd (s^-1) per tissue.
PAPER_R1 = {"csf": (0.240, 0.03), "gm": (0.683, 0.080), "wm": (1.036, 0.080)}


def r1_probabilities(r1, means=None, sds=None, priors=None):
    """Tissue probabilities ``(..., 3)`` (CSF, GM, WM) of an R1 map ``(...)`` in s^-1.

    Args:
      r1: R1 = 1/T1 (s^-1), any shape; must be finite.
      means, sds: per-class normal parameters (s^-1), sequences of 3 in :data:`CLASSES` order;
        default :data:`PAPER_R1`.
      priors: class priors (3, positive; normalized here); default equal.
    Returns: float32 ``r1.shape + (3,)`` summing to 1 over the last axis.
    Raises ValueError for a non-positive sd or prior, or non-finite R1.
    """
    means = np.asarray(means if means is not None else [PAPER_R1[c][0] for c in CLASSES],
                       np.float64)
    sds = np.asarray(sds if sds is not None else [PAPER_R1[c][1] for c in CLASSES], np.float64)
    priors = np.asarray(priors if priors is not None else [1.0, 1.0, 1.0], np.float64)
    if means.shape != (3,) or sds.shape != (3,) or priors.shape != (3,):
        raise ValueError("means, sds and priors need 3 values each (CSF, GM, WM).")
    if not (np.all(sds > 0) and np.all(priors > 0)):
        raise ValueError(f"sds {sds} and priors {priors} must be positive.")
    r1 = jnp.asarray(r1, jnp.float32)
    if not bool(jnp.all(jnp.isfinite(r1))):
        raise ValueError("R1 map has non-finite values.")
    z = (r1[..., None] - means) / sds
    log_lik = -0.5 * z ** 2 - np.log(sds) + np.log(priors / priors.sum())
    return jax.nn.softmax(log_lik, axis=-1).astype(jnp.float32)


def gold_standard(t1, mask, means=None, sds=None, priors=None) -> np.ndarray:
    """Gold-standard probabilities ``(X, Y, Z, 3)`` from a T1 map (s) inside ``mask``.

    R1 = 1/T1; outside ``mask`` every class is 0.  See :func:`r1_probabilities`.
    Raises ValueError for non-positive T1 inside the mask or a shape mismatch.
    """
    t1, mask = np.asarray(t1, np.float32), np.asarray(mask, bool)
    if t1.shape != mask.shape:
        raise ValueError(f"shape mismatch: T1 {t1.shape} != mask {mask.shape}.")
    if not np.all(t1[mask] > 0):
        raise ValueError("T1 map has non-positive values inside the mask.")
    r1 = np.where(mask, 1.0 / np.where(mask, t1, 1.0), 0.0)
    probs = np.asarray(r1_probabilities(r1, means, sds, priors))
    return np.where(mask[..., None], probs, 0.0).astype(np.float32)
