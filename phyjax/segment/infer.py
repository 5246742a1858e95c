"""Segment a user's T1w with a trained physics U-Net: tissue probability maps and volumes as BIDS
derivatives.

The protocol comes from the scan's sidecar, read the way every phyjax input is
(:func:`phyjax.data.sidecar.read_given` through :func:`phyjax.experiments.harmonize.input_reading`;
values on the command line override it), and must lie in the family and ranges the network was
trained on (or ``config.segment.allow_outside_range``).  The image is resampled onto an
axis-aligned RAS grid of the network's training voxel size around the brain mask, normalized as
in training, segmented slice by slice, and the probabilities resampled back onto the input's own
grid and affine.  Outputs (BIDS derivatives naming): ``<stem>_label-{CSF,GM,WM}_probseg.nii.gz``
(+ JSON sidecars), ``<stem>_dseg.nii.gz`` (1 CSF, 2 GM, 3 WM; ``dseg.tsv`` lookup at the root)
and one row per scan in ``tissue_volumes.tsv`` (mL: soft volumes, the sum of each probability
map times the voxel volume).
"""

from __future__ import annotations

import csv
import os

import numpy as np
from tqdm.auto import tqdm

from phyjax.data import geometry
from phyjax.data.atomic import atomic_open
from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.data.sidecar import FIELDS, protocol_to_sidecar
from phyjax.data.volumes import normalize
from phyjax.evaluate import report
from phyjax.experiments.harmonize import input_reading, load_mask, working_grid
from phyjax.physics.sequences import REQUIRED, Protocol
from phyjax.segment import evaluate, simulate
from phyjax.segment.gold import CLASSES
from phyjax.segment.model import physics_vector
from phyjax.segment.train import Segmenter

_LABEL = {"csf": "CSF", "gm": "GM", "wm": "WM"}


def _trained_readout(ranges: dict) -> bool:
    """Whether the MPRAGE training images had a readout train (readout TR, readouts per shot
    and flip angle all > 0 in the ranges)."""
    r = ranges.get("mprage", {})
    return all(np.max(np.atleast_1d(np.asarray(r.get(k, 0.0), float))) > 0
               for k in ("tr_readout", "n_readouts", "flip_angle"))


def check_protocol(segmenter: Segmenter, protocol: Protocol, source: str,
                   allow_outside: bool) -> list[str]:
    """Problems of ``protocol`` against what ``segmenter`` was trained on.

    A family it was not trained on, or a varied parameter outside its range, raises InputError
    naming ``source`` and, for each such parameter, its value and the trained range (unless
    ``allow_outside``, then they are returned as notes).  Parameters that were *fixed* in
    training (e.g. the MPRAGE TE) are given to the branch as read and only noted.

    MPRAGE: a model trained on the readout-train MPRAGE (``data.mprage`` with ``tr_readout``,
    ``n_readouts`` and a flip angle, the default) needs the scan's readout TR, readouts per shot
    and readout flip inside its ranges, and a train that fits TI and TR - TI
    (:func:`phyjax.segment.simulate.readout_problem`); a scan whose sidecar gives no train is
    outside (its contrast is not known).  A model trained on the static equation (flip 0, the
    paper's and this project's before issue 16) is outside for any scan *with* a train.
    """
    ranges = segmenter.settings["ranges"]
    if protocol.sequence not in ranges:
        problems = [f"family {protocol.sequence!r} (trained on {sorted(ranges)})"]
        if not allow_outside:
            raise InputError(f"{source}: {problems[0]}; --config.segment.allow_outside_range=True "
                             "to segment anyway.")
        return problems
    varied = {k: v for k, v in ranges[protocol.sequence].items()
              if isinstance(v, (list, tuple)) and v[0] != v[1]}
    fixed = {k: v for k, v in ranges[protocol.sequence].items() if k not in varied}
    problems = []
    if protocol.sequence == "mprage":
        has_train = float(protocol.n_readouts) > 0 and float(protocol.tr_readout) > 0
        if _trained_readout(ranges):
            if not has_train:
                problems.append(
                    "MPRAGE without its readout train (readout TR "
                    f"{1e3 * float(protocol.tr_readout):g} ms, {float(protocol.n_readouts):g} "
                    "readouts per shot read): the model was trained on readout-train MPRAGE "
                    "(tr_readout, n_readouts: give --config.segment.tr_readout / "
                    "--config.segment.n_readouts, or a site table's tr_readout_s / n_readouts)")
                varied = {k: v for k, v in varied.items() if k not in ("tr_readout",
                                                                       "n_readouts")}
            elif readout := simulate.readout_problem(protocol):
                problems.append(readout)
        elif has_train:
            # Static-equation training (simulate.PAPER_RANGES); a real readout train changes the
            # contrast (the real Philips ADNI MPRAGE: GM/WM 0.67 where the static equation at
            # its TI 0.9 s gives 0.37), which the branch would not be told.
            problems.append(
                f"MPRAGE with a readout train ({float(protocol.n_readouts):g} readouts of "
                f"{1e3 * float(protocol.tr_readout):g} ms, flip "
                f"{float(np.rad2deg(float(protocol.flip_angle))):g} deg): the model was trained "
                "on the static MPRAGE equation, whose contrast at the same TI differs")
    problems = simulate.in_range(protocol, {protocol.sequence: varied}) + problems
    notes = [f"{k} fixed at {v if not isinstance(v, (list, tuple)) else v[0]:g} in "
             "training" for k, v in fixed.items()
             if not (k == "flip_angle" and protocol.sequence == "mprage")]
    if problems and not allow_outside:
        raise InputError(f"{source}: outside the trained range: {'; '.join(problems)} "
                         "(--config.segment.allow_outside_range=True to segment anyway).")
    return [f"outside the trained range: {p}" for p in problems] + notes


