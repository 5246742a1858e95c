"""Read a BIDS(-like) folder of T1w scans with sidecars into :class:`Scan` records.

Layout (the one phyjax writes for its default data, and the common case of a
user's data)::

    root/sub-<label>/[ses-<site>/]anat/sub-<label>[_ses-<site>]_T1w.nii.gz (+ .json)
    root/derivatives/<pipeline>/sub-<label>/anat/sub-<label>_desc-brain_mask.nii.gz

The site of a scan is its ``ses-`` label when there is one, else
``InstitutionName``/``ManufacturersModelName`` from the sidecar.  Every sidecar is read by
:func:`phyjax.data.sidecar.read_protocol` (values a per-site table supplies fill its gaps);
:func:`scan_bids` refuses, before any work starts, a folder where any scan is unreadable,
incomplete, or repeats a subject/site pair, listing every problem at once; :func:`inspect`
reports them as rows of ``protocols.tsv`` instead.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os

from phyjax.data.atomic import atomic_open
from phyjax.data.nifti import InputError
from phyjax.data.sidecar import (Reading, read_protocol, read_sidecar, read_site_table,
                                 sidecar_path, site_label)
from phyjax.physics.sequences import Protocol

@dataclasses.dataclass(frozen=True)
class Scan:
    """One T1w scan: where it is, who and where it was acquired, and how it was read.

    ``reading`` holds every acquisition value with its origin and what is missing or assumed
    (:class:`~phyjax.data.sidecar.Reading`); ``protocol`` raises InputError while it is
    incomplete.
    """

    subject: str
    site: str
    path: str
    reading: Reading
    mask_path: str | None = None
    session: str = ""

    @property
    def protocol(self) -> Protocol:
        return self.reading.protocol()


def entities(filename: str) -> dict[str, str]:
    """The ``sub``, ``ses``, ``acq`` and ``run`` entities of a BIDS file name, e.g.
    ``{"sub": "01", "ses": "siteA"}`` (those it names; :func:`name_entities` gives every one)."""
    return {k: v for k, v in name_entities(filename).items() if k in ("sub", "ses", "acq", "run")}


#: ``space-`` labels of a mask on the scan's own grid (no entity: the usual native-space mask)
NATIVE_SPACES = ("", "orig", "T1w", "native", "individual")
#: entities that tell acquisitions of one session apart: a mask that names one must name the
#: scan's own (a ``run-1`` mask is not the ``run-2`` scan's)
MATCHED_ENTITIES = ("acq", "ce", "rec", "run", "echo", "part", "inv")


def name_entities(filename: str) -> dict[str, str]:
    """Every ``key-value`` entity of a BIDS file name (any key), e.g. ``space``, ``desc``."""
    stem = os.path.basename(filename).split(".")[0]
    return dict(part.split("-", 1) for part in stem.split("_") if "-" in part)


def _find_mask(root: str, scan_path: str, label: str = "brain") -> str | None:
    """The ``desc-<label>`` mask of the scan at ``scan_path``: in its session's folder, else its
    subject's; on the scan's own grid (no ``space-`` other than :data:`NATIVE_SPACES`); naming
    no other acquisition, run, ... than the scan's (:data:`MATCHED_ENTITIES`); of those, the one
    that names most of the scan's entities."""
    scan = name_entities(scan_path)
    subject, site = scan.get("sub"), scan.get("ses")
    patterns = []
    if site:
        patterns.append(f"derivatives/*/sub-{subject}/ses-{site}/anat/*desc-{label}_mask.nii*")
    patterns.append(f"derivatives/*/sub-{subject}/anat/*desc-{label}_mask.nii*")
    for pattern in patterns:
        candidates = []
        for hit in sorted(glob.glob(os.path.join(root, pattern))):
            mask = name_entities(hit)
            if mask.get("space", "") not in NATIVE_SPACES or mask.get("sub", subject) != subject:
                continue
            if mask.get("ses", site) != site or any(
                    k in mask and mask[k] != scan.get(k) for k in MATCHED_ENTITIES):
                continue
            candidates.append((sum(k in mask for k in MATCHED_ENTITIES), hit))
        if candidates:
            return max(candidates, key=lambda c: c[0])[1]   # ties: the first by name
    return None


