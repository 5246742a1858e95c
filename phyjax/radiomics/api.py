"""Public API: one jit-compiled, vmappable extractor for hard (PyRadiomics) and soft features.

Arrays are ``(z, y, x)`` (SimpleITK / PyRadiomics order); a 2-D ``(y, x)`` image is treated as one
slice. ``force2d`` restricts GLCM / GLRLM to the 4 in-plane directions of each (y, x) slice
(PyRadiomics ``force2D`` with ``force2Ddimension = 0``); first-order features are unaffected.

Three levels:

* :func:`extract_features` -- one ROI on a fixed canvas, pure jnp (``jax.jit`` / ``jax.vmap`` /
  ``jax.grad`` it yourself; ``config`` must be static). ``temperature=None``: hard, PyRadiomics
  parity; ``temperature > 0``: soft memberships (see :mod:`phyjax.radiomics.discretize`).
* :func:`extract_batch` -- jit(vmap(extract_features)) over a padded batch ``(B, D, H, W)``.
* :func:`extract` / :func:`extract_files` -- host-side convenience: lists of images + label maps of
  any sizes (or NIfTI / NRRD paths), ``n_bins`` chosen to cover every ROI, one jit call. Hard mode
  packs all ROI voxels into one list (:mod:`phyjax.radiomics.packed`: cost proportional to the ROI
  voxels, not to the largest bounding box) unless the ROIs fill a common box densely; soft mode
  (and dense ROIs) crop every ROI to its bounding box and pad all into one canvas (rounded up, so
  different ROI sizes reuse one compilation).

Feature names follow PyRadiomics without the image-type prefix: ``firstorder_Mean``,
``glcm_Idmn``, ``glrlm_ShortRunEmphasis``, ...
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.radiomics.discretize import discretize, n_bins_for_width
from phyjax.radiomics.firstorder import FIRSTORDER_FEATURES, firstorder_features, grey_histogram
from phyjax.radiomics.glcm import GLCM_FEATURES, directions, glcm_features, glcm_matrices
from phyjax.radiomics.glrlm import GLRLM_FEATURES, glrlm_features, glrlm_matrices, max_run_length
from phyjax.radiomics.io import read_image
from phyjax.radiomics.packed import bounding_box, pack, packed_features, roi_box

__all__ = [
    "RadiomicsConfig", "feature_names", "extract_features", "extract_batch", "extract",
    "extract_files", "crop_and_pad", "auto_n_bins", "as_table",
]

_CLASSES = {"firstorder": FIRSTORDER_FEATURES, "glcm": GLCM_FEATURES, "glrlm": GLRLM_FEATURES}


@dataclasses.dataclass(frozen=True)
class RadiomicsConfig:
    """Static settings (hashable: pass as a static argument to ``jax.jit``).

    bin_width / bin_count: PyRadiomics ``binWidth`` / ``binCount`` (exactly one; default width 25).
    n_bins: static size of the grey-level axis. For ``bin_count`` it is ``bin_count``; for
      ``bin_width`` it must cover the ROI's range (``auto_n_bins``); values above are clipped.
    force2d: PyRadiomics ``force2D`` (dimension 0).
    voxel_array_shift: PyRadiomics ``voxelArrayShift`` (Energy, TotalEnergy, RMS).
    classes: feature classes to compute.
    max_voxels: optional static upper bound of the ROI voxel count: when it is at most half the
      canvas, the order statistics and the hard GLCM / GLRLM scatters work on the compacted ROI
      voxels instead of the whole canvas (much faster on large, sparse canvases; an ROI larger
      than this gives wrong results -- :func:`extract` sets it from the masks).
    """

    bin_width: float | None = 25.0
    bin_count: int | None = None
    n_bins: int = 64
    force2d: bool = False
    voxel_array_shift: float = 0.0
    classes: tuple[str, ...] = ("firstorder", "glcm", "glrlm")
    max_voxels: int | None = None

    def __post_init__(self):
        if self.bin_count is not None:
            object.__setattr__(self, "bin_width", None)
            object.__setattr__(self, "n_bins", int(self.bin_count))
        if self.bin_width is None and self.bin_count is None:
            raise ValueError("give bin_width or bin_count")
        unknown = set(self.classes) - set(_CLASSES)
        if unknown:
            raise ValueError(f"unknown feature classes {sorted(unknown)}; known: {sorted(_CLASSES)}")
        object.__setattr__(self, "classes", tuple(self.classes))


def feature_names(config: RadiomicsConfig = RadiomicsConfig()) -> tuple[str, ...]:
    """Names of the features :func:`extract_features` returns, in order."""
    return tuple(f"{c}_{n}" for c in config.classes for n in _CLASSES[c])


def extract_features(image, mask, config: RadiomicsConfig, spacing=(1.0, 1.0, 1.0),
                     temperature=None) -> dict[str, jax.Array]:
    """Features of one ROI on a fixed canvas (pure, jit/vmap/grad-able; ``config`` static).

    Args:
      image: float array (D, H, W) or (H, W). Values outside the mask are ignored.
      mask: bool (or 0/1) array, same shape: the ROI.
      config: :class:`RadiomicsConfig`.
      spacing: voxel spacing (any order; only its product enters TotalEnergy), mm.
      temperature: ``None`` (hard, PyRadiomics) or a positive float (soft bins, in bin widths).
    Returns:
      dict ``{name: scalar}`` with the names of :func:`feature_names`.
    """
    image = jnp.asarray(image)
    if not jnp.issubdtype(image.dtype, jnp.floating):
        image = image.astype(jnp.result_type(float))
    mask = jnp.asarray(mask).astype(bool)
    if image.shape == mask.shape:
        # ignored means ignored: soft memberships are computed everywhere and then masked, so a
        # NaN outside the ROI (a padded or cropped scan) would reach every feature as NaN * 0
        image = jnp.where(mask, image, jnp.zeros((), image.dtype))
    if image.ndim == 2:
        image, mask = image[None], mask[None]
    if image.ndim != 3:
        raise ValueError(f"expected a (D, H, W) or (H, W) image, got {image.shape}")
    dirs = directions(config.force2d or image.shape[0] == 1)
    disc = discretize(image, mask, n_bins=config.n_bins, bin_width=config.bin_width,
                      bin_count=config.bin_count, temperature=temperature)
    out = {}
    n = config.n_bins
    roi_index = None  # flat indices of the ROI voxels (padded with image.size), if bounded
    # compacting the ROI voxels (a nonzero pass) pays off when they are at most half the canvas
    if config.max_voxels is not None and 2 * config.max_voxels <= image.size:
        roi_index = jnp.nonzero(mask.reshape(-1), size=config.max_voxels, fill_value=image.size)[0]
    if "firstorder" in config.classes:
        hist = grey_histogram(n, disc.levels, disc.membership)
        f = firstorder_features(image, mask, hist, spacing, config.voxel_array_shift, roi_index,
                                differentiable=temperature is not None)
        out.update({f"firstorder_{k}": f[k] for k in FIRSTORDER_FEATURES})
    # visiting only the ROI voxels pays off when they are a small part of the canvas
    sparse = roi_index is not None and 4 * roi_index.shape[0] < image.size
    if "glcm" in config.classes:
        P = glcm_matrices(dirs, n_bins=n, levels=disc.levels, membership=disc.membership,
                          roi_index=roi_index if sparse else None)
        f = glcm_features(P, disc.n_levels, differentiable=temperature is not None)
        out.update({f"glcm_{k}": f[k] for k in GLCM_FEATURES})
    if "glrlm" in config.classes:
        n_runs = max_run_length(image.shape, dirs)
        P = glrlm_matrices(disc.levels, mask, dirs, n_runs, n_bins=n, membership=disc.membership,
                           roi_index=roi_index if sparse else None)
        f = glrlm_features(P)
        out.update({f"glrlm_{k}": f[k] for k in GLRLM_FEATURES})
    return out


def _batched(images, masks, spacings, temperature, config):
    fn = lambda im, m, sp: extract_features(im, m, config, sp, temperature)  # noqa: E731
    return jax.vmap(fn)(images, masks, spacings)


_batched_jit = jax.jit(_batched, static_argnames=("config",))


def extract_batch(images, masks, config: RadiomicsConfig, spacings=None,
                  temperature=None) -> dict[str, jax.Array]:
    """``jit(vmap(extract_features))`` over a padded batch.

    Args:
      images: (B, D, H, W) or (B, H, W) float. masks: same shape, bool.
      spacings: (B, 3) or None (unit spacing).
    Returns:
      dict name -> (B,) array.
    """
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.result_type(float))
    masks = jnp.asarray(masks).astype(bool)
    if spacings is None:
        spacings = jnp.ones((images.shape[0], 3), images.dtype)
    return _batched_jit(images, masks, jnp.asarray(spacings, images.dtype), temperature, config)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def crop_and_pad(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 multiple: int | Sequence[int] = 8, canvas: Sequence[int] | None = None):
    """Crop every image to its ROI's bounding box and pad all into one canvas (host side).

    The canvas is the largest bounding box, rounded up to ``multiple`` per axis (so batches of
    different ROI sizes share compilations); ROIs sit at the origin, padding has mask False.
    A depth-1 axis (2-D slices) stays 1.

    Returns:
      (images (B, D, H, W) float64 numpy, masks (B, D, H, W) bool numpy).
    """
    crops = []
    for im, m in zip(images, masks):
        im = np.asarray(im)
        m = np.asarray(m).astype(bool)
        if im.ndim == 2:
            im, m = im[None], m[None]
        sl = bounding_box(m)
        crops.append((im[sl], m[sl]))
    shape = np.max([c[0].shape for c in crops], axis=0)
    mult = (multiple,) * 3 if isinstance(multiple, int) else tuple(multiple)
    if canvas is None:
        canvas = [1 if s == 1 else _round_up(s, k) for s, k in zip(shape, mult)]
    canvas = tuple(int(c) for c in canvas)
    if any(s > c for s, c in zip(shape, canvas)):
        raise ValueError(f"canvas {canvas} smaller than the largest ROI box {tuple(shape)}")
    out_i = np.zeros((len(crops),) + canvas, np.float64)
    out_m = np.zeros((len(crops),) + canvas, bool)
    for b, (im, m) in enumerate(crops):
        sl = tuple(slice(0, s) for s in im.shape)
        out_i[(b,) + sl] = im
        out_m[(b,) + sl] = m
    return out_i, out_m


def auto_n_bins(images, masks, bin_width: float, multiple: int = 8) -> int:
    """Smallest multiple of ``multiple`` covering every ROI's fixed-width bins (host side)."""
    need = 1
    for i, (im, m) in enumerate(zip(images, masks)):
        v = np.asarray(im)[np.asarray(m).astype(bool)].astype(np.float64)
        if not v.size:
            raise ValueError(f"ROI {i}: empty ROI")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"ROI {i}: ROI contains non-finite values")
        need = max(need, n_bins_for_width(float(v.min()), float(v.max()), float(bin_width)))
    return _round_up(need, multiple)


