"""Multi-site volumes: loading (in memory, or streamed to disk) and intensity normalization.

Volumes of one dataset share one grid (resampled onto a common RAS grid when the scans' grids
differ), so their axial slices stack.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from phyjax.data import geometry
from phyjax.data.bids import Scan
from phyjax.data.nifti import InputError, load_volume
from phyjax.data.store import load_array, save_array
from phyjax.physics.sequences import Protocol


def _array(name: str, doc: str) -> property:
    """An array attribute held in memory, or in a ``.npy`` file read at each access."""

    def get(self):
        value = self._arrays.get(name)
        return load_array(value) if isinstance(value, str) else value

    def set(self, value):
        self._arrays[name] = value

    return property(get, set, doc=doc)


class Volume:
    """One scan: its normalized image and mask ``(X, Y, Z)``, and maps if known.

    The arrays live in memory, or -- after :meth:`to_disk` -- in ``.npy`` files read at each
    access, so a dataset's memory does not grow with its number of scans.
    """

    image = _array("image", "normalized intensities (see :func:`normalize`)")
    mask = _array("mask", "bool brain (ROI) mask")
    t1 = _array("t1", "T1 map (s, at protocol.field_strength), or None")
    m0 = _array("m0", "M0 (PD fraction) map, or None")

    def __init__(self, subject: str, site: str, protocol: Protocol | None, image: np.ndarray,
                 mask: np.ndarray, path: str, t1: np.ndarray | None = None,
                 m0: np.ndarray | None = None, affine: np.ndarray | None = None,
                 resampled: bool = False, slice_thickness_mm: float | None = None,
                 slice_axis: int = 2):
        self.subject, self.site, self.path = subject, site, path
        # the sidecar's SliceThickness (mm; None: not given) and the axis of ``image`` nearest
        # to the acquisition's slice direction (the file's third voxel axis, as dcm2niix writes)
        self.slice_thickness_mm, self.slice_axis = slice_thickness_mm, int(slice_axis)
        self.protocol = protocol        # None: incomplete in the sidecar (physics-free only)
        self.affine = affine            # voxel -> world (mm) of ``image`` (None: the file's)
        self.resampled = resampled      # on a common grid, not the file's own (native_image)
        self._arrays: dict = {}
        self.image, self.mask, self.t1, self.m0 = image, mask, t1, m0

    def __repr__(self) -> str:
        where = "disk" if isinstance(self._arrays["image"], str) else "memory"
        return f"Volume({self.subject!r}, {self.site!r}, {self.protocol}, {self.path!r}, {where})"

    def to_disk(self, directory: str) -> "Volume":
        """Move the arrays into ``directory`` (one ``.npy`` each); returns ``self``."""
        for name, value in self._arrays.items():
            if value is not None and not isinstance(value, str):
                self._arrays[name] = save_array(directory, f"{self.subject}_{self.site}_{name}",
                                                value)
        return self

    def grid_affine(self) -> np.ndarray:
        """Voxel -> world (mm) of ``image``."""
        return np.asarray(self.affine if self.affine is not None else nib.load(self.path).affine)

    def slice_fwhm(self) -> float | None:
        """The slice profile's FWHM in voxels of ``image`` along :attr:`slice_axis`, as
        :func:`phyjax.physics.scanner.slice_profile` takes it: ``SliceThickness`` (the
        profile's FWHM, as MR quality assurance defines slice thickness: AAPM Report 100, 2010,
        sec. 4.3) over the voxel size along that axis, 0 where the slice is no thicker than
        the voxel (its own extent is then the profile), None where the sidecar gives no
        thickness."""
        if self.slice_thickness_mm is None:
            return None
        return profile_fwhm(self.slice_thickness_mm,
                            geometry.zooms(self.grid_affine())[self.slice_axis])

    @property
    def voxel_mm3(self) -> float:
        """Volume of one voxel of ``image`` (mm^3): |det| of the affine its geometry uses
        (:meth:`grid_affine`; the file's sform where it has one, not the header's zooms, which
        follow the qform and differ from it after e.g. FSL processing)."""
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


def load_scans(scans: list[Scan], maps_for=None, voxel_mm: float = 0.0,
               store: str | None = None) -> dict[str, dict[str, Volume]]:
    """Load and normalize scans into ``{subject: {site: Volume}}``, on one grid.

    Each scan's brain mask is matched to it by world coordinates
    (:func:`phyjax.data.geometry.mask_on_grid`).  When every scan shares one axis-aligned RAS
    grid (axial slices = last axis, as harmonize mode resamples its input) and ``voxel_mm`` is 0,
    volumes stay on it; otherwise (mixed matrix sizes, voxel sizes or orientations, a non-RAS
    grid, or a requested ``voxel_mm``) each is resampled onto an axis-aligned RAS grid
    of voxel ``voxel_mm`` (0: the median voxel size of the scans) and one common shape, centred
    on its subject's brain -- one grid for all of a subject's scans, so that its sessions compare
    voxel by voxel (``Volume.resampled``; :func:`native_image` brings results back).

    Two passes, one scan in memory at a time: headers and masks decide the grid, then each scan
    is loaded, resampled and normalized -- and, with ``store`` (a folder), written there
    (:meth:`Volume.to_disk`), so memory does not grow with the number of scans.

    Args:
      scans: from :func:`phyjax.data.bids.scan_bids`.
      maps_for: optional ``f(subject, field_strength) -> (t1, m0)`` arrays on the scans' grid
        (ground truth for the default dataset).
    Raises InputError: a scan without a brain mask, or a mask that misses its image.
    """
    headers = [_header(scan) for scan in scans]        # (shape, affine) without the voxels
    first = headers[0]
    if not voxel_mm and geometry.is_ras(first[1]) and all(
            geometry.same_grid(h[0], h[1], first[0], first[1]) for h in headers):
        grids = [None] * len(scans)
    else:
        voxel_mm = voxel_mm or float(np.median([_voxel_size(h[1]) for h in headers]))
        boxes = [geometry.world_box(_mask(scan, *h), h[1]) for scan, h in zip(scans, headers)]
        # One grid per subject, around the union of its scans' brains: its sessions (assumed
        # co-registered in world space) then compare voxel by voxel, with no sub-voxel shift
        # from boxes that differ by a fraction of a voxel.
        subjects = list(dict.fromkeys(scan.subject for scan in scans))
        union = {s: (np.min([b[0] for b, sc in zip(boxes, scans) if sc.subject == s], axis=0),
                     np.max([b[1] for b, sc in zip(boxes, scans) if sc.subject == s], axis=0))
                 for s in subjects}
        shape, affines = geometry.common_grid_of_boxes([union[s] for s in subjects], voxel_mm)
        grid_of = dict(zip(subjects, affines))
        grids = [(shape, grid_of[scan.subject]) for scan in scans]
    out: dict[str, dict[str, Volume]] = {}
    for scan, (_, affine), grid in zip(scans, headers, grids):
        native_affine = affine
        image, _ = load_volume(scan.path)
        mask = _mask(scan, image.shape, affine)
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
        try:
            normalized = normalize(image, mask)
        except InputError as exc:   # name the scan (normalize sees arrays only)
            raise InputError(f"{scan.path}: {exc}") from exc
        vol = Volume(subject=scan.subject, site=scan.site, protocol=protocol,
                     image=normalized, mask=mask, path=scan.path, affine=affine,
                     resampled=grid is not None,
                     slice_thickness_mm=scan.reading.slice_thickness_mm,
                     slice_axis=slice_axis(native_affine))
        if maps:
            vol.t1, vol.m0 = maps
        out.setdefault(scan.subject, {})[scan.site] = vol.to_disk(store) if store else vol
    return out


def _header(scan: Scan) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of a scan's NIfTI from its header (InputError naming an unreadable
    file; the voxels are checked when loaded)."""
    try:
        img = nib.load(scan.path)
    except Exception as exc:  # nibabel raises several types for a corrupt file
        raise InputError(f"{scan.path}: not a readable NIfTI ({exc}).") from exc
    return tuple(img.shape[:3]), np.asarray(img.affine, np.float64)


