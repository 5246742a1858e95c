"""Harmonize mode: a saved harmonizer applied to a user's T1w NIfTI.

Needs only the fitted harmonizer's folder (``<workdir>/harmonizer``, written by training, or
``config.harmonize.harmonizer``, e.g. ``<benchmark workdir>/unet/harmonizer``) and the input: the
target protocol and the model come from the folder, the input's protocol from its sidecar and/or
the command line (``config.harmonize``).  Next to the output NIfTI (the input's grid and affine)
goes a JSON sidecar with the target protocol and every value's origin and assumption.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from phyjax import methods
from phyjax.data import geometry
from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.data.sidecar import (FIELDS, Reading, given_values, protocol_to_sidecar, read_given,
                                 sidecar_path, target_from_config)
from phyjax.data.volumes import Volume, normalize, slice_axis
from phyjax.evaluate import figures, report
from phyjax.experiments.common import ADDED_LATER
from phyjax.parallel import ordered_map
from phyjax.physics.sequences import Protocol

def load_mask(spec: str, image_path: str, image: nib.Nifti1Image) -> np.ndarray:
    """Brain mask on the image's grid: the union of the comma-separated masks (or probability
    maps, summed) in ``spec``, each matched to the image by world coordinates
    (:func:`phyjax.data.geometry.mask_on_grid`); ``image > 0`` when ``spec`` is empty.
    Raises InputError naming the file if a mask is unreadable or misses the image."""
    if not spec:
        mask = np.asarray(image.dataobj).reshape(image.shape[:3]) > 0   # a 4-D singleton too
        if not mask.any():
            raise InputError(f"{image_path}: no voxel > 0 to use as a brain mask.")
        return mask
    total = np.zeros(image.shape[:3], np.float32)
    for part in spec.split(","):
        data, m_img = load_volume(part)
        if not geometry.same_grid(data.shape, m_img.affine, image.shape, image.affine):
            data = geometry.resample(data, m_img.affine, image.affine, image.shape)
        total += data
    return geometry.mask_on_grid(total, image.affine, image.shape, image.affine, source=spec)


def input_reading(h) -> Reading:
    """The input's protocol as read: its sidecar (``h.sidecar`` or next to ``h.input``), with
    the command-line values (s, degrees, T; negative = not given) overriding it."""
    return read_given(h.sidecar or sidecar_path(h.input), h.sequence, given_values(h),
                      require_file=bool(h.sidecar))


def working_grid(image: np.ndarray, affine, mask: np.ndarray, voxel_mm):
    """``(grid affine, image, mask, resampled)`` the network runs on: the input itself when it is
    an axis-aligned RAS grid (axial slices = last axis, as in training) and ``voxel_mm`` is None;
    else an axis-aligned RAS grid of voxel ``voxel_mm`` (None: the input's own voxel size along
    each world axis, :func:`~phyjax.data.geometry.world_zooms`) around the mask, the image's
    brain (:func:`~phyjax.data.geometry.resample_inside`) and the mask resampled onto it."""
    affine = np.asarray(affine, np.float64)
    if voxel_mm is None and geometry.is_ras(affine):
        return affine, image, mask, False
    zooms = voxel_mm if voxel_mm is not None else geometry.world_zooms(affine)
    lo, hi = geometry.world_box(mask, affine)
    n, grid = geometry.box_grid(lo, hi, zooms, hi - lo)
    grid_mask = geometry.resample(mask, affine, grid, n) > 0.5
    data = np.where(grid_mask, geometry.resample_inside(image, mask, affine, grid, n), 0.0)
    return grid, data, grid_mask, True


def input_volume(harmonizer, image: np.ndarray, img, mask: np.ndarray, protocol: Protocol,
                 path: str, resolution: str = "native",
                 slice_thickness_mm: float | None = None) -> Volume:
    """The input as the network reads it (a :class:`~phyjax.data.volumes.Volume`) --
    normalized as in training, on the grid ``resolution`` asks for: ``native`` runs the network
    at the input's own voxel size (reoriented to axis-aligned RAS only when it is not: 1 mm in,
    1 mm detail out); ``training`` resamples onto the harmonizer's training voxel size and back
    (the behaviour before issue 12).  Its ``resampled`` says whether that grid is not the
    file's.  The sidecar's ``slice_thickness_mm`` and the file's slice direction are kept (a
    new protocol's physics map images its heads with that slice profile).  Raises InputError
    for an unknown resolution."""
    if resolution not in ("native", "training"):
        raise InputError(f"config.harmonize.resolution={resolution!r}; expected 'native' or "
                         "'training'.")
    affine = np.asarray(img.affine, np.float64)
    voxel = harmonizer.grid_mm if resolution == "training" else None
    grid, data, grid_mask, resampled = working_grid(image, affine, mask, voxel)
    return Volume(subject="input", site="input", protocol=protocol,
                  image=normalize(data, grid_mask), mask=grid_mask, path=path, affine=grid,
                  resampled=resampled, slice_thickness_mm=slice_thickness_mm,
                  slice_axis=slice_axis(affine))


def harmonize_image(harmonizer, image: np.ndarray, img, mask: np.ndarray, protocol: Protocol,
                    path: str, resolution: str = "native", target: Protocol | None = None,
                    volume: Volume | None = None) -> dict[str, np.ndarray]:
    """Harmonized ``image`` on its own grid, and PhyCHarm's T1 (s) / M0 maps when it has them.

    The network reads :func:`input_volume` (``resolution``; or ``volume``, made by it
    already); ``target``: a protocol the harmonizer accepts (None: its fitted one).  Every
    output is 0 outside ``mask``.  Raises InputError for an unknown resolution.
    """
    if volume is None:
        volume = input_volume(harmonizer, image, img, mask, protocol, path, resolution)
    affine = np.asarray(img.affine, np.float64)
    grid, grid_mask, resampled = volume.grid_affine(), volume.mask, volume.resampled
    if hasattr(harmonizer, "check_target"):                 # PhyCHarm: any target, and maps
        raw = harmonizer.predict(volume, target)
        outs = {k: raw[k] for k in ("harmonized", "t1", "m0")}
    elif target is not None and not _same(target, harmonizer.target_protocol):
        raise InputError(f"method {harmonizer.name!r} harmonizes only to its fitted target; "
                         "another target protocol needs PhyCHarm.")
    else:
        outs = {"harmonized": harmonizer.harmonize(volume)}
    if resampled:
        back = geometry.resample_inside(np.stack(list(outs.values()), -1), grid_mask, grid,
                                        affine, image.shape)   # one fill for all outputs
        outs = {k: back[..., c] for c, k in enumerate(outs)}
    return {k: np.where(mask, np.asarray(v, np.float32), 0.0) for k, v in outs.items()}


def _same(a: Protocol, b: Protocol | None) -> bool:
    from phyjax.data.split import protocols_match

    return b is not None and protocols_match(a, b)


#: PhyCHarm's base settings the output sidecar records, with the value of a model saved before
#: each existed
PHYCHARM_BASE = {k: ADDED_LATER["model"][k]
                 for k in ("base", "source_smoothing", "source_range", "detail_gate",
                           "source_smoothing_wide")}


def output_sidecar(harmonizer, reading: Reading, input_path: str,
                   target: Protocol | None = None, config=None) -> dict:
    """The output's sidecar: the target protocol (BIDS units) and every assumption made."""
    target = target if target is not None else harmonizer.target_protocol
    settings = getattr(harmonizer, "cfg", {})      # a network's inference settings
    phycharm = hasattr(harmonizer, "check_target")
    site_map = None     # calibrate=sites: the sites whose learned map this scan went through
    made = None         # ... or how the physics made its map at harmonize time
    applied = None      # ... and the in-plane filter it chose (config.model.calibrate_denoise)
    if settings.get("calibrate") == "sites":
        from phyjax.methods.calibration import site_map_for

        found = site_map_for(settings.get("site_maps") or [], reading.protocol())
        site_map = found["sites"] if found else "none learned for this protocol: uncalibrated"
        applied = found.get("denoise") if found else None
        if found and found.get("made"):
            made = found["made"]
            site_map = (f"{made['by']} for this protocol ({made['heads']} heads, "
                        f"{made['effects']} scanner effects)")
        if phycharm and not harmonizer.maps_apply(target):
            site_map, made, applied = ("learned for the fitted target only: uncalibrated",
                                       None, None)
    out = protocol_to_sidecar(target)
    out.update({"Sources": [os.path.abspath(input_path)],
                "PhyjaxHarmonizer": {"method": harmonizer.name,
                                     "target_site": harmonizer.target_site,
                                     "target_given_as_protocol": target is not
                                     harmonizer.target_protocol,
                                     "fitted_on": sorted(harmonizer.fitted_on),
                                     "data_consistency": settings.get("refine"),
                                     # PhyCHarm: what its harmonizer's residual is added
                                     # to, and how that base's source share was smoothed
                                     # (voxels; intensity sd; 0: not); None for other methods
                                     **{k: settings.get(k, default) if phycharm else None
                                        for k, default in PHYCHARM_BASE.items()},
                                     "calibrate": settings.get("calibrate"),
                                     "calibrate_site_map": site_map,
                                     "calibrate_site_map_made": made,
                                     # after the map: the in-plane bilateral filter its heads
                                     # chose (sigma in voxels, range on the target's scale)
                                     "calibrate_site_map_filter": applied,
                                     "tta": settings.get("tta"),
                                     "ensemble": settings.get("ensemble", 1),
                                     "views": (list(settings.get("views", ["axial"]))
                                               if settings else None)},
                "PhyjaxSourceProtocol": {k: reading.values[k] for k in FIELDS
                                         if k in reading.values},
                "PhyjaxSourceProtocolOrigin": dict(reading.origin),
                "PhyjaxAssumptions": list(reading.assumed) + list(reading.notes)})
    return out


