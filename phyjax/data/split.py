"""Held out means held out, structurally: a subject split and the only training view of the data.

Every method's ``fit`` takes a :class:`TrainingSet`, which only :meth:`Split.training_set` can
build and which holds only the training subjects' volumes; every fitted method records the
subjects it saw (``fitted_on``); evaluation goes through :meth:`Split.held_out_subjects` and
:meth:`Split.check_rows`, which raise :class:`LeakageError` if a test subject was seen by any
fitted method.  The target protocol a method harmonizes to is read here, from the training
subjects' target-site scans, and nowhere else.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from phyjax.data import geometry
from phyjax.data.nifti import InputError
from phyjax.physics.sequences import Protocol


class LeakageError(RuntimeError):
    """A subject used to fit a method appears among the subjects it is evaluated on."""


def split_subjects(subjects, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split *by subject* into ``(train, test)``, both sorted and disjoint.

    Raises ValueError unless ``0 < n_test < len(subjects)``.
    """
    subjects = sorted(set(subjects))
    if not 0 < n_test < len(subjects):
        raise ValueError(f"n_test={n_test} must be between 1 and {len(subjects) - 1} "
                         f"for {len(subjects)} subjects.")
    order = np.random.default_rng(seed).permutation(len(subjects))
    test = sorted(subjects[i] for i in order[:n_test])
    train = sorted(s for s in subjects if s not in test)
    return train, test


@dataclasses.dataclass(frozen=True)
class Split:
    """Disjoint, sorted training and test subjects (split by subject, never by image or slice)."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self):
        train, test = tuple(sorted(set(self.train))), tuple(sorted(set(self.test)))
        if not train or not test:
            raise ValueError(f"a split needs training and test subjects (train={train}, "
                             f"test={test}).")
        both = sorted(set(train) & set(test))
        if both:
            raise LeakageError(f"subjects {both} are in both the training and the test split.")
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "test", test)

    @classmethod
    def by_subject(cls, subjects, n_test: int, seed: int) -> "Split":
        """Seeded split of ``subjects`` (:func:`split_subjects`)."""
        train, test = split_subjects(subjects, n_test, seed)
        return cls(tuple(train), tuple(test))

    def training_set(self, volumes: Mapping[str, Any], target_site: str,
                     target_protocol: Protocol | None = None) -> "TrainingSet":
        """The only way to obtain what fit functions accept: the training subjects' data
        (``target_protocol``: the target given as a protocol, not read from target scans)."""
        return TrainingSet(self, volumes, target_site, target_protocol, _token=_TOKEN)

    def held_out_subjects(self, fitted: Mapping[str, Any]) -> tuple[str, ...]:
        """The test subjects, after checking that no fitted method (``.fitted_on``) saw any."""
        for name, f in fitted.items():
            seen = sorted(set(self.test) & f.fitted_on)
            if seen:
                raise LeakageError(f"method {name!r} was fitted on test subject(s) {seen}.")
        return self.test

    def check_rows(self, rows: Iterable[Mapping], fitted: Mapping[str, Any]) -> None:
        """Every evaluation row is a test subject that the row's method has not seen."""
        for r in rows:
            subject, method = r["subject"], r["method"]
            if subject not in self.test:
                raise LeakageError(f"evaluation row for subject {subject!r} ({method}), which is "
                                   "not a test subject.")
            if method in fitted and subject in fitted[method].fitted_on:
                raise LeakageError(f"method {method!r} is evaluated on subject {subject!r}, "
                                   "which it was fitted on.")


_TOKEN = object()


