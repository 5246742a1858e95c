"""Read a BIDS(-like) folder of T1w scans with sidecars into :class:`Scan` records.

Layout (the one phyjax writes for its default data, and the common case of a
user's data)::

    root/sub-<label>/[ses-<site>/]anat/sub-<label>[_ses-<site>]_T1w.nii.gz (+ .json)
    root/derivatives/<pipeline>/sub-<label>/anat/sub-<label>_desc-brain_mask.nii.gz

The site of a scan is its ``ses-`` label when there is one, else
``InstitutionName``/``ManufacturersModelName`` from the sidecar.  A scan
without a readable sidecar, or whose sidecar lacks what its sequence needs, is
an error naming the file; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

from phyjax.data.nifti import InputError
from phyjax.data.sidecar import protocol_for, read_sidecar, sidecar_path
from phyjax.physics.sequences import Protocol

_ENTITY = re.compile(r"(sub|ses|acq|run)-([a-zA-Z0-9]+)")


@dataclasses.dataclass(frozen=True)
class Scan:
    """One T1w scan: where it is, who and where it was acquired, and how."""

    subject: str
    site: str
    path: str
    protocol: Protocol
    mask_path: str | None = None


def entities(filename: str) -> dict[str, str]:
    """BIDS entities of a file name, e.g. ``{"sub": "01", "ses": "siteA"}``."""
    return dict(_ENTITY.findall(os.path.basename(filename)))


def _find_mask(root: str, subject: str, site: str | None) -> str | None:
    patterns = []
    if site:
        patterns.append(f"derivatives/*/sub-{subject}/ses-{site}/anat/*desc-brain_mask.nii*")
    patterns.append(f"derivatives/*/sub-{subject}/anat/*desc-brain_mask.nii*")
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(root, pattern)))
        if hits:
            return hits[0]
    return None


def scan_bids(root: str, suffix: str = "T1w") -> list[Scan]:
    """All ``*_<suffix>.nii[.gz]`` scans under ``root`` (derivatives excluded), sorted.

    Raises:
      InputError: ``root`` missing, no scans found, or a scan's sidecar is bad.
    """
    if not os.path.isdir(root):
        raise InputError(f"{root}: BIDS folder not found.")
    paths = sorted(glob.glob(os.path.join(root, "sub-*", "**", f"*_{suffix}.nii*"), recursive=True))
    if not paths:
        raise InputError(f"{root}: no sub-*/.../*_{suffix}.nii[.gz] files found.")
    scans = []
    for path in paths:
        ent = entities(path)
        if "sub" not in ent:
            raise InputError(f"{path}: file name has no sub-<label> entity.")
        protocol = protocol_for(path)
        site = ent.get("ses")
        if site is None:
            sidecar = read_sidecar(sidecar_path(path))
            site = "_".join(str(sidecar[k]).strip() for k in
                            ("InstitutionName", "ManufacturersModelName")
                            if sidecar.get(k) is not None and str(sidecar[k]).strip()) or None
        if site is None:
            raise InputError(f"{path}: cannot tell the site (no ses- entity, no InstitutionName "
                             "or ManufacturersModelName in the sidecar).")
        scans.append(Scan(subject=ent["sub"], site=site, path=path, protocol=protocol,
                          mask_path=_find_mask(root, ent["sub"], ent.get("ses"))))
    return scans