def _read_scan(root: str, path: str, site_table, mask_label: str = "brain",
               site_field: str = "") -> tuple[Scan | None, str | None]:
    """``(scan, None)`` or ``(None, problem)`` for one image file."""
    ent = entities(path)
    if "sub" not in ent:
        return None, f"{path}: file name has no sub-<label> entity."
    json_path = sidecar_path(path)
    try:
        sidecar = read_sidecar(json_path)
    except InputError as exc:
        return None, str(exc)
    if site_field:
        value = sidecar.get(site_field)
        site = str(value).strip() if value is not None and str(value).strip() else None
        if site is None:
            return None, f"{json_path}: no {site_field!r} to name the site by (data.site_field)."
    else:
        site = ent.get("ses") or site_label(sidecar)
    if site is None:
        return None, (f"{path}: cannot tell the site (no ses- entity, no InstitutionName or "
                      "ManufacturersModelName in the sidecar).")
    reading = read_protocol(sidecar, json_path, site_values=(site_table or {}).get(site),
                            site_origin=f"site table ({site})")
    return Scan(subject=ent["sub"], site=site, path=path, reading=reading,
                mask_path=_find_mask(root, path, mask_label),
                session=ent.get("ses", "")), None


def scan_bids(root: str, suffix: str = "T1w", site_table=None, strict: bool = True, *,
              mask_label: str = "brain", site_field: str = "",
              require_protocols: bool = True) -> list[Scan]:
    """All ``*_<suffix>.nii[.gz]`` scans under ``root`` (derivatives excluded), sorted.

    Args:
      site_table: ``{site: {field: value}}`` (:func:`phyjax.data.sidecar.read_site_table`),
        filling values the sidecars lack; None: the folder's own :data:`SITE_TABLE` if any.
      strict: raise when any scan cannot be used (else return what could be read; problems are
        in each scan's ``reading``, and unreadable files are skipped -- for :func:`inspect`).
      mask_label: ROI masks are ``derivatives/*/sub-*/[ses-*/]anat/*desc-<label>_mask.nii*``.
      site_field: name the site by this sidecar field (e.g. ``Manufacturer``) instead of the
        ``ses-`` label.
      require_protocols: with False, scans whose protocol is incomplete (``missing``) are kept
        (their ``Scan.protocol`` raises; physics-free methods can still use them); implausible
        values (``error``) still stop.
    Raises:
      InputError: ``root`` missing or without scans; with ``strict``, one error listing every
        unusable scan (unreadable or incomplete sidecar, no site, repeated subject/site).
    """
    scans, problems = _scan(root, suffix, site_table, mask_label, site_field)
    blocking = ("error", "missing") if require_protocols else ("error",)
    if strict:
        problems += [f"{s.reading.source}: {s.reading.problems}." for s in scans
                     if s.reading.status in blocking]
        problems += duplicates(scans)
        if problems:
            raise InputError(f"{root}: {len(problems)} problem(s) before any work starts:\n  "
                             + "\n  ".join(problems))
    return scans


#: A dataset's own site table (``code/`` holds anything in BIDS): used when no table is given
SITE_TABLE = os.path.join("code", "site_parameters.tsv")


def dataset_site_table(root: str):
    """The site table a BIDS folder carries at :data:`SITE_TABLE`
    (:func:`~phyjax.data.sidecar.read_site_table`), or None."""
    path = os.path.join(root, SITE_TABLE)
    return read_site_table(path) if os.path.isfile(path) else None


