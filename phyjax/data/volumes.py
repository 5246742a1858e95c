"""Multi-site volumes in memory: loading and intensity normalization.

Volumes of one dataset share one grid (resampled onto a common RAS grid when the scans' grids
differ), so their axial slices stack.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np

from phyjax.data import geometry
from phyjax.data.bids import Scan
from phyjax.data.nifti import InputError, load_volume
from phyjax.physics.sequences import Protocol


@dataclasses.dataclass
class Volume:
    """One scan in memory.  ``image`` and ``mask`` are ``(X, Y, Z)``; maps too, if known."""

    subject: str
    site: str
    protocol: Protocol | None   # None: incomplete in the sidecar (physics-free methods only)
    image: np.ndarray           # normalized intensities (see :func:`normalize`)
    mask: np.ndarray            # bool brain mask
    path: str
    t1: np.ndarray | None = None  # s, at protocol.field_strength
    m0: np.ndarray | None = None  # PD fraction
    affine: np.ndarray | None = None  # voxel -> world (mm) of ``image`` (None: the file's)
    resampled: bool = False     # on a common grid, not the file's own (see :func:`native_image`)

    def grid_affine(self) -> np.ndarray:
        """Voxel -> world (mm) of ``image``."""
        return np.asarray(self.affine if self.affine is not None else nib.load(self.path).affine)

    @property
    def voxel_mm3(self) -> float:
        """Volume of one voxel of ``image`` (mm^3): the file's zooms, or the common grid's."""
        if not self.resampled:
            return float(np.prod(nib.load(self.path).header.get_zooms()[:3]))
        return float(abs(np.linalg.det(self.grid_affine()[:3, :3])))


def normalize(image: np.ndarray, mask: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Divide by the ``percentile`` of the in-mask intensities (removes receive gain).

    Raises InputError if the mask is empty or the reference intensity is not positive.
    """
    values = image[mask]
    if values.size == 0:
        raise InputError("empty brain mask: cannot normalize intensities.")
    ref = float(np.percentile(values, percentile))
    if not ref > 0:
        raise InputError(f"the {percentile}th in-mask percentile is {ref}; image is empty or negative.")
    return (image / ref).astype(np.float32)


def load_scans(scans: list[Scan], maps_for=None, voxel_mm: float = 0.0
               ) -> dict[str, dict[str, Volume]]:
    """Load and normalize scans into ``{subject: {site: Volume}}``, on one grid.

    Each scan's brain mask is matched to it by world coordinates
    (:func:`phyjax.data.geometry.mask_on_grid`).  When every scan shares one axis-aligned RAS
    grid (axial slices = last axis, as harmonize mode resamples its input) and ``voxel_mm`` is 0,
    volumes stay on it; otherwise (mixed matrix sizes, voxel sizes or orientations, a non-RAS
    grid, or a requested ``voxel_mm``) each is resampled onto an axis-aligned RAS grid
    of voxel ``voxel_mm`` (0: the median voxel size of the scans) and one common shape, centred
    on its brain (``Volume.resampled``; :func:`native_image` brings results back).

    Args:
      scans: from :func:`phyjax.data.bids.scan_bids`.
      maps_for: optional ``f(subject, field_strength) -> (t1, m0)`` arrays on the scans' grid
        (ground truth for the default dataset).
    Raises InputError: a scan without a brain mask, or a mask that misses its image.
    """
    loaded, mask_files = [], {}
    for scan in scans:
        image, img = load_volume(scan.path)
        if scan.mask_path is None:
            raise InputError(f"{scan.path}: no ROI mask found (derivatives/*/sub-{scan.subject}/"
                             "[ses-*/]anat/*desc-<label>_mask.nii.gz; data.mask_label).")
        if scan.mask_path not in mask_files:
            mask_files[scan.mask_path] = load_volume(scan.mask_path)
        m, m_img = mask_files[scan.mask_path]
        mask = geometry.mask_on_grid(m, m_img.affine, image.shape, img.affine,
                                     source=f"{scan.mask_path} (mask of {scan.path})")
        loaded.append((scan, image, np.asarray(img.affine, np.float64), mask))
    first = loaded[0]
    if not voxel_mm and geometry.is_ras(first[2]) and all(
            geometry.same_grid(x[1].shape, x[2], first[1].shape, first[2]) for x in loaded):
        grids = [None] * len(loaded)
    else:
        voxel_mm = voxel_mm or float(np.median([_voxel_size(x[2]) for x in loaded]))
        shape, affines = geometry.common_grid([x[3] for x in loaded], [x[2] for x in loaded],
                                              voxel_mm)
        grids = [(shape, a) for a in affines]
    out: dict[str, dict[str, Volume]] = {}
    for (scan, image, affine, mask), grid in zip(loaded, grids):
        protocol = None  # incomplete, or MP2RAGE (read, but no closed-form Protocol)
        if scan.reading.status in ("ok", "assumed") and scan.reading.family != "mp2rage":
            protocol = scan.protocol
        maps = maps_for(scan.subject, float(protocol.field_strength)) if maps_for else None
        if grid is not None:
            shape, target = grid
            image = geometry.resample(image, affine, target, shape)
            mask = geometry.resample(mask, affine, target, shape) > 0.5
            maps = maps and tuple(geometry.resample(x, affine, target, shape) for x in maps)
            affine = target
        vol = Volume(subject=scan.subject, site=scan.site, protocol=protocol,
                     image=normalize(image, mask), mask=mask, path=scan.path, affine=affine,
                     resampled=grid is not None)
        if maps:
            vol.t1, vol.m0 = maps
        out.setdefault(scan.subject, {})[scan.site] = vol
    return out


def _voxel_size(affine) -> float:
    return float(np.mean(geometry.zooms(affine)))


def native_image(volume: Volume, data: np.ndarray):
    """``(data on the volume's own input grid, the input's nibabel image)``: resampled back
    (and masked by the resampled brain mask) when the volume was resampled, else as is."""
    native = nib.load(volume.path)
    if not volume.resampled:
        return data, native
    back = geometry.to_native(data, volume.affine, native)
    inside = geometry.to_native(volume.mask.astype(np.float32), volume.affine, native) > 0.5
    return np.where(inside, back, 0.0).astype(np.float32), native