def _mask(scan: Scan, shape, affine) -> np.ndarray:
    """The scan's ROI mask on its image grid (matched by world coordinates)."""
    if scan.mask_path is None:
        raise InputError(f"{scan.path}: no ROI mask found (derivatives/*/sub-{scan.subject}/"
                         "[ses-*/]anat/*desc-<label>_mask.nii.gz; data.mask_label).")
    m, m_img = load_volume(scan.mask_path)
    return geometry.mask_on_grid(m, m_img.affine, shape, affine,
                                 source=f"{scan.mask_path} (mask of {scan.path})")


def profile_fwhm(thickness_mm: float, voxel_mm: float) -> float:
    """A slice profile of FWHM ``thickness_mm`` in voxels of ``voxel_mm``
    (:func:`phyjax.physics.scanner.slice_profile`'s unit): their ratio, or 0 where the slice is
    no thicker than the voxel (the voxel's own extent is then the profile)."""
    ratio = float(thickness_mm) / float(voxel_mm)
    return ratio if ratio > 1.0 + 1e-3 else 0.0


def slice_axis(affine) -> int:
    """The world axis (0 R-L, 1 A-P, 2 S-I) that the third voxel axis of ``affine`` -- the
    slice (2-D) or partition (3-D) direction of a dcm2niix NIfTI -- is assigned to
    (:func:`~phyjax.data.geometry.world_axes`, as the working grid's voxel sizes are), which is
    also that direction's voxel axis on an axis-aligned RAS grid (sagittal 0, coronal 1,
    axial 2)."""
    return geometry.world_axes(affine).index(2)


def _voxel_size(affine) -> float:
    return float(np.mean(geometry.zooms(affine)))


def native_image(volume: Volume, data: np.ndarray):
    """``(data on the volume's own input grid, the input's nibabel image)``: its values inside
    the brain mask resampled back (:func:`~phyjax.data.geometry.resample_inside`: no blending
    with the zeros outside at the brain's edge) and masked by the resampled brain mask when the
    volume was resampled, else as is."""
    native = nib.load(volume.path)
    if not volume.resampled:
        return data, native
    back = geometry.resample_inside(data, volume.mask, volume.affine, native.affine,
                                    native.shape[:3])
    inside = geometry.to_native(volume.mask.astype(np.float32), volume.affine, native) > 0.5
    return np.where(inside, back, 0.0).astype(np.float32), native
