"""One fixed tissue segmenter for every image: DIPY's HMRF tissue classifier (CSF / GM / WM).

:class:`TissueSegmenter` wraps ``dipy.segment.tissue.TissueClassifierHMRF`` (Zhang, Brady &
Smith, IEEE TMI 20:45, 2001 -- the hidden-Markov-random-field EM model behind FSL FAST; DIPY's
implementation: Garyfallidis et al., Front. Neuroinform. 8:8, 2014).  The benchmark builds *one*
instance from the config and segments every image with it (raw, harmonized by any method, and the
target-protocol ground truth), so differences in tissue labels come from the images alone.

Pre-processing, identical for every image: voxels outside the brain mask are set to 0 (DIPY's
background class); inside the mask intensities are rescaled from their [0.5, 99.5] percentiles
to [0.1, 1] (clipped), which makes the segmenter invariant to the intensity scale of a method's
output while keeping the background class (values ~0.001 after DIPY's jitter) far from any
brain voxel.  DIPY sorts the classes by mean intensity, so for T1-weighted contrast the labels
are 1 = CSF, 2 = GM, 3 = WM (:data:`phyjax.evaluate.overlap.TISSUE_LABELS`).  Images whose
contrast is not T1-like (CSF darkest, WM brightest) are segmented by the same rule; that is part
of what the benchmark measures.

DIPY replaces background zeros by *unseeded* Gaussian jitter (0.001 +- 1e-4), which through the
EM parameter updates can flip a borderline brain voxel from run to run; the same jitter is supplied
here from a fixed seed, so the segmentation is deterministic (tested).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from phyjax.evaluate.overlap import TISSUE_LABELS

BACKGROUND = 0


def _validate(image, mask):
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {image.shape}.")
    if mask.shape != image.shape:
        raise ValueError(f"shape mismatch: image {image.shape} != mask {mask.shape}.")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("empty brain mask: nothing to segment.")
    values = image[mask]
    if not np.all(np.isfinite(values)):
        raise ValueError("image has non-finite values (nan/inf) inside the brain mask.")
    return np.asarray(image, np.float64), mask, values


def rescale_for_segmentation(image, mask, low_percentile: float = 0.5,
                             high_percentile: float = 99.5) -> np.ndarray:
    """In-mask intensities rescaled to [0.1, 1] between two percentiles; 0 outside the mask.

    Raises ValueError (shape mismatch, empty mask, non-finite values, or an image that is
    constant inside the mask).
    """
    image, mask, values = _validate(image, mask)
    lo, hi = np.percentile(values, [low_percentile, high_percentile])
    if not hi > lo:
        raise ValueError("image is constant inside the brain mask: no tissue contrast to segment.")
    scaled = 0.1 + 0.9 * np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    return np.where(mask, scaled, 0.0)


@dataclasses.dataclass(frozen=True)
class TissueSegmenter:
    """HMRF segmentation into CSF / GM / WM inside a brain mask (fixed hyper-parameters).

    Attributes:
      beta: MRF smoothness (DIPY's ``beta``; 0.1 in DIPY's T1 example).
      max_iter: maximum ICM/EM iterations.
      tolerance: DIPY's relative energy-change stopping tolerance.
    Call with ``(image (X, Y, Z), mask (X, Y, Z) bool)``; returns ``int8`` labels
    (0 outside the mask, 1 CSF, 2 GM, 3 WM).
    """

    beta: float = 0.1
    max_iter: int = 30
    tolerance: float = 1e-5

    def __call__(self, image, mask) -> np.ndarray:
        from dipy.segment.tissue import TissueClassifierHMRF  # heavy import

        scaled = rescale_for_segmentation(image, mask)
        mask = np.asarray(mask, bool)
        # Crop to the mask's bounding box (+1 voxel of background) for speed.
        idx = np.argwhere(mask)
        lo = np.maximum(idx.min(0) - 1, 0)
        hi = np.minimum(idx.max(0) + 2, mask.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        # DIPY replaces exact zeros by unseeded N(0.001, 1e-4^2) jitter; supply the same jitter
        # from a fixed seed instead, so that the result is reproducible.
        cropped = scaled[box]
        jitter = 0.001 + 1e-4 * np.random.default_rng(0).standard_normal(cropped.shape)
        cropped = np.where(cropped > 0, cropped, np.clip(jitter, 1e-6, None))
        dipy_logger = logging.getLogger("dipy")
        level = dipy_logger.level
        dipy_logger.setLevel(logging.WARNING)
        try:
            _, seg, _ = TissueClassifierHMRF(verbose=False).classify(
                cropped, len(TISSUE_LABELS), self.beta, tolerance=self.tolerance,
                max_iter=self.max_iter)
        finally:
            dipy_logger.setLevel(level)
        labels = np.zeros(mask.shape, np.int8)
        labels[box] = np.asarray(seg, np.int8)
        # A brain voxel in DIPY's background class (cannot happen after rescaling, kept as a
        # guard) counts as the darkest tissue.
        labels[mask & (labels == BACKGROUND)] = TISSUE_LABELS["csf"]
        labels[~mask] = BACKGROUND
        return labels


def segment_tissues(image, mask, beta: float = 0.1, max_iter: int = 30,
                    tolerance: float = 1e-5) -> np.ndarray:
    """Functional form of :class:`TissueSegmenter`."""
    return TissueSegmenter(beta, max_iter, tolerance)(image, mask)
