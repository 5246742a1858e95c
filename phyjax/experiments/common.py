"""What every experiment does around its method: the run folder, its config and split files."""

from __future__ import annotations

import json
import os
import time

from ml_collections import ConfigDict

from phyjax import __version__
from phyjax import methods as method_registry
from phyjax.data import bids
from phyjax.data.atomic import atomic_open
from phyjax.data.dataset import Dataset
from phyjax.data.nifti import InputError
from phyjax.data.sidecar import target_from_config
from phyjax.data.split import LeakageError, Split
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.evaluate.site_difference import FeatureExtractor


#: settings inside a resumable section that act at inference only (a trained network is the
#: same whatever they are): ``model.refine``, PhyCHarm's data-consistency step,
#: ``model.calibrate``, its output's intensity scale, ``model.calibrate_with`` and
#: ``model.calibrate_simulated`` / ``calibrate_effects``, which heads its site maps are learned
#: on after training (a resumed run learns them anew), ``model.calibrate_slice_step``, the
#: slices they are read from, ``model.calibrate_denoise`` (and ``_min_gain``), the in-plane
#: filters they choose among, ``model.calibrate_map``, their form, and ``model.tta``, its
#: test-time augmentation
INFERENCE_ONLY = {"model": ("refine", "calibrate", "calibrate_with", "calibrate_simulated",
                            "calibrate_effects", "calibrate_slice_step", "calibrate_denoise",
                            "calibrate_denoise_min_gain", "calibrate_map", "tta"),
                  "unet": ("tta", "calibrate_slice_step", "calibrate_denoise",
                           "calibrate_denoise_min_gain", "calibrate_map"),
                  # how often a run logs and saves: the same network either way
                  "train": ("log_every", "checkpoint_every")}
#: training settings added after runs were made: a run whose config.json lacks one was trained
#: with this value (``model.ensemble``: one network; ``model.views``: axial slices;
#: ``model.base``: PhyCHarm's published residual on the re-synthesis, ``gate_prior`` unused;
#: ``model.source_smoothing``: the gated base's source slice unsmoothed; ``model.detail_gate``:
#: no choice between raw and smoothed; ``model.calibrate_heads``: site maps from the network's
#: own training subjects; ``model.source_smoothing_wide``: a two-arm detail gate;
#: ``train.simulated_every``: traveling-subject pairs only; ``train.slice_profile``: the
#: simulated slice profiles drawn)
ADDED_LATER = {"model": {"ensemble": 1, "views": ["axial"], "base": "resynth", "gate_prior": 0.5,
                         "source_smoothing": 0.0, "source_range": 0.0, "detail_gate": False,
                         "calibrate_heads": 0, "source_smoothing_wide": 0.0},
               "train": {"simulated_every": 0, "slice_profile": "drawn"}}


#: sections compared since the resume check covered only model/data/seed: a setting one of
#: them gained later (absent from an older run's config.json) is not compared
COMPARED_LATER = ("train", "target", "unet", "cyclegan")


def _training_part(section, key: str):
    if not isinstance(section, dict):
        return section
    return {**ADDED_LATER.get(key, {}),
            **{k: v for k, v in section.items() if k not in INFERENCE_ONLY.get(key, ())}}


_MISSING = object()


def _changed_fields(previous, current, key: str) -> list[str] | bool:
    """The training settings of section ``key`` that differ between a saved run and now: the
    field names for dict sections (only the fields both have for :data:`COMPARED_LATER`),
    else whether the values differ."""
    old, new = _training_part(previous, key), _training_part(current, key)
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old != new
    fields = old.keys() & new.keys() if key in COMPARED_LATER else old.keys() | new.keys()
    return sorted(k for k in fields if old.get(k, _MISSING) != new.get(k, _MISSING))


def _which(previous, current, key: str, fields) -> str:
    """`` (<key>.<field>: saved <a>, now <b>; ...)`` for ``fields``, or ''."""
    if not isinstance(fields, list):
        return ""
    old, new = _training_part(previous, key), _training_part(current, key)
    return " (" + "; ".join(f"{key}.{k}: saved {old.get(k)!r}, now {new.get(k)!r}"
                            for k in fields) + ")"


