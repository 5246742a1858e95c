"""Multi-site volumes in memory: loading, intensity normalization, subject splits, slices.

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


def split_subjects(subjects, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split *by subject* into ``(train, test)``, both sorted and disjoint.

    Raises ValueError unless ``0 < n_test < len(subjects)``.
    """
    subjects = sorted(set(subjects))
    if not 0 < n_test < len(subjects):
        raise ValueError(f"n_test={n_test} must be between 1 and {len(subjects) - 1} "
                         f"for {len(subjects)} subjects.")
    order = np.random.default_rng(seed).permutation(len(subjects))
    test = sorted(subjects[i] for i in order[:n_test])
    train = sorted(s for s in subjects if s not in test)
    return train, test


def brain_slices(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices of axial slices (last axis) whose brain area is >= ``min_fraction`` of the largest."""
    area = mask.reshape(-1, mask.shape[-1]).sum(0)
    return np.flatnonzero(area >= min_fraction * area.max())


def pad_to_multiple(shape2d, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding that makes both in-plane sizes multiples of ``multiple``."""
    pads = []
    for n in shape2d:
        total = (-n) % multiple
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def to_slices(volume: np.ndarray, pads) -> np.ndarray:
    """``(X, Y, Z)`` -> ``(Z, X', Y')`` padded axial slices."""
    padded = np.pad(volume, (pads[0], pads[1], (0, 0)))
    return np.moveaxis(padded, -1, 0)


def with_context(slices: np.ndarray, context: int) -> np.ndarray:
    """``(Z, H, W)`` -> ``(Z, H, W, 2 context + 1)``: each slice with its neighbours as channels.

    Neighbours beyond the volume repeat the edge slice (2.5-D input).
    """
    n = slices.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
    return np.moveaxis(slices[idx], 1, -1)


def from_slices(slices: np.ndarray, pads) -> np.ndarray:
    """Inverse of :func:`to_slices`: ``(Z, X', Y')`` -> ``(X, Y, Z)``."""
    vol = np.moveaxis(np.asarray(slices), 0, -1)
    (x0, x1), (y0, y1) = pads
    return vol[x0:vol.shape[0] - x1, y0:vol.shape[1] - y1]