def _scan(root, suffix, site_table, mask_label="brain", site_field=""):
    if not os.path.isdir(root):
        raise InputError(f"{root}: BIDS folder not found.")
    if site_table is None:
        site_table = dataset_site_table(root)
    paths = sorted(glob.glob(os.path.join(root, "sub-*", "**", f"*_{suffix}.nii*"), recursive=True))
    if not paths:
        raise InputError(f"{root}: no sub-*/.../*_{suffix}.nii[.gz] files found.")
    scans, problems = [], []
    for path in paths:
        scan, problem = _read_scan(root, path, site_table, mask_label, site_field)
        if problem:
            problems.append(problem)
        else:
            scans.append(scan)
    return scans, problems


def duplicates(scans) -> list[str]:
    """One message per (subject, site) with more than one scan (runs, repeated sessions)."""
    return [msg for _, _, _, msg in _duplicates(scans)]


def _duplicates(scans):
    seen: dict[tuple[str, str], list[str]] = {}
    for s in scans:
        seen.setdefault((s.subject, s.site), []).append(s.path)
    return [(sub, site, paths, f"sub-{sub} site {site!r} has {len(paths)} scans "
            f"({', '.join(map(os.path.basename, paths))}); phyjax uses one scan per subject and "
            "site: keep one (move the others out of the folder) or give repeated sessions "
            "their own ses- label")
            for (sub, site), paths in seen.items() if len(paths) > 1]


PROTOCOL_COLUMNS = ("path", "subject", "session", "site", "family", "tr_prep_s", "tr_readout_s",
                    "ti_s", "flip_angle_deg", "te_s", "b0_t", "status", "message")


EXTRA_COLUMNS = ("image_type", "n_readouts", "ti2_s", "flip2_deg", "manufacturer", "origin",
                 "slice_thickness_mm", "mr_acquisition_type")


def write_protocols(rows: list[dict], path: str) -> str:
    """``protocols.tsv`` (written under a temporary name, then renamed)."""
    columns = list(PROTOCOL_COLUMNS) + list(EXTRA_COLUMNS)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", restval="",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def scan_rows(scans, root: str) -> list[dict]:
    """``protocols.tsv`` rows of scans (paths relative to ``root``)."""
    return [{"path": os.path.relpath(s.path, root), "subject": s.subject, "session": s.session,
             "site": s.site, **s.reading.row()} for s in scans]


def inspect(root: str, suffix: str = "T1w", site_table=None, mask_label: str = "brain",
            site_field: str = "") -> list[dict]:
    """Every scan's protocol as read, one row each (:data:`PROTOCOL_COLUMNS` first, then the
    image type, MP2RAGE's second TI/flip, readouts per shot and the manufacturer).  Files that
    cannot be read at all, and repeated subject/site pairs, are rows with status ``error``."""
    scans, problems = _scan(root, suffix, site_table, mask_label, site_field)
    rows = scan_rows(scans, root)
    for p in problems:  # each starts with the file's path
        path, _, msg = p.partition(": ")
        rows.append({"path": os.path.relpath(path, root), "status": "error", "message": msg})
    for sub, site, paths, msg in _duplicates(scans):
        rows.append({"path": "; ".join(os.path.relpath(p, root) for p in paths), "subject": sub,
                     "site": site, "status": "error", "message": msg})
    return rows


def read_participants(root: str, columns) -> dict[str, dict[str, str]]:
    """``{subject label: {column: value}}`` from ``root/participants.tsv`` for ``columns``.

    Raises InputError naming the file when it is missing or lacks a requested column.
    """
    path = os.path.join(root, "participants.tsv")
    if not os.path.exists(path):
        raise InputError(f"{path}: not found (needed for the covariates {list(columns)}).")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise InputError(f"{path}: no column(s) {missing}; it has {list(rows[0]) if rows else []}.")
    return {r["participant_id"].removeprefix("sub-"): {c: r[c] for c in columns} for r in rows}