def prepare_workdir(config, workdir: str,
                    resumable_keys=("model", "data", "seed") + COMPARED_LATER) -> None:
    """Create ``workdir`` and write ``config.json``.

    Raises InputError when ``workdir`` holds checkpoints of a run whose ``resumable_keys``
    sections differ (resuming them would mix two experiments: the network of one run saved
    under the other's settings -- its training steps, losses, pairs and target range); the
    settings of :data:`INFERENCE_ONLY` may differ.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path) and _has_checkpoints(workdir):
        with open(path) as f:
            previous = json.load(f)
        current = json.loads(config.to_json())
        for key in resumable_keys:
            fields = _changed_fields(previous.get(key), current.get(key), key)
            if fields:
                which = _which(previous.get(key), current.get(key), key, fields)
                raise InputError(f"{workdir}: holds checkpoints of a run with a different "
                                 f"'{key}' config{which}"
                                 "; use a new --workdir (or delete it) to start over, or give "
                                 "the run's own settings to resume it.")
    with atomic_open(path) as f:
        f.write(config.to_json(indent=2))


def _has_checkpoints(workdir: str) -> bool:
    for _, dirs, _ in os.walk(workdir):
        if "checkpoints" in dirs:
            return True
    return False


def write_protocols(workdir: str, data: Dataset, config=None) -> None:
    """``protocols.tsv`` (every scan's protocol as read, with each value's origin and status)
    and, with ``config``, ``dataset_description.json`` making ``workdir`` a BIDS derivative
    dataset of ``data`` (GeneratedBy: phyjax, its version and the run's config)."""
    bids.write_protocols(data.protocols, os.path.join(workdir, "protocols.tsv"))
    if config is None:
        return
    with atomic_open(os.path.join(workdir, "dataset_description.json")) as f:
        json.dump({"Name": f"phyjax {config.get('method', 'run')} of {data.root}",
                   "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "phyjax", "Version": __version__,
                                    "Description": config.to_json()}],
                   "SourceDatasets": [{"URL": "file://" + os.path.abspath(data.root)}]},
                  f, indent=2)


def write_split(path: str, data: Dataset, split: Split, fitted=None) -> None:
    """``split.json``: dataset, training/test subjects, target and source sites, ``fitted_on``."""
    out = {"dataset": data.root, "train": list(split.train), "test": list(split.test),
           "target_site": data.target_site, "source_sites": data.source_sites}
    if fitted:
        out["fitted_on"] = {m: sorted(h.fitted_on) for m, h in fitted.items()}
    with atomic_open(path) as f:
        json.dump(out, f, indent=2)


def read_run(workdir: str, split: bool = True):
    """A run folder's ``config.json`` (as a ConfigDict) and, with ``split``, its ``split.json``
    (the dict :func:`write_split` wrote; else None): what a script needs to reload the run's
    data and its held-out subjects.  Raises InputError naming the file when ``workdir`` has
    none (not a run folder, or a run that stopped before writing it) or it is not JSON."""

    def read(name):
        path = os.path.join(workdir, name)
        if not os.path.isfile(path):
            raise InputError(f"{workdir}: no {name} -- not a phyjax run folder, or a run that "
                             "stopped before writing it")
        try:
            with open(path) as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e})") from None

    return ConfigDict(read("config.json")), (read("split.json") if split else None)


def target_protocol(config):
    """The target given as a protocol in ``config.target`` (None: read from the target site)."""
    return target_from_config(config.target) if "target" in config else None


def fit_methods(config, names, data: Dataset, split: Split, features, workdir: str,
                progress: bool, notes: list, skippable=(), timings: dict | None = None) -> dict:
    """Fit every method of ``names`` on the training subjects of ``split`` (through
    :func:`phyjax.methods.fit`) and save each under ``<workdir>/<name>/harmonizer``.

    ``features(subject, site)``: the feature vector a feature-level method (ComBat) fits on; it
    is handed out for training subjects only (:class:`LeakageError` otherwise).  A ValueError of a
    method in ``skippable`` (e.g. ComBat with one training image at a site) becomes a note.
    """
    train, fitted = data.training_set(split, target_protocol(config)), {}

    def guarded(subject, site):
        if subject not in train.subjects:
            raise LeakageError(f"a method asked for the features of held-out subject {subject!r}.")
        return features(subject, site)

    for name in names:
        t = time.time()
        try:
            fitted[name] = method_registry.fit(
                name, config, train, workdir=os.path.join(workdir, name), progress=progress,
                has_maps=data.has_maps, features=guarded)
        except ValueError as exc:
            if name not in skippable:
                raise
            notes.append(f"{name} not run: {exc}")
            continue
        method_registry.save(fitted[name], os.path.join(workdir, name, "harmonizer"))
        if timings is not None:
            timings[f"fit_{name}"] = time.time() - t
        log(progress, "benchmark", f"fitted {name}")
    return fitted


def log(progress: bool, tag: str, msg: str) -> None:
    if progress:
        print(f"[{tag}] {msg}", flush=True)


def feature_extractor(r) -> FeatureExtractor:
    """The radiomic feature extractor of a config's ``radiomics`` section."""
    return FeatureExtractor(bin_width=r.bin_width, n_bins=r.n_bins, max_bins=r.max_bins,
                            classes=tuple(r.classes), batch_size=r.batch_size)


def tissue_segmenter(s):
    """The fixed tissue segmenter of a config's ``segmentation`` section
    (:func:`phyjax.evaluate.segmentation.make_segmenter`)."""
    return make_segmenter(s)
