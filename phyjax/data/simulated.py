"""Training pairs made by the physics: no traveling subjects needed.

A user's multi-site data almost never has the same person scanned at every site.  The physics
makes exact pairs instead: the training set's own source protocols (read from their sidecars)
and the target protocol -- or a documented range of targets, so that one model harmonizes to
any of them -- are simulated on anatomies phyjax ships (:mod:`phyjax.data.synthetic`:
deformations of the MNI152 2009a tissue maps, with their own seeds, disjoint from the default
dataset's subjects), each source with randomly drawn scanner effects (B1+, bias field, Rician
noise, slice profile; :func:`phyjax.physics.scanner.sample_scanner_effects`).  The targets are
clean: the harmonization goal is the target protocol without the scanner's artefacts.

:class:`SimulatedPairs` holds the 2.5-D slices of these pairs in the layout the slice networks
train on (:mod:`phyjax.data.slices`); :class:`SourceSlices` holds a user's real, unpaired scans
(no target image) for the self-supervised physics-consistency adaptation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from phyjax.data import synthetic
from phyjax.data.nifti import InputError
from phyjax.data.slices import (check_views, view_brain_slices, view_cycle, view_grids,
                                view_key)
from phyjax.data.split import protocols_match
from phyjax.data.store import SliceStore
from phyjax.data.volumes import Volume, normalize, profile_fwhm
from phyjax.parallel import ordered_map
from phyjax.physics import scanner, units
from phyjax.physics.sequences import Protocol

#: The target protocols one model is trained for when ``config.target.randomize`` is on
#: (times in s, flip angles in degrees, B0 in T; drawn uniformly, B0 from its two values).
#: MPRAGE-like spans product and research 3-D inversion-prepared T1w (ADNI, HCP, ABCD, UK
#: Biobank, 1.5 T clinical); SPGR spans 3-D RF-spoiled T1w (FLASH/SPGR/T1-FFE).
TARGET_RANGES = {
    "mprage": {"tr": (1.8, 2.8), "ti": (0.6, 1.2), "te": (0.0015, 0.005),
               "flip_angle": (6.0, 12.0), "field_strength": (1.5, 3.0)},
    "spgr": {"tr": (0.008, 0.03), "te": (0.002, 0.006), "flip_angle": (10.0, 35.0),
             "field_strength": (1.5, 3.0)},
}

#: Scanner effects drawn for every simulated source scan (see ``sample_scanner_effects``):
#: B1+ 0.85-1.15, up to 20 % centre-to-corner B1+ drop, 0-30 % bias, 1-5 % Rician noise.
EFFECT_RANGES = {"b1_scale": (0.85, 1.15), "b1_curvature": (0.0, 0.2),
                 "bias_amplitude": (0.0, 0.3), "noise_fraction": (0.01, 0.05),
                 "slice_fwhm": (0.0, 1.5), "gain": (0.5, 2.0)}

#: Anatomy seeds start here, far from the default dataset's ``seed * 1000 + i``.
ANATOMY_SEED = 7_000_000


def _field(p: Protocol, name: str) -> float:
    value = float(getattr(p, name))
    return float(units.rad2deg(value)) if name == "flip_angle" else value


def target_range(target: Protocol, randomize: bool) -> dict | None:
    """The targets a model trained for ``target`` accepts: ``{"sequence", field: (lo, hi)}``.

    ``randomize`` False: ``target`` only (a point range).  Raises InputError when ``target``
    itself lies outside :data:`TARGET_RANGES` (or its family has none) while ``randomize``.
    """
    if not randomize:
        return {"sequence": target.sequence,
                **{k: (_field(target, k), _field(target, k))
                   for k in TARGET_RANGES.get(target.sequence, TARGET_RANGES["mprage"])}}
    if target.sequence not in TARGET_RANGES:
        raise InputError(f"target family {target.sequence!r}: no documented range to train "
                         f"over (families: {sorted(TARGET_RANGES)}); set config.target.randomize"
                         "=False to train for this one protocol.")
    out = {"sequence": target.sequence, **TARGET_RANGES[target.sequence]}
    problems = range_problems(target, out)
    if problems:
        raise InputError(f"the configured target is outside the documented range: {problems}.")
    return out


def range_problems(p: Protocol, accepted: dict, rtol: float = 1e-3) -> list[str]:
    """Why ``p`` lies outside ``accepted`` (from :func:`target_range`); empty when inside."""
    if p.sequence != accepted["sequence"]:
        return [f"family {p.sequence!r} (trained for {accepted['sequence']!r})"]
    out = []
    for name, bounds in accepted.items():
        if name == "sequence":
            continue
        (lo, hi), v = bounds, _field(p, name)
        tol = rtol * max(abs(lo), abs(hi), 1e-9)
        if not lo - tol <= v <= hi + tol:
            unit = {"flip_angle": "deg", "field_strength": "T"}.get(name, "s")
            span = f"{lo:g} {unit}" if lo == hi else f"{lo:g}-{hi:g} {unit}"
            out.append(f"{name} {v:g} {unit} (trained for {span})")
    return out


def sample_targets(target: Protocol, n: int, seed: int) -> list[Protocol]:
    """``target`` followed by ``n - 1`` protocols drawn uniformly from its family's range."""
    rng = np.random.default_rng([seed, 12])
    ranges = TARGET_RANGES[target.sequence]
    out = [target]
    for _ in range(n - 1):
        v = {k: float(rng.uniform(*ranges[k])) for k in ranges if k != "field_strength"}
        v["field_strength"] = float(rng.choice(ranges["field_strength"]))
        out.append(Protocol.from_degrees(target.sequence, tr=v["tr"], te=v["te"],
                                         ti=v.get("ti", 0.0), flip_angle_deg=v["flip_angle"],
                                         field_strength=v["field_strength"]))
    return out