def network_protocol(segmenter: Segmenter, protocol: Protocol) -> Protocol:
    """``protocol`` as the network was trained to read it: a field the family's training signal
    equation does not use but which was fixed in training takes its training value -- for a
    model trained on the static MPRAGE equation (flip fixed at 0), an MPRAGE's readout flip
    (8-9 deg) would otherwise reach the paper-input branch as ~150 standard deviations of a flip
    angle that was always 0 in training.  A readout-train model (flip varied) reads the
    protocol as it is."""
    fixed = segmenter.settings["ranges"].get(protocol.sequence, {}).get("flip_angle")
    if ("flip_angle" in REQUIRED.get(protocol.sequence, ()) or fixed is None
            or isinstance(fixed, (list, tuple))):
        return protocol
    return protocol.replace(flip_angle=float(np.deg2rad(float(fixed))))


#: Segment-mode knobs for an MPRAGE's readout train (config units) and the sidecar reader's
#: field each sets.
READOUT_KNOBS = {"tr_readout": "tr_readout_s", "n_readouts": "n_readouts"}


def given_readout(reading, section):
    """``reading`` with the readout TR (s) and readouts per shot given in ``section``
    (``config.segment.tr_readout`` / ``n_readouts``; negative = not given) replacing the
    sidecar's when it is an MPRAGE (other families untouched: an SPGR's ``tr_readout_s`` is its
    TR); returns it (changed in place)."""
    if reading.family != "mprage":
        return reading
    for knob, field in READOUT_KNOBS.items():
        value = float(section.get(knob, -1.0))
        if value >= 0:
            reading.values[field] = value
            reading.origin[field] = "command line"
    return reading


#: ``config.segment.b1_units``: how a B1+ map's values read.  ``ratio``: 1 = nominal flip;
#: ``percent``: 100 = nominal (e.g. the hMRI toolbox's maps); ``auto``: percent when the median
#: inside the brain exceeds 10, else ratio.
B1_UNITS = ("auto", "ratio", "percent")
#: Plausible median relative B1+ inside the brain (body-coil transmit at 1.5-7 T stays well
#: inside this); a median outside it means the wrong units or not a B1+ map.
B1_PLAUSIBLE = (0.4, 1.6)


