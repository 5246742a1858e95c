"""WhiteStripe normalization (normal-appearing white matter), via ``intensity-normalization``.

Shinohara et al., "Statistical normalization techniques for magnetic resonance imaging",
NeuroImage: Clinical 6:9 (2014).  For a T1-weighted image the white-matter mode is the last
(highest-intensity) peak of the smoothed in-brain histogram (after discarding the top 4 % tail);
the "white stripe" is the set of voxels whose intensity quantile lies within ``width`` (5 %) of
the mode's quantile, and the image is normalized as ``(I - mean_ws) / sd_ws``.  Implementation:
``intensity_normalization.WhiteStripeNormalizer`` (Gaussian-KDE histogram, last local maximum,
quantile window), which follows the authors' R package ``WhiteStripe`` (mean and sd of the
stripe voxels).

To be comparable voxel by voxel with the target protocol, ``fit`` records the mean white-stripe
mean and sd of the training images (the target protocol's images of the training subjects in
the benchmark) and ``__call__`` maps the z-scored image onto them: ``z * sd_ref + mean_ref``.
WhiteStripe is therefore invariant to any positive affine change of the input intensities (a
property the tests check).
"""

from __future__ import annotations

import numpy as np
from intensity_normalization import WhiteStripeNormalizer
from intensity_normalization.adapters.images import NumpyImageAdapter
from intensity_normalization.domain.exceptions import NormalizationError

from phyjax.baselines.nyul import _in_mask
from phyjax.baselines.persist import Persistent


class WhiteStripe(Persistent):
    """WhiteStripe per image, rescaled to the white-stripe statistics of the training images."""

    name = "whitestripe"

    def __init__(self, width: float = 0.05):
        if not 0 < width < 0.5:
            raise ValueError(f"width must be in (0, 0.5), got {width}.")
        self.width = width

    def stripe(self, image, mask) -> tuple[float, float, np.ndarray]:
        """``(mean, sd, stripe mask)`` of the white stripe of one T1-weighted image."""
        image, mask, values = _in_mask(image, mask)
        if np.unique(values).size < 3:
            raise ValueError("WhiteStripe needs an image with at least 3 distinct values in the mask.")
        norm = WhiteStripeNormalizer(width=self.width)
        try:
            norm.fit(NumpyImageAdapter(np.asarray(image, np.float32)),
                     NumpyImageAdapter(mask.astype(np.float32)))
        except NormalizationError as exc:
            raise ValueError(f"WhiteStripe failed: {exc}") from exc
        return float(norm.mean), float(norm.std), np.asarray(norm.whitestripe_mask) & mask

    def fit(self, images, masks) -> "WhiteStripe":
        images, masks = list(images), list(masks)
        if not images or len(images) != len(masks):
            raise ValueError(f"need >= 1 training image and one mask per image "
                             f"({len(images)} images, {len(masks)} masks).")
        stats = np.array([self.stripe(im, m)[:2] for im, m in zip(images, masks)])
        self.mean_, self.std_ = float(stats[:, 0].mean()), float(stats[:, 1].mean())
        return self

    def __call__(self, image, mask) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise RuntimeError("WhiteStripe: call fit(...) on training images first.")
        mean, sd, _ = self.stripe(image, mask)
        z = (np.asarray(image, np.float64) - mean) / sd
        return np.where(np.asarray(mask, bool), z * self.std_ + self.mean_, 0.0).astype(np.float32)
