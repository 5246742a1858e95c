"""Nyúl histogram standardization (piecewise-linear landmark matching), via ``intensity-normalization``.

Nyúl & Udupa, "On standardizing the MR image intensity scale", Magn. Reson. Med. 42:1072 (1999);
Nyúl, Udupa & Zhang, "New variants of a method of MRI scale standardization", IEEE TMI 19:143
(2000).  Training: for every training image, the intensities at the landmark percentiles
``[p_min, step, 2 step, ..., 100 - step, p_max]`` of the in-mask histogram are mapped linearly
from ``[I(p_min), I(p_max)]`` onto a standard range ``[s1, s2]``; the standard scale is the mean
of the mapped landmarks over the training images.  Application: the new image's own landmarks
are mapped piecewise-linearly onto the standard scale (extrapolating the first/last segment
beyond ``p_min``/``p_max``).

Implementation: ``intensity_normalization.NyulNormalizer`` (Reinhold et al., SPIE Medical
Imaging 2019; package ``intensity-normalization`` >= 3), which implements exactly this with the
deciles ("L4" in Nyúl 2000) between the 1st and 99th percentile by default.  Here ``[s1, s2]``
is set to the mean ``[I(p_min), I(p_max)]`` of the training images, so the output is in the
intensity units of the images the standard scale was fitted on (the target protocol's images of
the training subjects in the benchmark) and comparable with them voxel by voxel.
"""

from __future__ import annotations

import os

import numpy as np
from intensity_normalization import NyulNormalizer
from intensity_normalization.adapters.images import NumpyImageAdapter

from phyjax.baselines.persist import Persistent


def _in_mask(image, mask):
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape != mask.shape:
        raise ValueError(f"shape mismatch: image {image.shape} != mask {mask.shape}.")
    mask = mask.astype(bool)
    values = image[mask]
    if values.size == 0:
        raise ValueError("empty mask: no voxels to standardize.")
    if not np.all(np.isfinite(values)):
        raise ValueError("non-finite values (nan/inf) inside the mask.")
    return image, mask, values


class NyulStandardization(Persistent):
    """Nyúl piecewise-linear standardization fitted on training images (``fit``), then applied.

    Args:
      min_percentile, max_percentile: ``p_min``, ``p_max`` (1 and 99 by default; Nyúl 1999 used
        0 and 99.8).
      step: spacing of the inner landmarks in percent (10 = deciles).
    Attributes after ``fit``: ``percentiles_`` (landmark percentiles) and ``standard_scale_``
    (landmark intensities of the standard histogram).
    """

    name = "nyul"
    _not_saved = ("normalizer_",)

    def __init__(self, min_percentile: float = 1.0, max_percentile: float = 99.0,
                 step: float = 10.0):
        if not 0 <= min_percentile < step <= 100 - step < max_percentile <= 100:
            raise ValueError(f"need 0 <= min_percentile ({min_percentile}) < step ({step}) <= "
                             f"100 - step < max_percentile ({max_percentile}) <= 100.")
        self.min_percentile, self.max_percentile, self.step = min_percentile, max_percentile, step

    def landmarks(self, image, mask) -> np.ndarray:
        """The image's intensities at :attr:`percentiles_` inside ``mask``."""
        _, _, values = _in_mask(image, mask)
        return np.percentile(values, self.percentiles_)

    def fit(self, images, masks) -> "NyulStandardization":
        images, masks = list(images), list(masks)
        if not images or len(images) != len(masks):
            raise ValueError(f"need >= 1 training image and one mask per image "
                             f"({len(images)} images, {len(masks)} masks).")
        ends = []
        for i, (im, m) in enumerate(zip(images, masks)):
            _, _, values = _in_mask(im, m)
            lo, hi = np.percentile(values, [self.min_percentile, self.max_percentile])
            if not hi > lo:
                raise ValueError(f"training image {i} is constant between its landmark "
                                 "percentiles; cannot standardize.")
            ends.append((lo, hi))
        s1, s2 = np.mean(ends, axis=0)
        self.output_range_ = np.array([s1, s2], np.float64)
        self.normalizer_ = self._normalizer()
        self.normalizer_.fit_population(
            [NumpyImageAdapter(np.asarray(im, np.float32)) for im in images],
            [NumpyImageAdapter(np.asarray(m, np.float32)) for m in masks])
        self.percentiles_ = np.asarray(self.normalizer_.percentiles, np.float64)
        self.standard_scale_ = np.asarray(self.normalizer_.standard_scale, np.float64)
        return self

    def _normalizer(self):
        s1, s2 = self.output_range_
        return NyulNormalizer(
            output_min_value=float(s1), output_max_value=float(s2),
            min_percentile=self.min_percentile, max_percentile=self.max_percentile,
            percentile_after_min=self.step, percentile_before_max=100.0 - self.step,
            percentile_step=self.step)

    def _save_extra(self, directory: str) -> None:
        # The upstream normalizer's own persistence format (standard scale + percentiles).
        self.normalizer_.save_standard_histogram(os.path.join(directory, "nyul_histogram.npy"))

    def _load_extra(self, directory: str) -> None:
        self.normalizer_ = self._normalizer()
        self.normalizer_.load_standard_histogram(os.path.join(directory, "nyul_histogram.npy"))

    def __call__(self, image, mask) -> np.ndarray:
        if not hasattr(self, "normalizer_"):
            raise RuntimeError("NyulStandardization: call fit(...) on training images first.")
        image, mask, _ = _in_mask(image, mask)
        if np.any(np.diff(self.landmarks(image, mask)) <= 0):
            raise ValueError("image has repeated intensity landmarks (too few distinct values "
                             "inside the mask) for piecewise-linear standardization.")
        out = self.normalizer_.transform(NumpyImageAdapter(np.asarray(image, np.float32)),
                                         NumpyImageAdapter(mask.astype(np.float32))).get_data()
        return np.where(mask, out, 0.0).astype(np.float32)