def b1_on_grid(path: str, units: str, affine, shape,
               mask: np.ndarray) -> tuple[np.ndarray, float]:
    """A transmit-field map (BIDS ``TB1map``) as relative B1+ (1 = nominal) on the grid
    ``affine`` / ``shape``, with its median inside ``mask``: ``(map, median)``.  Voxels outside
    the map's field of view, and voxels <= 0 (the background of most maps), are NaN: the branch
    is told B1+ is unknown there.

    Raises InputError naming ``path`` for an unreadable or non-3-D file, unknown ``units``
    (:data:`B1_UNITS`), a map that covers no brain voxel, or a median outside
    :data:`B1_PLAUSIBLE` (wrong units, or not a B1+ map)."""
    if units not in B1_UNITS:
        raise InputError(f"config.segment.b1_units={units!r}; expected one of {B1_UNITS}.")
    data, img = load_volume(path)
    src = np.asarray(img.affine, np.float64)
    valid = (data > 0).astype(np.float32)
    if geometry.same_grid(data.shape, src, shape, affine):
        on, cover = data, valid
    else:
        on = geometry.resample(np.where(valid > 0, data, 0.0), src, affine, shape)
        cover = geometry.resample(valid, src, affine, shape)
    # trilinear weights of valid voxels: divide by them so the edge is not pulled towards 0
    b1 = np.where(cover > 0.5, on / np.maximum(cover, 1e-6), np.nan).astype(np.float32)
    inside = b1[np.asarray(mask, bool) & np.isfinite(b1)]
    if inside.size == 0:
        raise InputError(f"{path}: the B1+ map covers no brain voxel of the image.")
    median = float(np.median(inside))
    if units == "percent" or (units == "auto" and median > 10.0):
        b1, median = b1 / 100.0, median / 100.0
    lo, hi = B1_PLAUSIBLE
    if not lo <= median <= hi:
        raise InputError(f"{path}: median relative B1+ inside the brain is {median:g} "
                         f"(expected {lo:g}-{hi:g}); wrong units (--config.segment.b1_units="
                         "ratio or percent) or not a transmit-field map.")
    return b1, median


def segment_image(segmenter: Segmenter, image: np.ndarray, img, mask: np.ndarray,
                  protocol: Protocol, b1_path: str = "", b1_units: str = "auto",
                  info: dict | None = None) -> np.ndarray:
    """Probabilities ``(X, Y, Z, 3)`` (CSF, GM, WM) on the input's own grid, 0 outside
    ``mask``; the branch reads :func:`network_protocol` of ``protocol`` and, when
    ``b1_path`` names a transmit-field map (:func:`b1_on_grid`; the segmenter must read one,
    ``model.b1_input``), the B1+ of every voxel.  ``info`` (a dict) receives the map's median
    (``B1plusMedian``).  Raises InputError for a map given to a segmenter that does not read
    one."""
    v = float(segmenter.settings["voxel_mm"])
    affine = np.asarray(img.affine, np.float64)
    grid, data, grid_mask, resampled = working_grid(image, affine, mask, (v, v, v))
    params = physics_vector(network_protocol(segmenter, protocol)) if segmenter.physics else None
    b1 = None
    if b1_path:
        if not segmenter.b1_input:
            raise InputError(f"{b1_path}: this segmenter does not read a B1+ map (trained "
                             "without --config.model.b1_input=True); leave "
                             "config.segment.b1_map empty.")
        b1, median = b1_on_grid(b1_path, b1_units, grid, data.shape, grid_mask)
        if info is not None:
            info["B1plusMedian"] = round(median, 4)
    probs = segmenter.predict(normalize(data, grid_mask), grid_mask, params, b1=b1)
    if resampled:
        # values inside the grid's mask only (nearest fill outside), so that a native mask
        # voxel beyond the coarse mask's edge gets its nearest tissue probabilities, not 0
        # (which summed to nothing and was labelled CSF)
        probs = geometry.resample_inside(probs, grid_mask, grid, affine, image.shape)
        total = probs.sum(-1, keepdims=True)
        probs = np.where(total > 1e-6, probs / np.maximum(total, 1e-6), 0.0)
    return np.where(mask[..., None], probs, 0.0).astype(np.float32)