#: Readout trains given to randomized MPRAGE-family sources (:func:`sample_sources`): excitation
#: TR (s) and pulses per inversion, spanning product MPRAGE, BRAVO and TFE protocols.
READOUT_RANGES = {"tr_readout": (0.006, 0.010), "n_readouts": (96, 256)}


def sample_sources(protocols, n: int, seed: int) -> list[Protocol]:
    """Domain randomisation of the source protocols: ``n`` protocols per family among
    ``protocols`` (those of :data:`TARGET_RANGES`), drawn uniformly from the family's range
    (B0 from its two values); MPRAGE-family ones also get a readout train from
    :data:`READOUT_RANGES`, its length cut to fit both TI and TR - TI (the k-space centre in
    the middle of the train).  Training on them, beside the user's own protocols, teaches the
    generator the signal equation rather than a few protocols' look."""
    families = sorted({p.sequence for p in protocols} & set(TARGET_RANGES))
    rng = np.random.default_rng([seed, 13])
    out = []
    for k, family in enumerate(families):
        first = next(p for p in protocols if p.sequence == family)
        for p in sample_targets(first, n + 1, seed * 100 + k + 1)[1:]:
            if family == "mprage":
                tau = float(rng.uniform(*READOUT_RANGES["tr_readout"]))
                fit = int(2 * min(float(p.ti), float(p.tr) - float(p.ti)) / tau)
                count = min(int(rng.integers(*READOUT_RANGES["n_readouts"])), fit)
                if count >= 2:
                    p = p.replace(tr_readout=tau, n_readouts=float(count))
            out.append(p)
    return out


def distinct(protocols) -> list[Protocol]:
    """``protocols`` without repeats (same family and every numeric field to 0.1 %), in order."""
    out: list[Protocol] = []
    for p in protocols:
        if not any(protocols_match(p, q) for q in out):
            out.append(p)
    return out


