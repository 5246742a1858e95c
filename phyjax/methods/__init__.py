"""Harmonization methods behind one interface (:mod:`phyjax.methods.base`).

    harmonizer = methods.fit(name, config, train, workdir=..., progress=...)
    image = harmonizer.harmonize(volume)            # or .transform(features, sites)
    methods.save(harmonizer, folder); methods.load(folder)

Registered: intensity baselines (none, zscore, histmatch, nyul, whitestripe), ComBat (features),
the supervised U-Net and PhyCHarm (``phycharm``: pairs as configured; ``phycharm_unpaired``:
physics-made pairs only), and ``rescan``: not a method but the ceiling -- an independent re-scan
with the target protocol, where the data has one (the default dataset).  A new method is a module with a ``fit`` function decorated by
:func:`~phyjax.methods.base.register` and a :class:`~phyjax.methods.base.Harmonizer` subclass.
"""

from __future__ import annotations

from phyjax.methods import (combat, cyclegan, intensity, phycharm, pix2pix,  # noqa: F401
                            rescan, unet)
from phyjax.methods.base import FIT, KINDS, Harmonizer, load, save

#: every registered method, in the order reports list them
AVAILABLE = ("none", "zscore", "histmatch", "nyul", "whitestripe", "combat", "unet", "phycharm",
             "phycharm_unpaired", "pix2pix", "cyclegan_radiomics", "cyclegan_radiomics_noseg",
             "cyclegan_radiomics_norf", "rescan")
assert set(AVAILABLE) == set(FIT), (AVAILABLE, tuple(FIT))


def fit(name: str, config, train, **context) -> Harmonizer:
    """Fit method ``name`` on ``train`` (a TrainingSet).  ``context``: ``workdir``, ``progress``,
    ``has_maps`` (networks), ``features`` (ComBat).  Raises ValueError for an unknown name."""
    if name not in FIT:
        raise ValueError(f"unknown method {name!r}; available: {list(FIT)}.")
    return FIT[name](config, train, name=name, **context)


__all__ = ["AVAILABLE", "Harmonizer", "KINDS", "fit", "load", "save"]
