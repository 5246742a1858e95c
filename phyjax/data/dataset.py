"""The data layer's entry point: a config's ``data`` section -> a :class:`Dataset` in memory.

Both data sources go through the same loader a user's folder does
(:func:`phyjax.data.bids.scan_bids` -> :func:`phyjax.data.volumes.load_scans`): a BIDS folder
given by ``data.bids_root``, or the embedded default dataset, built once into a cache folder
(:func:`phyjax.data.synthetic.build_default_dataset`) and read back with its ground-truth maps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile

import nibabel as nib
import numpy as np

from phyjax.data import bids, synthetic
from phyjax.data.nifti import InputError, load_volume
from phyjax.data.sidecar import read_site_table
from phyjax.data.split import Split, TrainingSet
from phyjax.data.volumes import Volume, load_scans


@dataclasses.dataclass
class Dataset:
    """Scans in memory, ``volumes[subject][site]``, and the site every method harmonizes to."""

    volumes: dict[str, dict[str, Volume]]
    root: str
    target_site: str
    has_maps: bool  # ground-truth T1/M0 maps (the embedded default dataset)
    protocols: list = dataclasses.field(default_factory=list)  # protocols.tsv rows, as read
    _store: object = None  # the temporary folder of streamed volumes (removed with the Dataset)

    @property
    def subjects(self) -> list[str]:
        return sorted(self.volumes)

    @property
    def sites(self) -> list[str]:
        return sorted({site for v in self.volumes.values() for site in v})

    @property
    def paired(self) -> bool:
        """Every subject has a target-site scan (traveling subjects)."""
        return all(self.target_site in v for v in self.volumes.values())

    @property
    def source_sites(self) -> list[str]:
        return [s for s in self.sites if s != self.target_site]

    def split(self, n_test: int, seed: int) -> Split:
        """Seeded split by subject (:meth:`Split.by_subject`).

        Raises InputError naming the folder unless ``0 < n_test < number of subjects`` (a
        folder with one subject cannot be split into training and held-out subjects).
        """
        n = len(self.subjects)
        if not 0 < n_test < n:
            raise InputError(
                f"{self.root}: {n} subject{'s' * (n != 1)} ({', '.join(self.subjects)}); "
                f"training holds out --config.data.n_test={n_test} by subject, so it needs at "
                f"least {max(n_test, 1) + 1} subjects" + (f" (or --config.data.n_test=1 to "
                                                         f"{n - 1})" if n > 1 else "") + ".")
        return Split.by_subject(self.volumes, n_test, seed)

    def training_set(self, split: Split, target_protocol=None) -> TrainingSet:
        """What ``fit`` functions accept: the training subjects of ``split`` only
        (``target_protocol``: the target given as a protocol, :func:`target_from_config`)."""
        return split.training_set(self.volumes, self.target_site, target_protocol)


def cache_dir(data_cfg) -> str:
    """Where the default dataset is built: ``data.cache_dir``, else $PHYJAX_CACHE, else ~/.cache/phyjax."""
    return (data_cfg.cache_dir or os.environ.get("PHYJAX_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "phyjax"))


def stream_to_disk(data_cfg, scans, with_maps: bool) -> bool:
    """Whether the volumes go to disk (``data.stream``: ``on``, ``off``, or ``auto`` = when their
    in-memory size, estimated from the headers, exceeds ``data.memory_gb``)."""
    mode = data_cfg.get("stream", "auto")
    if mode not in ("auto", "on", "off"):
        raise InputError(f"config.data.stream={mode!r}; expected 'auto', 'on' or 'off'.")
    if mode != "auto":
        return mode == "on"
    per_voxel = 4 + 1 + (8 if with_maps else 0)          # image float32, mask, T1/M0 float32
    total = sum(int(np.prod(nib.load(s.path).shape[:3])) for s in scans) * per_voxel
    return total > float(data_cfg.get("memory_gb", 4.0)) * 2 ** 30


def load_dataset(data_cfg, progress: bool = True, paired: bool = True,
                 require_protocols: bool = True, workdir: str | None = None) -> Dataset:
    """Load ``data_cfg.bids_root`` (or build/load the default dataset) into a :class:`Dataset`.

    ``data_cfg.site_params``: optional per-site parameter table (TSV, :func:`read_site_table`)
    filling what the sidecars lack (default: the folder's own ``code/site_parameters.tsv``, as
    the default dataset has); ``mask_label`` (default ``brain``): the ROI masks'
    ``desc-`` label; ``site_field``: a sidecar field naming the site (default: the ``ses-`` label).
    ``paired``: every subject must have a target-site scan (traveling subjects);
    ``require_protocols``: every protocol must be complete (False: physics-free use only).
    ``data_cfg.stream`` (:func:`stream_to_disk`): volumes are written into a temporary folder in
    ``workdir`` (removed with the Dataset) and read when used, so memory stays bounded as the
    number of subjects grows.

    Raises:
      InputError: naming the folder or file -- no scans; every scan whose protocol is
        incomplete or implausible, listed at once; a bad mask; or a subject
        without a scan from ``data_cfg.target_site`` (every subject is evaluated against its
        own target-site scan).
    """
    if data_cfg.bids_root:
        root, maps_for = data_cfg.bids_root, None
    else:
        root = synthetic.build_default_dataset(data_cfg, cache_dir(data_cfg), progress=progress)

        @functools.lru_cache(maxsize=4)  # scans come subject by subject: its sites share a read
        def maps_for(subject, b0):
            paths = synthetic.ground_truth_paths(root, subject, b0)
            return load_volume(paths["t1"])[0], load_volume(paths["m0"])[0]
    table = read_site_table(data_cfg.site_params) if data_cfg.get("site_params") else None
    scans = bids.scan_bids(root, site_table=table, mask_label=data_cfg.get("mask_label", "brain"),
                           site_field=data_cfg.get("site_field", ""),
                           require_protocols=require_protocols)
    tmp = None
    if stream_to_disk(data_cfg, scans, maps_for is not None):
        if workdir:
            os.makedirs(workdir, exist_ok=True)
        tmp = tempfile.TemporaryDirectory(prefix=".volumes-", dir=workdir)
    volumes = load_scans(scans, maps_for, voxel_mm=data_cfg.get("grid_mm", 0.0),
                         store=tmp.name if tmp else None)
    target = data_cfg.target_site
    for subject, sites in volumes.items():
        if paired and target not in sites:
            raise InputError(f"{root}: subject {subject} has no scan from the target site "
                             f"{target!r} (sites: {sorted(sites)}).")
    return Dataset(volumes=volumes, root=root, target_site=target, has_maps=maps_for is not None,
                   protocols=bids.scan_rows(scans, root), _store=tmp)