class TrainingSet:
    """The training subjects' volumes ``{subject: {site: Volume}}`` (read-only) and the target site.

    Built only by :meth:`Split.training_set`; fit functions refuse anything else
    (:func:`require_training_set`).
    """

    def __init__(self, split: Split, volumes: Mapping[str, Any], target_site: str,
                 target_protocol: Protocol | None = None, *, _token=None):
        if _token is not _TOKEN:
            raise TypeError("build a TrainingSet with Split.training_set(volumes, target_site).")
        missing = [s for s in split.train if s not in volumes]
        if missing:
            raise ValueError(f"training subjects {missing} have no data.")
        self.subjects: tuple[str, ...] = split.train
        self.volumes = MappingProxyType({s: volumes[s] for s in split.train})
        self.target_site = target_site
        self._target_protocol = target_protocol

    @property
    def sites(self) -> list[str]:
        """Every site with a scan of a training subject, sorted (the target included)."""
        return sorted({site for v in self.volumes.values() for site in v})

    def target_scans(self) -> list:
        """The training subjects' target-site volumes (sorted by subject)."""
        return [self.volumes[s][self.target_site] for s in self.subjects
                if self.target_site in self.volumes[s]]

    def require_protocols(self, method: str, sites=None) -> None:
        """InputError naming ``method`` unless every training scan (of ``sites``, default all)
        has a complete protocol."""
        lacking = [v.path for vs in self.volumes.values() for site, v in vs.items()
                   if v.protocol is None and (sites is None or site in sites)]
        if lacking:
            raise InputError(f"{method} needs acquisition parameters, but {len(lacking)} training "
                             f"scan(s) lack them (e.g. {lacking[0]}; see protocols.tsv); "
                             "physics-free methods can still run.")

    def partition(self, subjects) -> tuple["TrainingSet", "TrainingSet"]:
        """``(rest, chosen)``: this set split into two TrainingSets by subject, ``chosen`` the
        training subjects ``subjects`` (same target site and target protocol).  ValueError
        unless ``subjects`` is a non-empty proper subset of :attr:`subjects`."""
        chosen = tuple(sorted(set(subjects)))
        unknown = sorted(set(chosen) - set(self.subjects))
        rest = tuple(s for s in self.subjects if s not in chosen)
        if unknown or not chosen or not rest:
            raise ValueError(f"partition({list(chosen)}) of the training subjects "
                             f"{list(self.subjects)}: must be a non-empty proper subset"
                             + (f"; not training subjects: {unknown}" if unknown else "") + ".")
        return tuple(TrainingSet(Split(a, b), self.volumes, self.target_site,
                                 self._target_protocol, _token=_TOKEN)
                     for a, b in ((rest, chosen), (chosen, rest)))

    def grid_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm, RAS axes) of the training images (those of the first scan; a
        dataset's volumes share one grid)."""
        first = next(v for s in self.subjects for v in self.volumes[s].values())
        return geometry.zooms(first.grid_affine())

    def target_protocol(self, required: bool = True) -> Protocol | None:
        """The target given as a protocol, else the protocol of the target scans (sidecars).

        Raises InputError when there is no given target and no target scan, when the target
        scans' protocols differ from each other or from the given target (a method harmonizes to
        one protocol; which one would be a silent guess), or -- with ``required`` -- when their
        sidecars lack acquisition parameters (else None then).
        """
        scans = self.target_scans()
        given = self._target_protocol
        if given is not None:
            for v in scans:
                if v.protocol is not None and not protocols_match(given, v.protocol):
                    raise InputError(
                        f"{v.path}: the target site {self.target_site!r} was scanned with "
                        f"{v.protocol}, not the given target protocol {given}; name another "
                        "target site (config.data.target_site) or give its protocol.")
            return given
        if not scans:
            raise InputError(f"no training subject has a scan from the target site "
                             f"{self.target_site!r}.")
        if any(v.protocol is None for v in scans):
            if not required:
                return None
            raise InputError(f"{self.target_site!r}: the target scans' sidecars lack acquisition "
                             "parameters (see protocols.tsv); only physics-free methods can run.")
        first = scans[0]
        for v in scans[1:]:
            if not protocols_match(first.protocol, v.protocol):
                raise InputError(
                    f"{v.path}: target protocol {v.protocol} differs from {first.path} "
                    f"({first.protocol}); the target site {self.target_site!r} must have one "
                    "protocol.")
        return first.protocol


def protocols_match(a: Protocol, b: Protocol, rtol: float = 1e-3) -> bool:
    """Same family and every numeric field equal to ``rtol`` (sidecar rounding)."""
    if a.sequence != b.sequence:
        return False
    return all(np.isclose(float(getattr(a, f)), float(getattr(b, f)), rtol=rtol, atol=1e-9)
               for f in ("tr", "te", "ti", "flip_angle", "field_strength", "tr_readout",
                         "n_readouts"))


def require_training_set(train) -> TrainingSet:
    """``train`` if it is a :class:`TrainingSet`; TypeError otherwise (a plain dict is refused)."""
    if not isinstance(train, TrainingSet):
        raise TypeError("fit functions take a TrainingSet from Split.training_set(volumes, "
                        f"target_site), got {type(train).__name__}.")
    return train
