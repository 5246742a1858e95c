"""The ceiling of harmonization: an independent re-scan with the target protocol.

Not a harmonization method but the reference a benchmark reports beside them: for a held-out
subject, the image a second session on the target scanner would give (same anatomy, protocol and
scanner; a new noise and bias-field draw), whatever the source.  No method can be expected to
come closer to the target scan than this.  Only the embedded default dataset has re-scans
(:func:`phyjax.data.synthetic.rescan_path`); on other data the benchmark leaves it out with a
note.  It is fitted on nothing (``fitted_on`` is empty) and reads the held-out subject's re-scan
at harmonize time.
"""

from __future__ import annotations

import os

import numpy as np

from phyjax.data.nifti import InputError, load_volume
from phyjax.data.split import TrainingSet, require_training_set
from phyjax.data.synthetic import rescan_path
from phyjax.data.volumes import Volume, normalize
from phyjax.methods.base import Harmonizer, base_fields, register

NAME = "rescan"


def dataset_root(path: str) -> str | None:
    """The BIDS folder holding ``path`` (the nearest parent with dataset_description.json)."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.exists(os.path.join(folder, "dataset_description.json")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def has_rescans(volumes) -> bool:
    """Whether every subject of ``volumes`` (``{subject: {site: Volume}}``) has a re-scan."""
    for subject, scans in volumes.items():
        root = dataset_root(next(iter(scans.values())).path)
        if root is None or not os.path.exists(rescan_path(root, subject)):
            return False
    return True


class RescanHarmonizer(Harmonizer):
    """Returns the held-out subject's re-scan, normalized like every scan
    (:func:`phyjax.data.volumes.normalize`, inside the volume's mask)."""

    def harmonize(self, volume: Volume) -> np.ndarray:
        root = dataset_root(volume.path)
        path = rescan_path(root, volume.subject) if root else None
        if path is None or not os.path.exists(path):
            raise InputError(f"{volume.path}: no re-scan of subject {volume.subject!r} "
                             f"(expected {path}); only the default dataset has them.")
        if volume.resampled:
            raise InputError(f"{volume.path}: resampled onto a common grid; the re-scan is on "
                             "the file's own grid.")
        image, _ = load_volume(path)
        if image.shape != volume.mask.shape:
            raise InputError(f"{path}: shape {image.shape} is not the scan's {volume.mask.shape}.")
        return (normalize(image, volume.mask) * volume.mask).astype(np.float32)

    def save_state(self, directory: str) -> dict:
        return {}

    @classmethod
    def load_state(cls, directory: str, meta: dict) -> "RescanHarmonizer":
        return cls(**base_fields(meta))


@register(NAME, harmonizer=RescanHarmonizer)
def fit(config, train: TrainingSet, name: str = NAME, **_) -> RescanHarmonizer:
    """The ceiling for ``train``'s target site; fitted on no subject.

    Raises InputError when the training subjects have no re-scans (data other than the
    default dataset)."""
    train = require_training_set(train)
    if not has_rescans(train.volumes):   # the training subjects' volumes
        raise InputError("rescan: this dataset has no re-scans with the target protocol "
                         "(derivatives/phyjax-sim/sub-*/anat/*_desc-rescan_T1w.nii.gz); only "
                         "the embedded default dataset has them.")
    return RescanHarmonizer(name=name, fitted_on=(), target_site=train.target_site,
                            target_protocol=train.target_protocol(required=False),
                            grid_mm=train.grid_mm())