@dataclasses.dataclass
class Anatomy:
    """One simulated head: tissue probabilities ``(3, X, Y, Z)``, its value jitter, and how
    partial-volume voxels are imaged (:data:`phyjax.data.synthetic.PARTIAL_VOLUME`)."""

    probs: np.ndarray
    factors: np.ndarray
    texture: np.ndarray
    partial_volume: str = "parameter"

    @property
    def mask(self) -> np.ndarray:
        return self.probs.sum(0) > 0.5

    def maps(self, field_strength: float) -> dict[str, np.ndarray]:
        return synthetic.quantitative_maps(self.probs, self.factors, self.texture,
                                           float(field_strength), self.partial_volume)


def anatomies(n: int, seed: int, voxel_size: int, deform_mm: float, jitter: float,
              texture: float, atrophy_max: float = 0.0,
              partial_volume: str = "parameter", first: int = 0) -> list[Anatomy]:
    """``n`` heads at ``voxel_size`` mm, seeds ``ANATOMY_SEED + 1000 seed + k`` for ``k`` from
    ``first`` (another ``first`` range gives other heads: :data:`CALIBRATION_HEADS_FIRST`);
    atrophy and partial volume as :func:`phyjax.data.synthetic.make_subject` and
    :func:`~phyjax.data.synthetic.quantitative_maps`."""
    probs, _, _ = synthetic.load_anatomy(voxel_size)
    return [Anatomy(*synthetic.make_subject(probs, ANATOMY_SEED + 1000 * seed + k, deform_mm,
                                            voxel_size, jitter, texture, atrophy_max),
                    partial_volume=partial_volume) for k in range(first, first + n)]


#: The first anatomy index (:func:`anatomies` ``first``) of the physics-made heads that site
#: maps are learned on (:func:`calibration_volumes`): past any training set's
#: ``config.train.n_anatomies``, so the maps' heads are never heads the network trained on.
CALIBRATION_HEADS_FIRST = 500


#: ``config.train.slice_profile``: ``drawn`` -- every simulated source's slice profile from
#: :data:`EFFECT_RANGES` (0-1.5 voxels along the last axis); ``sidecar`` -- a source protocol of
#: the training set takes its scans' own ``SliceThickness`` and slice direction
#: (:func:`slice_profiles`), the drawn sources and the target keep the drawn one.
SLICE_PROFILES = ("drawn", "sidecar")


def check_slice_profile(value, key: str = "config.train.slice_profile") -> str:
    """``value`` if one of :data:`SLICE_PROFILES`, else InputError naming ``key``."""
    if value not in SLICE_PROFILES:
        raise InputError(f"{key}={value!r}; expected one of {SLICE_PROFILES}.")
    return value


def slice_profiles(sources, scans, voxel_mm: float) -> list:
    """Per protocol of ``sources``, the slice profile of the training scans acquired with it,
    on an anatomy grid of ``voxel_mm``: ``(fwhm, axis)`` -- the median over those scans of
    their slice profile in mm (``SliceThickness`` where it exceeds the scan's own voxel along
    its slice axis, :meth:`~phyjax.data.volumes.Volume.slice_fwhm`; else 0: the voxel is the
    profile, and the anatomy grid has its own) over ``voxel_mm``, 0 where that is no wider than
    one voxel, along the scans' most common slice axis -- or None where no scan has the
    protocol or any of them lacks a thickness (that source's profile is then drawn).

    ``scans``: :class:`~phyjax.data.volumes.Volume` objects with a protocol."""
    out = []
    for p in sources:
        own = [v for v in scans if v.protocol is not None and protocols_match(v.protocol, p)]
        if not own or any(v.slice_thickness_mm is None for v in own):
            out.append(None)
            continue
        mm = [float(v.slice_thickness_mm) if v.slice_fwhm() > 0 else 0.0 for v in own]
        axes = [v.slice_axis for v in own]
        out.append((profile_fwhm(np.median(mm), voxel_mm), max(set(axes), key=axes.count)))
    return out