def map_sidecar(kind: str, reading: Reading, input_path: str) -> dict:
    """Sidecar of a predicted quantitative map (BIDS qMRI: ``T1map`` in s, ``M0map`` arbitrary
    units relative to water), at the source's B0."""
    return {"Units": "s" if kind == "t1" else "arbitrary (PD fraction)",
            "MagneticFieldStrength": reading.values.get("b0_t"),
            "Sources": [os.path.abspath(input_path)],
            "Description": "predicted by the PhyCHarm generator from the T1w image and its "
                           "acquisition parameters (T2/T2* weighting folded into M0)"}


MAPS = (("t1", "_T1map"), ("m0", "_M0map"))


def write_outputs(outs: dict, img, image_path: str, sidecar_path: str, map_stem: str,
                  sidecar: dict, reading: Reading, input_path: str) -> None:
    """Write one harmonization: the sidecar, PhyCHarm's maps (``<map_stem>_T1map.nii.gz``,
    ``_M0map``, each with its sidecar) and, last, the image -- so that a failure part-way
    (a full disk, a folder in the way) never leaves a harmonized image without its sidecar.
    Maps of a previous run under the same names that this method does not make (another
    method harmonizing to the same output) are removed, so none is left beside an image it
    does not belong to.  Every file is written atomically (:mod:`phyjax.data.atomic`)."""
    report.write_json(sidecar_path, sidecar)
    for kind, suffix in MAPS:
        path = map_stem + suffix
        if kind in outs:
            save_like(outs[kind], img, path + ".nii.gz")
            report.write_json(path + ".json", map_sidecar(kind, reading, input_path))
        else:
            for stale in (path + ".nii.gz", path + ".json"):
                if os.path.isfile(stale):
                    os.remove(stale)
    save_like(outs["harmonized"], img, image_path)


