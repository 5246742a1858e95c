"""Harmonize-time site maps kept beside the harmonizer that made them.

A site map the physics makes at harmonize time for a protocol training never saw
(:func:`phyjax.methods.phycharm.physics_site_maps`) costs minutes at 1 mm (docs/
phycharm_ablation.md, item 72), and it is the same map every time the same model meets the same
protocol: it depends only on the network's weights, its inference settings, the protocol, the
target, the heads and how they are imaged.  Harmonizing scans one file at a time -- a shell loop
over a site's scans -- made it again for every file.  Here it is kept in a folder
(``<harmonizer>/new_protocol_maps/`` by default, ``config.harmonize.new_protocol_cache``), one
JSON file per map, named by a digest of everything it depends on and holding that ``key`` in
full, so a file is used only when every one of those inputs is equal -- never a map of another
network, setting or slice thickness.  :func:`phyjax.methods.base.save` replaces a harmonizer's
whole folder, so retraining into it drops its maps with it.

An unreadable or mismatched file is made again (with a warning); a folder that cannot be
written to costs the time of making the map again next run (with a warning), never the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings

import jax
import numpy as np

from phyjax.methods.base import protocol_to_json

#: the folder, inside a saved harmonizer's, that :func:`store` keeps its maps in by default
FOLDER = "new_protocol_maps"
#: the layout of a kept map's file; a file of another format is made again
FORMAT = 1


def network_digest(harmonizer) -> str:
    """SHA-256 (hex) of ``harmonizer.params``' leaves -- dtype, shape and bytes of each, in
    tree order -- or of nothing for a harmonizer without ``params``."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(getattr(harmonizer, "params", None)):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def map_key(harmonizer, protocol, made: dict) -> dict:
    """Everything a harmonize-time map of ``protocol`` depends on, JSON-ready: the network
    (:func:`network_digest`), its inference settings (``harmonizer.cfg`` but its maps and
    calibration, which the maps are fitted without), the fitted target, the protocol, and how
    the heads were made and imaged (``made``: the heads' settings, count, voxel, slice step and
    profile, the scanner effects and, when fitted, their values)."""
    cfg = {k: v for k, v in harmonizer.cfg.items() if k not in ("site_maps", "calibrate")}
    target = harmonizer.target_protocol
    key = {"format": FORMAT, "network": network_digest(harmonizer), "inference": cfg,
           "target_site": harmonizer.target_site,
           "target": protocol_to_json(target) if target is not None else None,
           "protocol": protocol_to_json(protocol), "made": made}
    return json.loads(_canonical(key))       # as it reads back from a file


def path_for(folder: str, key: dict) -> str:
    """The file in ``folder`` that the map of ``key`` (:func:`map_key`) is kept in (an
    absolute path: it is recorded in the output's sidecar)."""
    name = hashlib.sha256(_canonical(key).encode()).hexdigest()[:20] + ".json"
    return os.path.join(os.path.abspath(folder), name)


def _valid(entry) -> bool:
    try:
        out = np.asarray(entry["output"], float)
        tgt = np.asarray(entry["target"], float)
    except (KeyError, TypeError, ValueError):
        return False
    f = entry.get("denoise")
    try:
        filter_ok = f is None or (float(f["sigma"]) > 0 and float(f["range"]) > 0
                                  and np.isfinite([f["sigma"], f["range"]]).all())
    except (KeyError, TypeError, ValueError):
        filter_ok = False
    return (out.ndim == 1 and out.shape == tgt.shape and out.size >= 2
            and bool(np.isfinite(out).all() and np.isfinite(tgt).all())
            and bool((np.diff(out) >= 0).all() and (np.diff(tgt) >= 0).all()) and filter_ok)


def load(folder: str, key: dict) -> tuple[dict | None, str]:
    """``(map, path)``: the map kept in ``folder`` for ``key`` (``{"output", "target"}``, the
    knots of :func:`phyjax.methods.calibration.fit_site_maps`, and its ``denoise`` filter where
    it was made with ``config.model.calibrate_denoise``) or None where there is none or
    it cannot be used -- unreadable, of another key, or not two nondecreasing finite knot lists
    of one length (each with a warning naming the file: it is made again)."""
    path = path_for(folder, key)
    if not os.path.isfile(path):
        return None, path
    try:
        with open(path) as f:
            kept = json.load(f)
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: the kept site map cannot be read ({e}); it is made again.",
                      stacklevel=2)
        return None, path
    if not isinstance(kept, dict) or _canonical(kept.get("key")) != _canonical(key):
        warnings.warn(f"{path}: the kept site map was made for other settings; it is made "
                      "again.", stacklevel=2)
        return None, path
    if not _valid(kept.get("map")):
        warnings.warn(f"{path}: the kept site map is not two nondecreasing lists of finite "
                      "knots of one length (with a valid in-plane filter, if any); it is made "
                      "again.", stacklevel=2)
        return None, path
    entry = {"output": list(kept["map"]["output"]), "target": list(kept["map"]["target"])}
    if "denoise" in kept["map"]:
        entry["denoise"] = kept["map"]["denoise"]
    return entry, path


def store(folder: str, key: dict, entry: dict) -> str | None:
    """Keep ``entry``'s knots (``output``, ``target``; and its ``denoise`` filter) for ``key``
    in ``folder`` (written to a temporary file and renamed, so a reader never sees half a
    file); its path, or None with a warning where the folder cannot be written to."""
    path = path_for(folder, key)
    try:
        os.makedirs(folder, exist_ok=True)
        # a fresh name, created with the user's umask (mkstemp's 0600 would hide the map from
        # the others who share a model folder)
        tmp = os.path.join(folder, f".keeping-{uuid.uuid4().hex}.json")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w") as f:
                kept = {"output": list(entry["output"]), "target": list(entry["target"])}
                if "denoise" in entry:      # the in-plane filter chosen with the map
                    kept["denoise"] = entry["denoise"]
                json.dump({"key": key, "map": kept}, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        warnings.warn(f"{folder}: the site map made for this protocol cannot be kept there "
                      f"({e}); it will be made again next time.", stacklevel=2)
        return None
    return path