def source_effects(key, profile=None, fixed=None) -> tuple[scanner.ScannerEffects, int]:
    """``(effects, slice axis)`` of one simulated source scan: every effect drawn from
    :data:`EFFECT_RANGES` with ``key``, or ``fixed`` (a site's own, known or fitted,
    :func:`fit_site_effects`) where given; ``profile`` ``(fwhm, axis)`` (FWHM in voxels of the
    anatomy's grid along voxel axis ``axis``, e.g. the site's own ``SliceThickness``) replaces
    their slice profile (else along the last axis).  The same key draws the same other
    effects either way."""
    effects = scanner.sample_scanner_effects(key, **EFFECT_RANGES) if fixed is None else fixed
    if profile is None:
        return effects, -1
    fwhm, axis = profile
    return effects.replace(slice_fwhm=float(fwhm)), int(axis)


class SimulatedPairs:
    """2.5-D slices of every source protocol and every target protocol on shared anatomies,
    kept on disk (a :class:`~phyjax.data.store.SliceStore` in a temporary folder in
    ``directory``) and read per batch.

    Attributes:
      sources, targets: the simulated protocols; a batch pairs ``sources[p]`` with
        ``targets[q]`` on the same slices.
      views: slicing planes (:data:`phyjax.data.slices.VIEWS`); batch ``i`` is sliced in
        ``views[i % len(views)]``.
      rows: ``(N, 2)`` ``(anatomy, slice)`` of every brain slice of the first view;
        ``view_rows[view]`` those of every view.
      pads, padded: as :func:`phyjax.data.slices.grid` (the first view's); ``grids[view]``
        every view's.
    Images are normalized like real scans (:func:`phyjax.data.volumes.normalize`); ``t1`` is in
    s at the source's B0, ``m0`` the PD fraction.  ``slice_profiles`` (one per source, or None
    for all): ``(fwhm, axis)`` of a source's own slice profile (:func:`source_effects`), or None
    to draw it from :data:`EFFECT_RANGES`; kept as the attribute of that name.
    """

    def __init__(self, sources, targets, heads: list[Anatomy], depth: int, min_fraction: float,
                 context: int, seed: int, progress: bool = False, directory: str | None = None,
                 views=("axial",), slice_profiles=None):
        self.sources, self.targets, self.context = list(sources), list(targets), context
        profiles = list(slice_profiles) if slice_profiles is not None else [None] * len(sources)
        if len(profiles) != len(self.sources):
            raise ValueError(f"{len(profiles)} slice profiles for {len(self.sources)} sources")
        self.slice_profiles = profiles
        self.views = check_views(views)
        self.grids = view_grids(heads[0].probs.shape[1:], depth, self.views)
        self.pads, self.padded = self.grids[self.views[0]]
        self.store = SliceStore.temporary(directory, self.pads, prefix=".simulated-")
        key = jax.random.key(ANATOMY_SEED + seed)
        clean = scanner.ScannerEffects()
        bar = tqdm(total=len(heads) * (len(self.sources) + len(self.targets)), disable=not progress,
                   desc="simulating training pairs")
        rows = {view: [] for view in self.views}
        for a, head in enumerate(heads):
            mask = head.mask
            maps = {b0: head.maps(b0) for b0 in sorted({float(p.field_strength)
                                                        for p in self.sources + self.targets})}
            for p_i, p in enumerate(self.sources):
                k = jax.random.fold_in(jax.random.fold_in(key, a), p_i)
                k_fx, k_acq = jax.random.split(k)
                effects, axis = source_effects(k_fx, profiles[p_i])
                image = synthetic.acquire(maps[float(p.field_strength)], mask, p, effects, k_acq,
                                          slice_axis=axis)
                self.store.add_views(f"{a}/source{p_i}", normalize(image, mask), self.grids)
                self.store.add_views(f"{a}/t1_{p_i}", maps[float(p.field_strength)]["t1"],
                                     self.grids)
                bar.update()
            for q_i, q in enumerate(self.targets):
                image = synthetic.acquire(maps[float(q.field_strength)], mask, q, clean,
                                          jax.random.fold_in(key, 10_000 + a))
                self.store.add_views(f"{a}/target{q_i}", normalize(image, mask), self.grids)
                bar.update()
            self.store.add_views(f"{a}/mask", mask, self.grids)
            self.store.add_views(f"{a}/m0", maps[min(maps)]["pd"] * mask, self.grids)
            for view, zs in view_brain_slices(mask, min_fraction, self.views).items():
                rows[view] += [(a, z) for z in zs]
        bar.close()
        self.view_rows = {v: np.asarray(r, int).reshape(-1, 2) for v, r in rows.items()}
        self.rows = self.view_rows[self.views[0]]

    def __len__(self) -> int:
        return len(self.rows)

    def view_of(self, i: int) -> str:
        """The slicing plane of batch ``i``."""
        return view_cycle(i, 1, self.views)

    def slices(self, idx, p: int, q: int, view: str = "axial") -> dict[str, np.ndarray]:
        """Rows ``idx`` of ``view``: ``source (n, H, W, 2 context + 1)`` of ``sources[p]``,
        its ``t1``, ``target`` of ``targets[q]``, ``mask``, ``m0`` ``(n, H, W, 1)``."""
        rows = self.view_rows[view][np.asarray(idx)]
        g = self.store.gather

        def key(name):
            return lambda a: view_key(f"{a}/{name}", view)

        return {"source": g(rows, key(f"source{p}"), self.context),
                "target": g(rows, key(f"target{q}")), "mask": g(rows, key("mask")),
                "t1": g(rows, key(f"t1_{p}")), "m0": g(rows, key("m0"))}

    def batch(self, i: int, batch_size: int, seed: int, view: str | None = None
              ) -> tuple[dict, int, int]:
        """Batch ``i`` (a pure function of ``i``, ``seed`` and ``view``, default
        :meth:`view_of` ``(i)``): ``(arrays, p, q)``."""
        rng = np.random.default_rng([seed, i, 1])
        p = int(rng.integers(len(self.sources)))
        q = int(rng.integers(len(self.targets)))
        view = view or self.view_of(i)
        n = len(self.view_rows[view])
        idx = rng.choice(n, size=batch_size, replace=n < batch_size)
        return self.slices(idx, p, q, view), p, q


