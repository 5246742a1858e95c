"""Multi-site volumes in memory: loading and intensity normalization.

All scans of one subject share the anatomy and brain mask (traveling-subject
design); the target protocol's scan is the ground truth of every other scan of
the same subject.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from phyjax.data.bids import Scan
from phyjax.data.nifti import InputError, load_volume
from phyjax.physics.sequences import Protocol


@dataclasses.dataclass
class Volume:
    """One scan in memory.  ``image`` and ``mask`` are ``(X, Y, Z)``; maps too, if known."""

    subject: str
    site: str
    protocol: Protocol
    image: np.ndarray           # normalized intensities (see :func:`normalize`)
    mask: np.ndarray            # bool brain mask
    path: str
    t1: np.ndarray | None = None  # s, at protocol.field_strength
    m0: np.ndarray | None = None  # PD fraction


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


def load_scans(scans: list[Scan], maps_for=None) -> dict[str, dict[str, Volume]]:
    """Load and normalize scans into ``{subject: {site: Volume}}``.

    Args:
      scans: from :func:`phyjax.data.bids.scan_bids`.
      maps_for: optional ``f(subject, field_strength) -> (t1, m0, mask)`` arrays
        (ground truth for the default dataset).
    Raises InputError: a scan without a brain mask, or an image/mask shape mismatch.
    """
    out: dict[str, dict[str, Volume]] = {}
    masks: dict[str, np.ndarray] = {}
    for scan in scans:
        image, _ = load_volume(scan.path)
        if scan.mask_path is None:
            raise InputError(f"{scan.path}: no brain mask found (derivatives/*/sub-{scan.subject}/"
                             "anat/*desc-brain_mask.nii.gz).")
        if scan.mask_path not in masks:
            masks[scan.mask_path] = load_volume(scan.mask_path)[0] > 0.5
        mask = masks[scan.mask_path]
        if mask.shape != image.shape:
            raise InputError(f"{scan.path}: image shape {image.shape} != mask shape {mask.shape} "
                             f"({scan.mask_path}).")
        vol = Volume(subject=scan.subject, site=scan.site, protocol=scan.protocol,
                     image=normalize(image, mask), mask=mask, path=scan.path)
        if maps_for is not None:
            vol.t1, vol.m0 = maps_for(scan.subject, float(scan.protocol.field_strength))
        out.setdefault(scan.subject, {})[scan.site] = vol
    return out