def load_target(harmonizer, target_cfg) -> Protocol | None:
    """The target of ``config.target`` (None: the harmonizer's fitted one), checked against
    what the harmonizer was trained for before any work."""
    target = target_from_config(target_cfg) if target_cfg is not None else None
    if target is not None and hasattr(harmonizer, "check_target"):
        harmonizer.check_target(target)
    return target


def _load_harmonizer(path: str, config=None):
    """The saved harmonizer in ``path``, with PhyCHarm's inference settings (``refine``,
    ``calibrate``, ``tta``) kept as saved -- what its evaluation measured -- except those the
    command names: ``config.harmonize.model_overrides`` (filled by :mod:`phyjax.main` with the
    ``model.*`` fields given on the command line; None, for a config built in Python, means
    every one of ``config.model``'s applies)."""
    harmonizer = methods.load(path)
    if harmonizer.kind != "image":
        raise InputError(f"{path}: method {harmonizer.name!r} does not harmonize images.")
    model = config.get("model") if config is not None and hasattr(config, "get") else None
    if hasattr(harmonizer, "check_target") and model is not None:   # PhyCHarm
        from phyjax.methods.networks import check_tta
        from phyjax.methods.calibration import check_calibrate
        from phyjax.methods.phycharm import refine_settings

        h = config.get("harmonize") or {}
        given = h.get("model_overrides") if hasattr(h, "get") else None
        settings = {"refine": lambda v: refine_settings(v.to_dict() if hasattr(v, "to_dict")
                                                        else v),
                    "calibrate": check_calibrate, "tta": check_tta}
        for key, check in settings.items():
            if key in model and (given is None or key in given):
                value = check(model[key])
                if (key == "calibrate" and value == "sites"
                        and not harmonizer.cfg.get("site_maps")):
                    if given is not None:     # asked for by name on the command line
                        raise InputError(f"{path}: --config.model.calibrate=sites, but this "
                                         "harmonizer has no site maps (they are learned at "
                                         "training, on traveling subjects or heads made by the "
                                         "physics: config.model.calibrate_with); it was saved "
                                         f"with calibrate={harmonizer.cfg.get('calibrate')!r}.")
                    continue                  # the default: keep what the model was saved with
                harmonizer.cfg[key] = value
    return harmonizer


