"""Intensity baselines: no harmonization, z-score, histogram matching.

Each baseline is fitted on target-protocol images of *training* subjects
(``fit``) and then applied to a held-out source image (``__call__``); the
held-out subject's own target image is never seen.  Images are
``(X, Y, Z)`` arrays already normalized by their 99th in-brain percentile;
voxels outside the mask are set to 0.
"""

from __future__ import annotations

import numpy as np
from skimage.exposure import match_histograms

from phyjax.baselines.persist import Persistent


def _pooled(images, masks):
    values = np.concatenate([np.asarray(im)[np.asarray(m, bool)] for im, m in zip(images, masks)])
    if values.size == 0:
        raise ValueError("cannot fit a baseline on empty masks.")
    return values


class NoHarmonization(Persistent):
    """The source image as it is (after the common percentile normalization)."""

    name = "none"

    def fit(self, images, masks):
        return self

    def __call__(self, image, mask):
        return np.where(mask, image, 0.0).astype(np.float32)


class ZScore(Persistent):
    """Map in-brain mean/std of the source onto the pooled target mean/std."""

    name = "zscore"

    def fit(self, images, masks):
        values = _pooled(images, masks)
        self.mean_, self.std_ = float(values.mean()), float(values.std())
        return self

    def __call__(self, image, mask):
        image, mask = np.asarray(image), np.asarray(mask, bool)   # a 0/1 integer mask indexes rows
        v = image[mask]
        z = (image - v.mean()) / max(float(v.std()), 1e-8)
        return np.where(mask, z * self.std_ + self.mean_, 0.0).astype(np.float32)


class HistogramMatching(Persistent):
    """Match the in-brain histogram to the pooled target histogram (scikit-image).

    The pooled reference is summarized by ``n_quantiles`` quantiles.
    """

    name = "histmatch"

    def __init__(self, n_quantiles: int = 1024):
        self.n_quantiles = n_quantiles

    def fit(self, images, masks):
        values = _pooled(images, masks)
        self.reference_ = np.quantile(values, np.linspace(0, 1, self.n_quantiles))
        return self

    def __call__(self, image, mask):
        out = np.zeros_like(image, dtype=np.float32)
        out[mask] = match_histograms(image[mask], self.reference_)
        return out


BASELINES = {cls.name: cls for cls in (NoHarmonization, ZScore, HistogramMatching)}