class SourceSlices:
    """A training set's real scans as 2.5-D source slices with masks, grouped by protocol (scans
    of one site may differ: each slice is re-synthesized through its own scan's protocol).  The
    slices live on disk (:class:`~phyjax.data.store.SliceStore` in a temporary folder in
    ``directory``), so memory holds one batch whatever the number of subjects."""

    def __init__(self, train, sites, depth: int, min_fraction: float, context: int,
                 directory: str | None = None, views=("axial",)):
        scans = [train.volumes[s][site] for s in train.subjects for site in sites
                 if site in train.volumes[s]]
        if not scans:
            raise InputError(f"no training scan from the sites {list(sites)} to adapt to.")
        self.views = check_views(views)
        self.grids = view_grids(scans[0].image.shape, depth, self.views)
        self.pads, self.padded = self.grids[self.views[0]]
        self.context = context
        self.protocols = distinct(v.protocol for v in scans)
        self.store = SliceStore.temporary(directory, self.pads, prefix=".slices-")
        rows = {(g, view): [] for g in range(len(self.protocols)) for view in self.views}
        for k, v in enumerate(scans):
            g = next(i for i, p in enumerate(self.protocols) if protocols_match(v.protocol, p))
            self.store.add_views(f"{k}/image", v.image, self.grids)
            self.store.add_views(f"{k}/mask", v.mask, self.grids)
            for view, zs in view_brain_slices(v.mask, min_fraction, self.views).items():
                rows[(g, view)] += [(k, z) for z in zs]
        self.view_rows = {key: np.asarray(r, int).reshape(-1, 2) for key, r in rows.items()}
        self.rows = [self.view_rows[(g, self.views[0])] for g in range(len(self.protocols))]

    def view_of(self, i: int) -> str:
        """The slicing plane of batch ``i`` (cycling after the protocol groups)."""
        return view_cycle(i, len(self.protocols), self.views)

    def batch(self, i: int, batch_size: int, seed: int) -> tuple[dict, int]:
        """Batch ``i`` of one protocol group (cycling through them): ``(arrays, group)``."""
        g, view = i % len(self.protocols), self.view_of(i)
        n = len(self.view_rows[(g, view)])
        idx = np.random.default_rng([seed, i, 2]).choice(n, size=batch_size,
                                                         replace=n < batch_size)
        rows = self.view_rows[(g, view)][idx]
        x = self.store.gather(rows, lambda k: view_key(f"{k}/image", view), self.context)
        mask = self.store.gather(rows, lambda k: view_key(f"{k}/mask", view))
        zeros = np.zeros(mask.shape, np.float32)
        return ({"source": x, "target": zeros, "mask": mask, "t1": zeros + 1.0, "m0": zeros}, g)


