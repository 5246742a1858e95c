"""ComBat as a method: site effects removed from feature tables (radiomic features, volumes).

ComBat harmonizes features, not images (``kind = "features"``).  ``fit`` needs the feature vector
of every training image, which the caller computes (``features(subject, site) -> (F,)``: the
benchmark passes radiomic features followed by tissue volumes); only training subjects' rows are
used.  :meth:`ComBatHarmonizer.transform` maps features of any site into the target site's space.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from phyjax.baselines import ComBat
from phyjax.data.split import TrainingSet, require_training_set
from phyjax.methods.base import Harmonizer, base_fields, fitted_fields, register


class ComBatHarmonizer(Harmonizer):
    """Fitted :class:`phyjax.baselines.ComBat`, mapping into the target site (``to_site``)."""

    kind = "features"

    def __init__(self, combat: ComBat, **base):
        super().__init__(**base)
        self.combat = combat

    def transform(self, features: np.ndarray, sites) -> np.ndarray:
        return self.combat.transform(features, sites, to_site=self.target_site)

    def save_state(self, directory: str) -> dict:
        self.combat.save(os.path.join(directory, "combat"))
        return {}

    @classmethod
    def load_state(cls, directory: str, meta: dict) -> "ComBatHarmonizer":
        return cls(ComBat.load(os.path.join(directory, "combat")), **base_fields(meta))


def options(config) -> dict:
    if "combat" not in config:
        return {}
    c = config.combat
    return dict(eb=c.eb, parametric=c.parametric, mean_only=c.mean_only)


@register("combat", harmonizer=ComBatHarmonizer)
def fit(config, train: TrainingSet, name: str = "combat", *,
        features: Callable[[str, str], np.ndarray] | None = None, **_) -> ComBatHarmonizer:
    """ComBat on ``features(subject, site)`` of every training image.

    Raises ValueError when ``features`` is not given, or (from :class:`ComBat`) when a site has
    fewer than 2 training images.
    """
    train = require_training_set(train)
    if features is None:
        raise ValueError("ComBat harmonizes feature tables: pass features=(subject, site) -> vector.")
    keys = [(s, site) for s in train.subjects for site in sorted(train.volumes[s])]
    table = np.stack([features(*k) for k in keys])
    combat = ComBat(**options(config)).fit(table, [site for _, site in keys])
    return ComBatHarmonizer(combat, **fitted_fields(train, name, needs_protocol=False))
