"""World-coordinate geometry: masks matched to images, mixed grids on one common RAS grid, and back.

Scanners write images with different matrix sizes, voxel sizes and orientations; a mask may come
on another grid than its image.  Everything here goes through the affines (voxel -> world mm), never
array indices: a mask is resampled onto its image's grid, and scans of mixed grids are resampled onto
axis-aligned RAS grids of one voxel size and one shape (each centred on its own brain), so that their
axial slices (last axis) stack; results go back onto each input's own grid and affine.
Resampling is nilearn's (:func:`nilearn.image.resample_img`, ``interpolation="continuous"``: a
third-order spline, which can over- and undershoot by a few percent at a step; masks thresholded
at 0.5).
"""

from __future__ import annotations

import itertools
import warnings

import nibabel as nib
import numpy as np
from nilearn.image import resample_img
from nilearn.image.resampling import BoundingBoxError
from scipy import ndimage

from phyjax.data.nifti import InputError

#: voxels of margin around the largest brain on the common grid
MARGIN = 2


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = 1e-3) -> bool:
    """Equal shapes and affines (to ``atol`` mm)."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b, atol=atol)


def is_ras(affine, atol: float = 1e-6) -> bool:
    """Axis-aligned with positive zooms: array axes are R, A, S (axial slices = last axis)."""
    m = np.asarray(affine, np.float64)[:3, :3]
    return bool(np.all(np.abs(m - np.diag(np.diag(m))) <= atol) and np.all(np.diag(m) > 0))


def zooms(affine) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the three array axes."""
    return tuple(round(float(z), 6) for z in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def world_axes(affine) -> tuple[int, int, int]:
    """The array axis most aligned with each world axis R, A, S: the assignment of array to
    world axes that maximizes the product of the direction cosines (one array axis per world
    axis, also for an oblique grid)."""
    m = np.asarray(affine, np.float64)[:3, :3]
    cosines = np.abs(m) / np.linalg.norm(m, axis=0)          # [world axis, array axis]
    return max(itertools.permutations(range(3)),
               key=lambda p: np.prod([cosines[i, p[i]] for i in range(3)]))


def world_zooms(affine) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the world axes R, A, S: each world axis takes the size of
    the array axis most aligned with it (:func:`world_axes`), so a sagittal or permuted,
    anisotropic grid keeps its resolution on the right axes.  :func:`zooms` gives them in
    array-axis order."""
    norms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return tuple(round(float(norms[a]), 6) for a in world_axes(affine))


def fill_outside(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``data`` with every voxel outside ``mask`` given the value of its nearest mask voxel
    (Euclidean distance transform), so that interpolation at the mask's edge blends brain with
    brain instead of with the background or zeros.  ``data``: the mask's shape, optionally with
    trailing channel axes (one distance transform fills them all).  Returns ``data`` unchanged
    when the mask is empty or full."""
    mask = np.asarray(mask, bool)
    if mask.all() or not mask.any():
        return np.asarray(data)
    index = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    return np.asarray(data)[tuple(index)]


def resample_inside(data: np.ndarray, mask: np.ndarray, affine, target_affine, target_shape
                    ) -> np.ndarray:
    """:func:`resample` of the values inside ``mask`` only (:func:`fill_outside` first): a
    voxel of the target grid near the mask's edge gets brain values, not a blend with the
    zeros or skull around it.  ``data`` may have one trailing channel axis (e.g. tissue
    probabilities), each channel resampled after one shared fill."""
    filled = fill_outside(data, mask)
    if filled.ndim == 3:
        return resample(filled, affine, target_affine, target_shape)
    return np.stack([resample(filled[..., c], affine, target_affine, target_shape)
                     for c in range(filled.shape[-1])], -1)


def resample(data: np.ndarray, affine, target_affine, target_shape) -> np.ndarray:
    """``data`` (on ``affine``) resampled (cubic spline) onto ``target_affine``/``target_shape``
    (0 outside the source's field of view)."""
    img = nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, np.float64))
    with warnings.catch_warnings():  # binary masks are resampled smoothly, then thresholded
        warnings.filterwarnings("ignore", message="Resampling binary images")
        try:
            out = resample_img(img, target_affine=np.asarray(target_affine, np.float64),
                               target_shape=tuple(int(n) for n in target_shape[:3]),
                               interpolation="continuous", force_resample=True,
                               copy_header=True)
        except BoundingBoxError:   # nilearn refuses grids that do not overlap at all: all 0
            return np.zeros(tuple(int(n) for n in target_shape[:3]), np.float32)
    return np.asarray(out.get_fdata(), np.float32)