# Cost per packed ROI voxel / cost per canvas voxel, end to end (host work included), measured with
# benchmarks/radiomics_throughput.py --dense on 2 CPU cores: 12 for 7 small 3-D ROIs (1.3 us per
# packed voxel, 0.10 us per canvas voxel), 5 for 8 whole-brain-sized ROIs filling half their box
# (1.0 and 0.21 us). Packed wins when the ROIs fill less than ~1/6 of the common canvas.
PACKED_VOXEL_COST = 6.0


def _cheaper_layout(masks, multiple: int) -> str:
    """``"packed"`` unless the ROIs fill their common (rounded) canvas densely enough that
    padding every ROI to it costs less than the packed layout's per-voxel overhead."""
    boxes = []
    for i, m in enumerate(masks):
        try:
            boxes.append(roi_box(m))
        except ValueError as e:
            raise ValueError(f"ROI {i}: {e}") from None
    boxes = np.array(boxes)
    canvas = [1 if s == 1 else _round_up(s, multiple) for s in boxes.max(axis=0)]
    n_vox = sum(int(np.count_nonzero(m)) for m in masks)
    return "packed" if PACKED_VOXEL_COST * n_vox < len(masks) * math.prod(canvas) else "canvas"


def extract(images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray], *, label: int | None = 1,
            bin_width: float | None = 25.0, bin_count: int | None = None, force2d: bool = False,
            voxel_array_shift: float = 0.0, spacings=None, temperature=None,
            classes: Sequence[str] = ("firstorder", "glcm", "glrlm"), multiple: int = 8,
            n_bins: int | None = None, layout: str = "auto") -> dict[str, np.ndarray]:
    """Features of ROIs of any sizes (host-side convenience, one jit-compiled call).

    Args:
      images: sequence of (D, H, W) or (H, W) arrays. label_maps: same shapes; ROI = ``== label``
        (``label=None``: ROI = non-zero, e.g. boolean masks).
      spacings: sequence of per-image spacings, or None.
      temperature: ``None`` (hard, PyRadiomics) or a positive float (soft; canvas layout).
      layout: ``"packed"`` (hard mode only: all ROI voxels in one list, cost proportional to the
        ROI voxels, :mod:`phyjax.radiomics.packed`), ``"canvas"`` (every ROI cropped and padded
        to one canvas, ``jit(vmap(extract_features))``), or ``"auto"``: canvas in soft mode; in
        hard mode packed unless the ROIs fill the common canvas densely (e.g. whole-brain masks
        of similar size), where padding costs less than packing (``PACKED_VOXEL_COST``). Both
        layouts give the same features (float64 round-off).
      multiple: canvas sizes are rounded up to a multiple of this (canvas layout).
      Remaining arguments as in :class:`RadiomicsConfig`; ``n_bins`` defaults to
      :func:`auto_n_bins` (fixed width) or ``bin_count``.
    Returns:
      dict name -> numpy (B,) array, in the order of ``images``.
    Raises:
      ValueError: unknown layout, soft mode with the packed layout, an empty ROI, mismatched
        shapes.
    """
    if layout not in ("auto", "packed", "canvas"):
        raise ValueError(f"layout must be 'auto', 'packed' or 'canvas', got {layout!r}")
    if layout == "packed" and temperature is not None:
        raise ValueError("the packed layout computes hard features only; use layout='canvas' "
                         "for soft mode")
    masks = [np.asarray(lm) != 0 if label is None else np.asarray(lm) == label for lm in label_maps]
    if layout == "auto":
        layout = "canvas" if temperature is not None else _cheaper_layout(masks, multiple)
    if bin_count is not None:
        bin_width = None
        n_bins = bin_count
    elif n_bins is None:
        n_bins = auto_n_bins(images, masks, bin_width, multiple)
    unknown = set(classes) - set(_CLASSES)
    if unknown:
        raise ValueError(f"unknown feature classes {sorted(unknown)}; known: {sorted(_CLASSES)}")
    if layout == "packed":
        packed = pack(images, masks, spacings=spacings, force2d=force2d)
        return packed_features(packed, n_bins=n_bins, bin_width=bin_width, bin_count=bin_count,
                               voxel_array_shift=voxel_array_shift, classes=tuple(classes))
    max_vox = max(int(np.count_nonzero(m)) for m in masks)
    config = RadiomicsConfig(bin_width=bin_width, bin_count=bin_count, n_bins=n_bins,
                             force2d=force2d, voxel_array_shift=voxel_array_shift,
                             classes=tuple(classes), max_voxels=1 << max(0, (max_vox - 1).bit_length()))
    xb, mb = crop_and_pad(images, masks, multiple)
    sp = None if spacings is None else np.asarray(spacings, np.float64)
    res = extract_batch(xb, mb, config, sp, temperature)
    return {k: np.asarray(v) for k, v in res.items()}


def extract_files(image_paths: Sequence[str | os.PathLike], mask_paths: Sequence[str | os.PathLike],
                  **kwargs) -> dict[str, np.ndarray]:
    """:func:`extract` on NIfTI (``.nii[.gz]``) or NRRD files; keyword arguments as there."""
    images, labels, spacings = [], [], []
    for ip, mp in zip(image_paths, mask_paths):
        im, sp = read_image(ip)
        lm, _ = read_image(mp)
        if lm.shape != im.shape:
            raise ValueError(f"{mp}: mask shape {lm.shape} != image shape {im.shape}")
        images.append(im)
        labels.append(lm)
        spacings.append(sp)
    return extract(images, labels, spacings=spacings, **kwargs)


def as_table(features: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """(names, matrix (B, F)) from a feature dict."""
    names = list(features)
    return names, np.stack([np.asarray(features[n]) for n in names], axis=-1)
