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


def protocol_to_json(p: Protocol) -> dict:
    """Exact, unit-explicit JSON of a protocol (floats round-trip through ``repr``)."""
    return {"sequence": p.sequence, "tr_s": float(p.tr), "te_s": float(p.te), "ti_s": float(p.ti),
            "flip_angle_rad": float(p.flip_angle), "field_strength_t": float(p.field_strength),
            "tr_readout_s": float(p.tr_readout), "n_readouts": float(p.n_readouts)}


def protocol_from_json(d: dict) -> Protocol:
    return Protocol(tr=d["tr_s"], te=d["te_s"], ti=d["ti_s"], flip_angle=d["flip_angle_rad"],
                    field_strength=d["field_strength_t"], tr_readout=d.get("tr_readout_s", 0.0),
                    n_readouts=d.get("n_readouts", 0.0), sequence=d["sequence"])


class Harmonizer(abc.ABC):
    """A fitted harmonization method.

    Attributes:
      name: the registered method name.
      kind: ``"image"`` or ``"features"``.
      fitted_on: subjects whose data fitted it (checked by :class:`~phyjax.data.split.Split`).
      target_site: label of the target site in the training data.
      target_protocol: the protocol it harmonizes to.
      voxel_size_mm: voxel size of the training images (None: any resolution).
    """

    kind = "image"

    def __init__(self, name: str, fitted_on, target_site: str, target_protocol: Protocol,
                 voxel_size_mm: float | None = None):
        self.name = name
        self.fitted_on = frozenset(fitted_on)
        self.target_site = target_site
        self.target_protocol = target_protocol
        self.voxel_size_mm = voxel_size_mm

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
                "target_protocol": protocol_to_json(self.target_protocol),
                "voxel_size_mm": self.voxel_size_mm}


def save(harmonizer: Harmonizer, directory: str) -> str:
    """Write ``harmonizer`` into ``directory`` (replaced as a whole, atomically).  Returns it."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".saving-", dir=parent)
    meta = harmonizer.meta()
    meta["state"] = harmonizer.save_state(tmp)
    with open(os.path.join(tmp, META), "w") as f:
        json.dump(meta, f, indent=2)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)
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
    if meta.get("method") not in KINDS:
        raise InputError(f"{path}: unknown method {meta.get('method')!r}; known: {sorted(KINDS)}.")
    return KINDS[meta["method"]].load_state(directory, meta)


def fitted_fields(train, name: str, **extra) -> dict:
    """Constructor arguments of :class:`Harmonizer` from the TrainingSet a method was fitted on."""
    return {"name": name, "fitted_on": train.subjects, "target_site": train.target_site,
            "target_protocol": train.target_protocol(), "voxel_size_mm": train.voxel_size_mm(),
            **extra}


def base_fields(meta: dict) -> dict:
    """Constructor arguments of :class:`Harmonizer` from a ``harmonizer.json``."""
    return {"name": meta["method"], "fitted_on": meta["fitted_on"],
            "target_site": meta["target_site"],
            "target_protocol": protocol_from_json(meta["target_protocol"]),
            "voxel_size_mm": meta.get("voxel_size_mm")}