def calibration_volumes(sources, site_names, target: Protocol, target_site: str,
                        heads: list[Anatomy], affine: np.ndarray, seed: int,
                        slice_profiles=None, progress: bool = False,
                        effects=None) -> dict[str, dict]:
    """Traveling subjects made by the physics, to learn site maps on
    (``config.model.calibrate_simulated``; :func:`phyjax.methods.calibration.fit_calibrated`):
    ``{"physics-NN": {site: Volume}}``, every head of ``heads`` imaged with every protocol of
    ``sources`` (stored under ``site_names``, one per source: the training site it stands for)
    and with ``target`` (under ``target_site``).

    Each source scan draws its scanner effects from :data:`EFFECT_RANGES` (B1+, bias field,
    Rician noise, gain; the slice profile too, unless ``slice_profiles`` gives that source's
    ``(fwhm, axis)``, :func:`slice_profiles`) -- or, where ``effects`` (one per source, or
    None) gives a :class:`~phyjax.physics.scanner.ScannerEffects`, those (a site's own, known
    or fitted, :func:`fit_site_effects`; the slice profile ``slice_profiles`` gives replaces
    theirs, else theirs acts along the last axis); the target scan is clean, as in
    :class:`SimulatedPairs`.  Images are normalized like real scans
    (:func:`phyjax.data.volumes.normalize`) on the anatomies' grid, ``affine`` (voxel -> world,
    mm, :func:`phyjax.data.synthetic.load_anatomy`).  ``seed`` and the head's index fix every
    draw.  Raises ValueError when ``site_names`` or ``slice_profiles`` do not have one entry
    per source."""
    sources = list(sources)
    names = list(site_names)
    profiles = list(slice_profiles) if slice_profiles is not None else [None] * len(sources)
    fixed = list(effects) if effects is not None else [None] * len(sources)
    if len(names) != len(sources) or len(profiles) != len(sources) or len(fixed) != len(sources):
        raise ValueError(f"{len(names)} site names, {len(profiles)} slice profiles and "
                         f"{len(fixed)} effects for {len(sources)} sources")
    key = jax.random.key(ANATOMY_SEED + 500_000 + seed)
    clean = scanner.ScannerEffects()
    out: dict[str, dict] = {}
    bar = tqdm(total=len(heads) * (len(sources) + 1), disable=not progress,
               desc="simulating calibration heads")
    for a, head in enumerate(heads):
        mask = head.mask
        subject = f"physics-{a + 1:02d}"
        maps = {b0: head.maps(b0) for b0 in sorted({float(p.field_strength)
                                                    for p in sources + [target]})}
        scans = {}
        for p_i, (p, site) in enumerate(zip(sources, names)):
            k_fx, k_acq = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, a), p_i))
            fx, axis = source_effects(k_fx, profiles[p_i], fixed[p_i])
            image = synthetic.acquire(maps[float(p.field_strength)], mask, p, fx, k_acq,
                                      slice_axis=axis)
            scans[site] = Volume(subject, site, p, normalize(image, mask), mask,
                                 f"<physics-made head {a + 1}, {site}'s protocol>",
                                 affine=np.asarray(affine, float))
            bar.update()
        image = synthetic.acquire(maps[float(target.field_strength)], mask, target, clean,
                                  jax.random.fold_in(key, 10_000 + a))
        scans[target_site] = Volume(subject, target_site, target, normalize(image, mask), mask,
                                    f"<physics-made head {a + 1}, the target protocol>",
                                    affine=np.asarray(affine, float))
        bar.update()
        out[subject] = scans
    bar.close()
    return out


