"""One fixed tissue segmenter for every image (CSF / GM / WM): ANTs Atropos or DIPY's HMRF.

:class:`AtroposSegmenter` (the default, ``segmentation.method = "atropos"``) wraps ANTs Atropos
(Avants, Tustison et al., Neuroinformatics 9:381, 2011; through ``antspyx``): k-means
initialised Gaussian mixture with a Potts MRF prior, with the MRF and convergence settings of
ANTs' own ``antsAtroposN4.sh`` (smoothing 0.1, radius 1 voxel, 5 iterations) and a constant
random seed, so every call on the same image gives the same labels.

:class:`TissueSegmenter` (``segmentation.method = "hmrf"``, the benchmark's segmenter up to
2026-11) wraps ``dipy.segment.tissue.TissueClassifierHMRF`` (Zhang, Brady &
Smith, IEEE TMI 20:45, 2001 -- the hidden-Markov-random-field EM model behind FSL FAST; DIPY's
implementation: Garyfallidis et al., Front. Neuroinform. 8:8, 2014).  The benchmark builds *one*
instance from the config and segments every image with it (raw, harmonized by any method, and the
target-protocol ground truth), so differences in tissue labels come from the images alone.

Why Atropos is the default (``benchmarks/segmenter_truth.py``, ``benchmarks/results/
segmenter_truth.md``): on the default dataset's held-out re-scans, against the ground-truth tissue
fractions, DIPY's HMRF reaches Dice CSF/GM/WM 0.67/0.82/0.95 on template heads and only
0.68/0.54/0.73 on the real head (its WM label 42 % too small: the 3-Gaussian EM without partial
volume widens GM over the GM/WM mixtures), Atropos 0.78/0.88/0.95 and 0.83/0.84/0.96; on the real
1 mm Philips T1w, against its FSL FAST maps, HMRF 0.83/0.83/0.92 and Atropos 0.91/0.88/0.92 with
tissue volumes within 5 % of FAST's (HMRF: CSF +21 %), in half the time.

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

    def describe(self) -> str:
        """One line for reports."""
        return f"DIPY HMRF (beta {self.beta:g}, at most {self.max_iter} iterations)"

    def __call__(self, image, mask) -> np.ndarray:
        from dipy.segment.tissue import TissueClassifierHMRF  # heavy import

        scaled = rescale_for_segmentation(image, mask)
        mask = np.asarray(mask, bool)
        # Crop to the mask's bounding box (+1 voxel of background) for speed.
        box = _bounding_box(mask)
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


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The mask's bounding box with one voxel of background around it."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


@dataclasses.dataclass(frozen=True)
class AtroposSegmenter:
    """ANTs Atropos segmentation into CSF / GM / WM inside a brain mask (fixed settings).

    Attributes:
      mrf_smoothing: Atropos' MRF smoothing factor (``-m [smoothing,radius]``; 0.1 as in ANTs'
        ``antsAtroposN4.sh``).
      mrf_radius: MRF neighbourhood radius in voxels (1: the 26 neighbours).
      iterations: maximum EM iterations (``-c [iterations,convergence]``; 5 as antsAtroposN4).
      convergence: Atropos' convergence threshold on the mean maximum posterior (0: run all
        iterations).
    Call with ``(image (X, Y, Z), mask (X, Y, Z) bool)``; returns ``int8`` labels (0 outside the
    mask, 1 CSF, 2 GM, 3 WM, classes ordered by mean intensity as Atropos' k-means does).
    The image is rescaled as for the HMRF (:func:`rescale_for_segmentation`). Atropos runs with a
    constant random seed (``-r 0``): labels are reproducible (tested). Raises ValueError for a
    shape mismatch, an empty mask, non-finite values or a constant image; RuntimeError when
    Atropos fails.
    """

    mrf_smoothing: float = 0.1
    mrf_radius: int = 1
    iterations: int = 5
    convergence: float = 0.0

    def describe(self) -> str:
        """One line for reports."""
        return (f"ANTs Atropos (k-means initialised, MRF smoothing {self.mrf_smoothing:g}, radius "
                f"{self.mrf_radius}, {self.iterations} iterations, constant seed)")

    def __call__(self, image, mask) -> np.ndarray:
        import tempfile

        import ants  # heavy import (ITK)

        scaled = rescale_for_segmentation(image, mask)
        mask = np.asarray(mask, bool)
        box = _bounding_box(mask)
        a = ants.from_numpy(np.ascontiguousarray(scaled[box], np.float32))
        x = ants.from_numpy(np.ascontiguousarray(mask[box], np.float32))
        r = self.mrf_radius
        # antspyx writes the class posteriors to files named by tempfile.mktemp and never deletes
        # them; send them to a folder of our own that is removed afterwards.
        with tempfile.TemporaryDirectory(prefix="phyjax-atropos-") as tmp:
            saved, tempfile.tempdir = tempfile.tempdir, tmp
            try:
                out = ants.atropos(a=a, x=x, i=f"Kmeans[{len(TISSUE_LABELS)}]",
                                   m=f"[{self.mrf_smoothing:g},{r}x{r}x{r}]",
                                   c=f"[{self.iterations},{self.convergence:g}]", r=0)
            except Exception as err:  # antspyx raises a bare Exception on a non-zero exit
                raise RuntimeError(f"ANTs Atropos failed: {err}") from err
            finally:
                tempfile.tempdir = saved
        seg = np.rint(out["segmentation"].numpy()).astype(np.int8)
        inside = mask[box]
        # Order the classes by mean intensity (k-means already does; checked, not assumed).
        means = [scaled[box][inside & (seg == k)].mean() if np.any(inside & (seg == k))
                 else np.inf for k in (1, 2, 3)]
        order = np.argsort(means)
        remap = np.zeros(4, np.int8)
        remap[1 + order] = np.arange(1, 4, dtype=np.int8)
        labels = np.zeros(mask.shape, np.int8)
        labels[box] = remap[np.clip(seg, 0, 3)]
        labels[mask & (labels == BACKGROUND)] = TISSUE_LABELS["csf"]
        labels[~mask] = BACKGROUND
        return labels


SEGMENTERS = {"atropos": AtroposSegmenter, "hmrf": TissueSegmenter}


def make_segmenter(s):
    """The fixed tissue segmenter of a config's ``segmentation`` section.

    ``s.method`` is ``"atropos"`` (:class:`AtroposSegmenter`, settings ``mrf_smoothing``,
    ``mrf_radius``, ``iterations``) or ``"hmrf"`` (:class:`TissueSegmenter`, settings ``beta``,
    ``max_iter``, ``tolerance``). Raises ValueError for another method.
    """
    if s.method == "atropos":
        return AtroposSegmenter(mrf_smoothing=s.mrf_smoothing, mrf_radius=s.mrf_radius,
                                iterations=s.iterations)
    if s.method == "hmrf":
        return TissueSegmenter(beta=s.beta, max_iter=s.max_iter, tolerance=s.tolerance)
    raise ValueError(f"segmentation.method must be one of {sorted(SEGMENTERS)}, "
                     f"got {s.method!r}.")
