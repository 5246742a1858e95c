"""Intensity baselines as methods: none, z-score, histogram matching, Nyúl, WhiteStripe.

Each is fitted on the target-site images of the training subjects (:mod:`phyjax.baselines`) and
maps a source image into the target's intensity units.  Options come from the config section
named after the method when there is one (``config.nyul``, ``config.whitestripe``).
"""

from __future__ import annotations

import os

import numpy as np

from phyjax.baselines import BASELINES
from phyjax.data.split import TrainingSet, require_training_set
from phyjax.data.volumes import Volume
from phyjax.methods.base import Harmonizer, base_fields, fitted_fields, register

NAMES = ("none", "zscore", "histmatch", "nyul", "whitestripe")


def options(config, name: str) -> dict:
    """Constructor options of baseline ``name`` from ``config`` (defaults where absent)."""
    if name == "nyul" and "nyul" in config:
        n = config.nyul
        return dict(min_percentile=n.min_percentile, max_percentile=n.max_percentile, step=n.step)
    if name == "whitestripe" and "whitestripe" in config:
        return dict(width=config.whitestripe.width)
    return {}


class IntensityHarmonizer(Harmonizer):
    """A fitted :mod:`phyjax.baselines` intensity mapping applied inside the source mask."""

    def __init__(self, baseline, **base):
        super().__init__(**base)
        self.baseline = baseline

    def harmonize(self, volume: Volume) -> np.ndarray:
        return np.asarray(self.baseline(volume.image, volume.mask), np.float32)

    def save_state(self, directory: str) -> dict:
        self.baseline.save(os.path.join(directory, "baseline"))
        return {}

    @classmethod
    def load_state(cls, directory: str, meta: dict) -> "IntensityHarmonizer":
        baseline = BASELINES[meta["method"]].load(os.path.join(directory, "baseline"))
        return cls(baseline, **base_fields(meta))


@register(*NAMES, harmonizer=IntensityHarmonizer)
def fit(config, train: TrainingSet, name: str, **_) -> IntensityHarmonizer:
    """Fit intensity baseline ``name`` on the training subjects' target-site images."""
    train = require_training_set(train)
    if name not in BASELINES:
        raise ValueError(f"unknown image baseline {name!r}; available: {sorted(BASELINES)}.")
    scans = train.target_scans()
    baseline = BASELINES[name](**options(config, name)).fit([v.image for v in scans],
                                                            [v.mask for v in scans])
    return IntensityHarmonizer(baseline, **fitted_fields(train, name, needs_protocol=False))