def _write_scan(stem: str, probs, mask, img, reading, source: str, segmenter, notes,
                b1_path: str = "", b1_info: dict | None = None) -> dict:
    meta = {"Sources": [os.path.abspath(source)] + ([os.path.abspath(b1_path)] if b1_path
                                                     else []),
            "Method": "physics-aware U-Net (Borges et al. 2019, arXiv:2001.10767), phyjax",
            "PhysicsBranch": segmenter.physics,
            "AcquisitionProtocol": protocol_to_sidecar(reading.protocol()),
            "AcquisitionProtocolOrigin": dict(reading.origin),
            "Notes": list(notes) + list(reading.assumed) + list(reading.notes)}
    if segmenter.b1_input:
        meta["B1plusMap"] = os.path.abspath(b1_path) if b1_path else None
        meta.update(b1_info or {})
    for c, t in enumerate(CLASSES):
        save_like(probs[..., c], img, f"{stem}_label-{_LABEL[t]}_probseg.nii.gz")
        report.write_json(f"{stem}_label-{_LABEL[t]}_probseg.json", meta)
    save_like(evaluate.labels(probs, mask), img, f"{stem}_dseg.nii.gz", dtype=np.int16)
    voxel = abs(float(np.linalg.det(np.asarray(img.affine)[:3, :3])))   # the sform's, as saved
    return {f"{t}_ml": round(v, 3) for t, v in evaluate.volumes_ml(probs, voxel).items()}


def _write_tables(out_root: str, rows: list[dict]) -> None:
    with atomic_open(os.path.join(out_root, "dseg.tsv")) as f:
        f.write("index\tname\tabbreviation\n1\tCerebrospinal fluid\tCSF\n"
                "2\tGray matter\tGM\n3\tWhite matter\tWM\n")
    fields = ["path"] + [f"{t}_ml" for t in CLASSES] + ["family", *FIELDS[:7]]
    with atomic_open(os.path.join(out_root, "tissue_volumes.tsv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t", extrasaction="ignore",
                           restval="")
        w.writeheader()
        w.writerows(rows)


def _description(out_root: str, source: str, config) -> None:
    from phyjax import __version__

    report.write_json(os.path.join(out_root, "dataset_description.json"), {
        "Name": "phyjax physics-aware tissue segmentation", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "phyjax", "Version": __version__,
                         "Description": "physics-aware U-Net (Borges et al. 2019)",
                         "Config": config.to_dict() if hasattr(config, "to_dict") else None}],
        "SourceDatasets": [{"URL": "file://" + os.path.abspath(source)}]})


def bids_jobs(root: str, mask_label: str = "brain", site_params: str = "") -> list[tuple]:
    """Every ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` of the BIDS folder ``root`` (derivatives
    excluded) as ``(path, mask path or "", reading, output stem relative to the derivatives
    root)``.  Unlike :func:`phyjax.data.bids.scan_bids` no site is needed (a segmentation does
    not use one); a site table (``site_params``, keyed by the ``ses-`` label or the sidecar's
    site name) fills sidecar gaps.  Masks: ``derivatives/*/sub-X/[ses-Y/]anat/*desc-<mask_label>
    _mask.nii*`` (none: voxels > 0).  Raises InputError listing every unreadable sidecar."""
    import glob

    from phyjax.data.bids import entities
    from phyjax.data.sidecar import (
        read_protocol,
        read_sidecar,
        read_site_table,
        sidecar_path,
        site_label,
    )

    if not os.path.isdir(root):
        raise InputError(f"{root}: BIDS folder not found.")
    table = read_site_table(site_params) if site_params else {}
    paths = sorted(p for p in glob.glob(os.path.join(root, "sub-*", "**", "*_T1w.nii*"),
                                        recursive=True))
    if not paths:
        raise InputError(f"{root}: no sub-*/.../*_T1w.nii[.gz] files found.")
    jobs, problems = [], []
    for path in paths:
        ent = entities(path)
        try:
            sidecar = read_sidecar(sidecar_path(path))
        except InputError as exc:
            problems.append(str(exc))
            continue
        site = ent.get("ses") or site_label(sidecar)
        reading = read_protocol(sidecar, sidecar_path(path), site_values=table.get(site),
                                site_origin=f"site table ({site})")
        sub, ses = ent.get("sub", ""), ent.get("ses")
        patterns = ([f"derivatives/*/sub-{sub}/ses-{ses}/anat/*desc-{mask_label}_mask.nii*"]
                    if ses else [])
        patterns.append(f"derivatives/*/sub-{sub}/anat/*desc-{mask_label}_mask.nii*")
        masks = [m for pat in patterns for m in sorted(glob.glob(os.path.join(root, pat)))]
        rel = os.path.join(os.path.relpath(os.path.dirname(path), root),
                           os.path.basename(path).split(".nii")[0].removesuffix("_T1w"))
        jobs.append((path, masks[0] if masks else "", reading, rel))
    if problems:
        raise InputError(f"{root}: {len(problems)} problem(s) before any work starts:\n  "
                         + "\n  ".join(problems))
    return jobs


