"""The one interface every harmonization method implements.

A method is a module with a ``fit`` function registered under its name (:func:`register`)::

    harmonizer = fit(config, train, workdir=..., progress=True)   # train: data.split.TrainingSet

``fit`` sees only the training subjects (a :class:`~phyjax.data.split.TrainingSet`, which only a
:class:`~phyjax.data.split.Split` can build) and returns a :class:`Harmonizer`: a fitted object
that knows its target (site and protocol, read from the training set's target scans), the
subjects it was fitted on, and everything it needs to harmonize -- so that :func:`save` and
:func:`load` carry it to another process, where it harmonizes identically.

Two kinds (scikit-learn's fit/transform split):

* ``kind = "image"``: :meth:`Harmonizer.harmonize` maps a :class:`~phyjax.data.volumes.Volume`
  (normalized image, mask, protocol) to an image in the target protocol's units;
* ``kind = "features"``: :meth:`Harmonizer.transform` maps a feature table (ComBat).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np

from phyjax import __version__
from phyjax.data.nifti import InputError
from phyjax.data.volumes import Volume
from phyjax.physics.sequences import Protocol

FORMAT = 1
META = "harmonizer.json"

#: name -> fit function (filled by :func:`register`)
FIT: dict[str, Callable] = {}
#: name -> Harmonizer subclass that loads it
KINDS: dict[str, type] = {}


def register(*names: str, harmonizer: type):
    """Decorator: register a ``fit`` function under ``names``, loaded back as ``harmonizer``."""

    def wrap(fit_fn):
        for n in names:
            FIT[n] = fit_fn
            KINDS[n] = harmonizer
        return fit_fn

    return wrap


#: JSON key of each numeric Protocol field, with its unit (SI; the flip angle in rad)
_PROTOCOL_KEYS = {"tr": "tr_s", "te": "te_s", "ti": "ti_s", "flip_angle": "flip_angle_rad",
                  "field_strength": "field_strength_t", "tr_readout": "tr_readout_s",
                  "n_readouts": "n_readouts"}


def protocol_to_json(p: Protocol) -> dict:
    """Exact, unit-explicit JSON of every field of a protocol (floats round-trip via ``repr``).

    Raises ValueError if :class:`Protocol` has a field this module does not know (so a new
    field is never silently dropped from saved harmonizers).
    """
    names = {f.name for f in dataclasses.fields(p)} - {"sequence"}
    if names != set(_PROTOCOL_KEYS):
        raise ValueError(f"Protocol fields {sorted(names ^ set(_PROTOCOL_KEYS))} have no JSON key.")
    return {"sequence": p.sequence, **{k: float(getattr(p, f)) for f, k in _PROTOCOL_KEYS.items()}}


def protocol_from_json(d: dict) -> Protocol:
    return Protocol(sequence=d["sequence"],
                    **{f: d[k] for f, k in _PROTOCOL_KEYS.items() if k in d})


class Harmonizer(abc.ABC):
    """A fitted harmonization method.

    Attributes:
      name: the registered method name.
      kind: ``"image"`` or ``"features"``.
      fitted_on: subjects whose data fitted it (checked by :class:`~phyjax.data.split.Split`).
      target_site: label of the target site in the training data.
      target_protocol: the protocol it harmonizes to.
      grid_mm: voxel edge lengths (mm) of the training images' axis-aligned RAS grid; harmonize
        mode resamples its input onto that grid (None: any grid).
    """

    kind = "image"

    def __init__(self, name: str, fitted_on, target_site: str, target_protocol: Protocol,
                 grid_mm=None):
        self.name = name
        self.fitted_on = frozenset(fitted_on)
        self.target_site = target_site
        self.target_protocol = target_protocol
        self.grid_mm = tuple(grid_mm) if grid_mm is not None else None

    def harmonize(self, volume: Volume) -> np.ndarray:
        """``(X, Y, Z)`` float32 image of ``volume`` in the target's units, 0 outside its mask."""
        raise TypeError(f"method {self.name!r} harmonizes {self.kind}, not images.")

    def transform(self, features: np.ndarray, sites) -> np.ndarray:
        """``(n, F)`` feature table of images from ``sites`` mapped into the target site's."""
        raise TypeError(f"method {self.name!r} harmonizes {self.kind}, not feature tables.")

    @abc.abstractmethod
    def save_state(self, directory: str) -> dict:
        """Write what the method learned into ``directory``; return JSON-able extra metadata."""

    @classmethod
    @abc.abstractmethod
    def load_state(cls, directory: str, meta: dict) -> "Harmonizer":
        """Inverse of :meth:`save_state` (``meta`` is the whole ``harmonizer.json``)."""

    def meta(self) -> dict:
        return {"format": FORMAT, "phyjax_version": __version__, "method": self.name,
                "kind": self.kind, "fitted_on": sorted(self.fitted_on),
                "target_site": self.target_site,
                "target_protocol": (protocol_to_json(self.target_protocol)
                                    if self.target_protocol is not None else None),
                "grid_mm": self.grid_mm}


def save(harmonizer: Harmonizer, directory: str) -> str:
    """Write ``harmonizer`` into ``directory``, replacing any earlier one.  Returns it.

    Written into a temporary sibling folder first and swapped in by renames, so an interrupted
    save leaves either the old harmonizer or the new one, never a half-written folder.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".saving-", dir=parent)
    old = None
    try:
        os.chmod(tmp, 0o755)
        meta = harmonizer.meta()
        meta["state"] = harmonizer.save_state(tmp)
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
            os.replace(directory, os.path.join(old, "harmonizer"))
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def load(directory: str) -> Harmonizer:
    """The harmonizer :func:`save` wrote into ``directory``.

    Raises InputError naming the folder when there is none, or it names an unknown method.
    """
    path = os.path.join(directory, META)
    if not os.path.exists(path):
        raise InputError(f"{directory}: no fitted harmonizer here ({META} missing); fit one first.")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: harmonizer format {meta.get('format')!r}; this phyjax "
                         f"({__version__}) reads format {FORMAT}.")
    if meta.get("method") not in KINDS:
        raise InputError(f"{path}: unknown method {meta.get('method')!r}; known: {sorted(KINDS)}.")
    return KINDS[meta["method"]].load_state(directory, meta)


def fitted_fields(train, name: str, needs_protocol: bool = True) -> dict:
    """Constructor arguments of :class:`Harmonizer` from the TrainingSet a method was fitted on
    (``target_protocol`` None for a physics-free method on data without acquisition parameters)."""
    return {"name": name, "fitted_on": train.subjects, "target_site": train.target_site,
            "target_protocol": train.target_protocol(required=needs_protocol),
            "grid_mm": train.grid_mm()}


def base_fields(meta: dict) -> dict:
    """Constructor arguments of :class:`Harmonizer` from a ``harmonizer.json``."""
    return {"name": meta["method"], "fitted_on": meta["fitted_on"],
            "target_site": meta["target_site"],
            "target_protocol": (protocol_from_json(meta["target_protocol"])
                                if meta["target_protocol"] is not None else None),
            "grid_mm": meta.get("grid_mm")}