def output_stem(output: str) -> str:
    """``output`` without its ``.nii``/``.nii.gz`` suffix: where its sidecar (``.json``), maps
    and figure go (only the suffix is cut: ``/data/T1.nii_results/h.nii.gz`` -> ``/data/
    T1.nii_results/h``)."""
    for ext in (".nii.gz", ".nii"):
        if output.endswith(ext):
            return output[:-len(ext)]
    return output


def output_path(output: str, input_path: str, default_dir: str) -> str:
    """Where single-file harmonize mode writes: ``output`` (must end in ``.nii`` or
    ``.nii.gz``), or ``<folder>/<input>_harmonized.nii.gz`` when ``output`` is empty (the
    default folder) or an existing folder.  Raises InputError for any other name, before any
    work, so that nothing is written under a name the user did not give."""
    base = os.path.basename(input_path)
    for ext in (".nii.gz", ".nii", ".mgz", ".mgh"):
        if base.endswith(ext):
            base = base[:-len(ext)]
            break
    name = base + "_harmonized.nii.gz"
    if not output:
        return os.path.join(default_dir, name)
    if os.path.isdir(output):
        return os.path.join(output, name)
    if not output.endswith((".nii", ".nii.gz")):
        raise InputError(f"--config.harmonize.output={output!r}: give a file name ending in "
                         ".nii or .nii.gz, or an existing folder.")
    return output


#: a BIDS folder's scans of one protocol that its harmonize-time physics map reads (their
#: slice thickness; with ``new_protocol_effects="fitted"``, their intensity distribution)
NEW_MAP_SCANS = 8


def new_protocol_setting(h) -> tuple[str, str]:
    """``(config.harmonize.new_protocol_map, new_protocol_effects)``, checked
    (:func:`phyjax.methods.phycharm.check_new_protocol`) before any work."""
    from phyjax.methods.phycharm import check_new_protocol

    return check_new_protocol(h.get("new_protocol_map", "physics"),
                              h.get("new_protocol_effects", "drawn"))