def bids_b1_map(root: str, t1w_path: str) -> str:
    """The transmit-field map of a BIDS T1w: ``sub-X/[ses-Y/]fmap/*_TB1map.nii[.gz]`` of its
    subject (and session), the first in sorted order; "" when there is none."""
    import glob

    from phyjax.data.bids import entities

    ent = entities(t1w_path)
    parts = [f"sub-{ent.get('sub', '')}"] + ([f"ses-{ent['ses']}"] if ent.get("ses") else [])
    found = sorted(glob.glob(os.path.join(root, *parts, "fmap", "*_TB1map.nii*")))
    return found[0] if found else ""


def segment(config, workdir: str) -> str:
    """``config.mode = "segment"``: segment ``config.segment.input`` (or every T1w of
    ``config.segment.bids_root``) with the saved segmenter (``config.segment.model``, default
    ``<workdir>/physics_unet/model``); returns the derivatives folder.  Every input's protocol
    is read and checked before any compute; errors name the file (InputError)."""
    s = config.segment
    model_dir = s.model or os.path.join(workdir, "physics_unet", "model")
    segmenter = Segmenter.load(model_dir)
    if segmenter.settings.get("reconstruction", "magnitude") != "magnitude":
        raise InputError(f"{model_dir}: trained on phase-sensitive (signed) images; T1w magnitude "
                         "images need a segmenter trained with data.reconstruction=magnitude.")
    if s.bids_root:
        jobs = [(path, m, given_readout(reading, s), rel)
                for path, m, reading, rel in bids_jobs(s.bids_root, s.mask_label, s.site_params)]
        out_root = s.output or os.path.join(s.bids_root, "derivatives", "phyjax-physics-seg")
        source = s.bids_root
    elif s.input:
        if not os.path.exists(s.input):
            raise InputError(f"{s.input}: file not found.")
        reading = given_readout(input_reading(s), s)
        base = os.path.basename(s.input).split(".nii")[0].removesuffix("_T1w")
        if s.b1_map and not os.path.exists(s.b1_map):
            raise InputError(f"{s.b1_map}: B1+ map not found (config.segment.b1_map).")
        jobs = [(s.input, s.mask, reading, base)]
        out_root = s.output or os.path.join(workdir, "segment")
        source = s.input
    else:
        raise InputError("--config.segment.input (a T1w NIfTI) or --config.segment.bids_root is "
                         "required in segment mode.")
    if s.b1_units not in B1_UNITS:
        raise InputError(f"config.segment.b1_units={s.b1_units!r}; expected one of {B1_UNITS}.")
    if s.b1_map and not segmenter.b1_input:
        raise InputError(f"{s.b1_map}: the segmenter in {model_dir} does not read a B1+ map "
                         "(trained without --config.model.b1_input=True); leave "
                         "config.segment.b1_map empty.")
    notes, problems = {}, []
    for path, _, reading, _ in jobs:   # every protocol checked before any compute
        try:
            notes[path] = check_protocol(segmenter, reading.protocol(), reading.source,
                                         s.allow_outside_range)
        except InputError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} scans cannot be segmented:\n  " + "\n  ".join(problems))
    os.makedirs(out_root, exist_ok=True)
    _description(out_root, source, config)
    b1_maps = {path: (s.b1_map if s.input else bids_b1_map(s.bids_root, path))
               for path, *_ in jobs} if segmenter.b1_input or s.b1_map else {}
    rows = []
    for path, mask_spec, reading, rel in tqdm(jobs, desc="segmenting", disable=len(jobs) < 2):
        image, img = load_volume(path)
        mask = load_mask(mask_spec, path, img)
        b1_path, b1_info = b1_maps.get(path, ""), {}
        probs = segment_image(segmenter, image, img, mask, reading.protocol(), b1_path,
                              s.b1_units, b1_info)
        vols = _write_scan(os.path.join(out_root, rel), probs, mask, img, reading, path,
                           segmenter, notes[path], b1_path, b1_info)
        rows.append({"path": os.path.abspath(path), **vols, "family": reading.family,
                     **{k: reading.values.get(k, "") for k in FIELDS[:7]}})
    _write_tables(out_root, rows)
    return out_root