def mask_on_grid(mask: np.ndarray, mask_affine, shape, affine, source: str = "mask") -> np.ndarray:
    """A mask matched to an image grid by world coordinates (resampled if its grid differs).

    Values in [0, 1] (a binary mask, a probability map or a sum of them) are kept where > 0.5;
    a mask with larger values (0/255, percentages, label images) is binarized (> 0) first.

    Raises InputError naming ``source`` when no mask voxel falls inside the image.
    """
    mask = np.asarray(mask, np.float32)
    if mask.size and np.nanmax(mask) > 1.0 + 1e-3:
        # a 0/255 (or percent, or label) mask: interpolating its raw values and keeping > 0.5
        # would grow it by up to a voxel on every side
        mask = (mask > 0).astype(np.float32)
    if same_grid(mask.shape, mask_affine, shape, affine):
        out = mask > 0.5
    else:
        out = resample(mask, mask_affine, affine, shape) > 0.5
    if not out.any():
        raise InputError(f"{source}: the brain mask does not overlap its image in world "
                         "coordinates (empty after matching the grids).")
    return out


def world_box(mask: np.ndarray, affine) -> tuple[np.ndarray, np.ndarray]:
    """World (mm) corners ``(low, high)`` of the bounding box of a mask's voxels."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])
    world = (np.asarray(affine) @ corners.T).T[:, :3]
    return world.min(0), world.max(0)


def common_grid(masks, affines, voxel_mm: float) -> tuple[tuple[int, int, int], list[np.ndarray]]:
    """One shape and, per scan, an axis-aligned RAS affine of voxel ``voxel_mm`` centred on its
    brain (the world bounding box of its mask), large enough for the largest brain + margin."""
    return common_grid_of_boxes([world_box(m, a) for m, a in zip(masks, affines)], voxel_mm)


def common_grid_of_boxes(boxes, voxel_mm: float
                         ) -> tuple[tuple[int, int, int], list[np.ndarray]]:
    """:func:`common_grid` from the brains' world boxes ``[(low, high), ...]``."""
    extent = np.max([hi - lo for lo, hi in boxes], axis=0)
    grids = [box_grid(lo, hi, (voxel_mm,) * 3, extent) for lo, hi in boxes]
    return grids[0][0], [a for _, a in grids]


def box_grid(lo, hi, zooms_mm, extent) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of an axis-aligned RAS grid of voxel ``zooms_mm`` covering ``extent``
    mm (+ :data:`MARGIN` voxels) centred on the box ``[lo, hi]``."""
    z = np.asarray(zooms_mm, np.float64)
    shape = tuple(int(n) for n in np.ceil(np.asarray(extent) / z).astype(int) + 1 + 2 * MARGIN)
    affine = np.diag([*z, 1.0])
    affine[:3, 3] = (np.asarray(lo) + np.asarray(hi)) / 2 - z * (np.asarray(shape) - 1) / 2
    return shape, affine


def to_native(data: np.ndarray, grid_affine, native: nib.Nifti1Image) -> np.ndarray:
    """``data`` on a common-grid affine resampled back onto the grid of the ``native`` image."""
    return resample(data, grid_affine, native.affine, native.shape[:3])