def run_heads(folder: str) -> dict | None:
    """How the training run that saved the harmonizer in ``folder`` made its physics' heads
    (:func:`phyjax.methods.phycharm.heads_settings` of the run's ``config.json``: one folder up
    for a PhyCHarm run, ``<workdir>/harmonizer``, two for a benchmark's,
    ``<workdir>/phycharm/harmonizer``), or None where no such file is found.  For a model
    saved before the settings were saved with it."""
    import json

    from ml_collections import ConfigDict

    from phyjax.methods.phycharm import heads_settings

    folder = os.path.abspath(folder)
    for up in (os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
        path = os.path.join(up, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                return heads_settings(ConfigDict(json.load(f)))
    return None


def new_protocol_cache(h, folder: str) -> str | None:
    """The folder harmonize-time site maps are kept in (``config.harmonize.
    new_protocol_cache``: ``"harmonizer"``, the default -- ``<folder>/new_protocol_maps``, beside
    the harmonizer in ``folder`` --, ``"off"``, or a folder of the user's), or None: not kept.
    Raises InputError for anything else than a non-empty string."""
    from phyjax.methods import map_cache

    value = h.get("new_protocol_cache", "harmonizer")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"config.harmonize.new_protocol_cache={value!r}; expected "
                         "'harmonizer' (beside the model), 'off', or a folder.")
    if value == "off":
        return None
    return os.path.join(folder, map_cache.FOLDER) if value == "harmonizer" else value


def new_protocol_maps(harmonizer, volumes, target, setting, folder: str = "",
                      cache: str | None = None) -> list:
    """The site maps PhyCHarm's physics makes, before harmonizing ``volumes``, for their
    protocols that no map was learned for (:func:`phyjax.methods.phycharm.physics_site_maps`;
    ``setting`` from :func:`new_protocol_setting`; none for ``"none"`` or another method), kept
    in and read from ``cache`` (a folder, :func:`new_protocol_cache`; None: made every time).
    A model saved without its heads' settings takes them from its run's config
    (:func:`run_heads` of the harmonizer's ``folder``)."""
    how, effects = setting
    if how == "none" or not hasattr(harmonizer, "check_target"):
        return []
    from phyjax.methods.phycharm import physics_site_maps

    heads = harmonizer.cfg.get("physics_heads") or (run_heads(folder) if folder else None)
    return physics_site_maps(harmonizer, volumes, target, effects, heads, progress=True,
                             cache=cache)


def harmonize(h, harmonizer_dir: str, default_output_dir: str, target_cfg=None,
              data_cfg=None, config=None) -> str:
    """Harmonize ``h.input`` (or every T1w of the BIDS folder ``h.bids_root``: see
    :func:`harmonize_bids`) with the harmonizer saved in ``harmonizer_dir``; returns the output.

    The output has the input's affine and shape; intensities are in the target protocol's units
    (white matter ~ its 99th-percentile normalization, as in training).  The target is
    ``target_cfg`` (a ``config.target`` section) when it names one, else the fitted target.
    PhyCHarm also writes its T1 (s) and M0 maps (``<stem>_T1map.nii.gz``, ``_M0map``).  Writes a
    figure next to it when ``h.figure``.  Raises InputError naming the file for a
    missing/invalid input, mask, sidecar or harmonizer folder, or a target the model was not
    trained for.
    """
    if h.get("bids_root"):
        return harmonize_bids(h, harmonizer_dir, target_cfg, data_cfg, config)
    if not h.input:
        raise InputError("--config.harmonize.input (a T1w NIfTI) or --config.harmonize.bids_root "
                         "is required in harmonize mode.")
    out = output_path(h.output, h.input, default_output_dir)   # before any work
    new_map = new_protocol_setting(h)
    folder = h.harmonizer or harmonizer_dir
    kept_in = new_protocol_cache(h, folder)
    image, img = load_volume(h.input)  # the user's file first: its errors matter most
    harmonizer = _load_harmonizer(folder, config)
    target = load_target(harmonizer, target_cfg)
    mask = load_mask(h.mask, h.input, img)
    reading = input_reading(h)
    protocol = reading.protocol()  # every missing or implausible value, named, before any work
    volume = input_volume(harmonizer, image, img, mask, protocol, h.input,
                          h.get("resolution", "native"), reading.slice_thickness_mm)
    new_protocol_maps(harmonizer, [volume], target, new_map, folder, kept_in)
    outs = harmonize_image(harmonizer, image, img, mask, protocol, h.input,
                           h.get("resolution", "native"), target, volume)
    stem = output_stem(out)
    write_outputs(outs, img, out, stem + ".json", stem,
                  output_sidecar(harmonizer, reading, h.input, target), reading, h.input)
    if h.figure:
        shown = target if target is not None else harmonizer.target_protocol
        figures.input_output_figure(np.where(mask, normalize(image, mask), 0.0),
                                    outs["harmonized"], mask, stem + ".png",
                                    title=f"{os.path.basename(h.input)} ({protocol.sequence}, "
                                          f"{protocol.field_strength:g} T) -> "
                                          + (f"{shown.sequence}, TR {float(shown.tr):g} s, "
                                             f"{float(shown.field_strength):g} T"
                                             if shown is not None else harmonizer.target_site))
    return out


def harmonize_bids(h, harmonizer_dir: str, target_cfg, data_cfg, config) -> str:
    """Every T1w scan of the BIDS folder ``h.bids_root`` harmonized into the BIDS derivatives
    dataset ``h.output`` (default ``<bids_root>/derivatives/phyjax``).

    Layout: ``dataset_description.json`` (DatasetType derivative, GeneratedBy phyjax with its
    version and the config, SourceDatasets), and per scan, beside the source's entities,
    ``*_desc-harmonized_T1w.nii.gz`` + sidecar (target protocol, every value's origin and
    assumption) and, for PhyCHarm, ``*_T1map.nii.gz`` (s) and ``*_M0map.nii.gz`` with sidecars;
    each on its input's grid and affine.  Masks: ``derivatives/*/...desc-<data.mask_label>
    _mask`` (no mask: voxels > 0).  Every scan's protocol is checked before any work starts.
    """
    from phyjax import __version__
    from phyjax.data import bids
    from phyjax.data.sidecar import read_site_table

    root = h.bids_root
    new_map = new_protocol_setting(h)
    folder = h.harmonizer or harmonizer_dir
    kept_in = new_protocol_cache(h, folder)
    harmonizer = _load_harmonizer(folder, config)
    target = load_target(harmonizer, target_cfg)
    d = data_cfg or {}
    table = read_site_table(d["site_params"]) if d.get("site_params") else None
    scans = bids.scan_bids(root, site_table=table, mask_label=d.get("mask_label", "brain"),
                           site_field=d.get("site_field", ""))
    out_root = h.output or os.path.join(root, "derivatives", "phyjax")
    os.makedirs(out_root, exist_ok=True)
    report.write_json(os.path.join(out_root, "dataset_description.json"), {
        "Name": f"phyjax harmonization ({harmonizer.name}) of {os.path.basename(root)}",
        "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "phyjax", "Version": __version__,
                         "Description": f"harmonized with {harmonizer.name} to "
                                        f"{(target or harmonizer.target_protocol)}",
                         "Config": config.to_dict() if hasattr(config, "to_dict") else None}],
        "SourceDatasets": [{"URL": "file://" + os.path.abspath(root)}]})
    def volume_of(scan):
        image, img = load_volume(scan.path)
        mask = (load_mask(scan.mask_path, scan.path, img) if scan.mask_path
                else load_mask("", scan.path, img))
        volume = input_volume(harmonizer, image, img, mask, scan.protocol, scan.path,
                              h.get("resolution", "native"), scan.reading.slice_thickness_mm)
        return image, img, mask, volume

    if new_map[0] != "none":     # a map per protocol none was learned for, from its scans
        from phyjax.methods.phycharm import unmapped_protocols
        from phyjax.data.split import protocols_match

        for p in unmapped_protocols(harmonizer, [scan.protocol for scan in scans
                                                 if scan.protocol is not None], target):
            own = [scan for scan in scans if protocols_match(scan.protocol, p)]
            new_protocol_maps(harmonizer, [volume_of(scan)[3] for scan in own[:NEW_MAP_SCANS]],
                              target, new_map, folder, kept_in)
    def harmonized(scan):
        image, img, mask, volume = volume_of(scan)
        return img, harmonize_image(harmonizer, image, img, mask, scan.protocol, scan.path,
                                    h.get("resolution", "native"), target, volume)

    written = []
    # two scans harmonized at once (phyjax.parallel), written one by one in the folder's
    # order: a bad file stops the run at its turn, every scan before it written
    done = ordered_map(harmonized, scans)
    for scan, (img, outs) in tqdm(zip(scans, done), total=len(scans),
                                  desc=f"harmonizing {os.path.basename(root)}"):
        rel = os.path.relpath(os.path.dirname(scan.path), root)
        base = os.path.basename(scan.path).split(".nii")[0]
        base = base[:-len("_T1w")] if base.endswith("_T1w") else base
        stem = os.path.join(out_root, rel, base)
        write_outputs(outs, img, stem + "_desc-harmonized_T1w.nii.gz",
                      stem + "_desc-harmonized_T1w.json", stem,
                      output_sidecar(harmonizer, scan.reading, scan.path, target),
                      scan.reading, scan.path)
        written.append(stem)
    return out_root