#: The scanner effects :func:`fit_site_effects` searches, a grid inside :data:`EFFECT_RANGES`
#: (B1+ 0.8-1.2 in steps of 0.05; the gain is not identifiable from normalized images).
EFFECT_GRID = {"b1_scale": tuple(float(x) for x in np.round(np.linspace(0.8, 1.2, 9), 3)),
               "b1_curvature": (0.0, 0.1, 0.2), "bias_amplitude": (0.0, 0.15, 0.3),
               "noise_fraction": (0.01, 0.03, 0.05)}
#: The quantiles :func:`fit_site_effects` compares (1 % to 99 %)
EFFECT_QUANTILES = np.linspace(0.01, 0.99, 99)


def fit_site_effects(protocol: Protocol, scans, heads: list[Anatomy], profile=None,
                     seed: int = 0, grid: dict | None = None, reference=None
                     ) -> tuple[scanner.ScannerEffects, float]:
    """A site's scanner effects read off its own scans: the point of ``grid`` (default
    :data:`EFFECT_GRID`: B1+ scale and centre-to-corner drop, bias amplitude, Rician noise)
    under which ``protocol`` imaging ``heads`` gives the intensity distribution closest to
    that of ``scans`` (the site's :class:`~phyjax.data.volumes.Volume` objects, normalized
    images and masks; no other image of those heads is needed, so a site without traveling
    subjects has them).

    The distance is the mean absolute difference of the in-mask quantiles (1-99 %,
    :data:`EFFECT_QUANTILES`) of the normalized images (:func:`phyjax.data.volumes.normalize`)
    -- the 1-D Wasserstein distance on that range -- between the scans pooled and the
    simulated images (their quantiles averaged over ``heads``).  The heads' anatomy stands in
    for the scans': the two distributions differ by anatomy too, which is what the pooled
    quantiles average out.  B1+ moves the tissue levels apart or together through the flip
    angle (SPGR, the MPRAGE readout train), bias and noise widen each tissue's peak; where the
    signal equation ignores B1+ (spin echo, the static MPRAGE form) its points tie, and the
    ideal pulse (scale 1, no drop) is returned.  The B1+ drop and the bias field are partly
    interchangeable (both vary the intensity smoothly across the head), so of the two the
    amplitude sum is better determined than either.  ``profile`` ``(fwhm,
    axis)``: the site's slice profile (:func:`slice_profiles`), else none.  The bias pattern
    and the noise are drawn with ``seed`` and the head's index, the same for every grid point.

    ``reference`` ``(target protocol, target scans)``: the same subjects scanned with a
    reference protocol (traveling subjects at the target site).  The distance is then between
    the quantile *differences* source minus reference, real against simulated (the reference
    simulated clean on the same heads): what the two anatomies' histograms share cancels, so
    the fit reads the site's effects rather than the heads' tissue proportions.

    Returns ``(effects, distance)``.  Raises InputError when ``scans`` is empty or holds no
    voxel in its masks."""
    grid = dict(EFFECT_GRID, **(grid or {}))
    values = [np.asarray(v.image, np.float32)[np.asarray(v.mask, bool)] for v in scans]
    if not values or sum(x.size for x in values) == 0:
        raise InputError(f"no scan with voxels in its mask to fit the effects of {protocol} on.")
    real = np.quantile(np.concatenate(values), EFFECT_QUANTILES)
    sim_ref = 0.0
    if reference is not None:
        ref_protocol, ref_scans = reference
        ref_values = [np.asarray(v.image, np.float32)[np.asarray(v.mask, bool)]
                      for v in ref_scans]
        if not ref_values or sum(x.size for x in ref_values) == 0:
            raise InputError(f"no reference scan with voxels in its mask to fit the effects "
                             f"of {protocol} against.")
        real = real - np.quantile(np.concatenate(ref_values), EFFECT_QUANTILES)
        for a, head in enumerate(heads):
            image = synthetic.acquire(head.maps(float(ref_protocol.field_strength)), head.mask,
                                      ref_protocol, scanner.ScannerEffects(),
                                      jax.random.key(seed + a))
            sim_ref = sim_ref + np.quantile(normalize(image, head.mask)[head.mask],
                                            EFFECT_QUANTILES) / len(heads)
    fwhm, axis = profile if profile is not None else (0.0, -1)
    key = jax.random.key(ANATOMY_SEED + 700_000 + seed)
    points = [(s, c, b, n) for s in grid["b1_scale"] for c in grid["b1_curvature"]
              for b in grid["bias_amplitude"] for n in grid["noise_fraction"]]
    by_pulse: dict = {}             # (B1+ scale, drop) -> its points' indices
    for i, (s, c, _, _) in enumerate(points):
        by_pulse.setdefault((s, c), []).append(i)
    sim = np.zeros((len(points), EFFECT_QUANTILES.size))
    for a, head in enumerate(heads):
        mask = head.mask
        maps = head.maps(float(protocol.field_strength))
        shape = mask.shape
        k_bias, k_noise = jax.random.split(jax.random.fold_in(key, a))
        # in-mask voxels only: what normalize() and the quantiles read (as acquire() images
        # them: |slice-profiled signal| x bias, then Rician noise of n x its 99th percentile)
        fields = {b: np.asarray(scanner.bias_field(
            shape, scanner.sample_bias_coefficients(k_bias, b)))[mask]
            for b in grid["bias_amplitude"]}

        # scanner.rician_noise(image, sigma, k_noise) for every sigma from one draw, in numpy
        # float32 (scanner.rician_magnitude): the same values to the bit
        z_re, z_im = (np.asarray(z, np.float32)
                      for z in scanner.unit_noise(k_noise, (int(mask.sum()),)))

        def pulse(sc, maps=maps, mask=mask, shape=shape, fields=fields, z_re=z_re, z_im=z_im):
            """The quantiles of every grid point with B1+ ``sc`` = (scale, drop)."""
            clean = np.asarray(jnp.abs(scanner.slice_profile(synthetic.signed_image(
                maps, protocol, scanner.b1_field(shape, *sc)), float(fwhm), axis=axis)))[mask]
            out, biased = [], {}
            for i in by_pulse[sc]:
                b, n = points[i][2:]
                if b not in biased:
                    image = clean * fields[b]
                    biased[b] = (image, np.percentile(image, 99.0))
                image, p99 = biased[b]
                sigma = np.float32(n * p99)
                noisy = scanner.rician_magnitude(image, sigma, z_re, z_im, np.sqrt)
                out.append((i, np.quantile(noisy / np.percentile(noisy, 99.0),
                                           EFFECT_QUANTILES)))
            return out
        # two B1+ settings in flight at once (phyjax.parallel); each point's quantiles, and
        # the order they are summed over the heads, are the same either way
        for done in ordered_map(pulse, list(by_pulse)):
            for i, q in done:
                sim[i] += q / len(heads)
    distance = np.abs(sim - sim_ref - real[None]).mean(1)
    # where the signal ignores B1+ (spin echo, inversion recovery, the static MPRAGE form)
    # its grid points tie exactly (the same draws): then the ideal pulse, B1+ 1, no drop
    best = min(range(len(points)), key=lambda i: (distance[i], abs(points[i][0] - 1.0),
                                                  points[i][1]))
    s, c, b, n = points[best]
    return (scanner.ScannerEffects(b1_scale=s, b1_curvature=c, bias_amplitude=b,
                                   noise_fraction=n), float(distance[best]))
