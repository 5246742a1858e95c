"""Training and evaluation images simulated over acquisition-parameter ranges.

Borges et al. (2019, arXiv:2001.10767) train on images simulated with the static signal
equations from quantitative maps over a range of parameters: MPRAGE with TI 0.6-1.2 s, and SPGR
with TR 15-100 ms, TE 4-10 ms, flip angle 15-75 deg.  Here the quantitative maps are the
anatomies phyjax ships (:func:`phyjax.data.simulated.anatomies`: deformed MNI152 2009a tissue
maps with jittered relaxation values and T1 texture), every image goes through
:func:`phyjax.data.synthetic.acquire` (signal equation, slice profile, B1+, bias field, gain,
Rician noise) and is normalized like a real scan (:func:`phyjax.data.volumes.normalize`).

Ranges are ``{family: {field: value or (low, high)}}`` with times in s and flip angles in
degrees (config units); a scalar is fixed, a pair is drawn uniformly.  The MPRAGE images use the
static equation (the readout train is not modelled: flip angle 0, as in Borges et al.).
"""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

from phyjax.data import synthetic
from phyjax.data.slices import brain_slices, grid, to_slices
from phyjax.physics import scanner, signal
from phyjax.physics.sequences import Protocol
from phyjax.segment.gold import gold_standard
from phyjax.segment.model import CONTRAST_SIZE, physics_vector

#: Borges et al. (2019) parameter ranges (s, degrees, T); TR/TE of MPRAGE fixed at an HCP-like
#: 2.4 s / 3 ms (they vary TI only).
PAPER_RANGES = {
    "mprage": {"tr": 2.4, "te": 0.003, "ti": (0.6, 1.2), "flip_angle": 0.0,
               "field_strength": 3.0},
    "spgr": {"tr": (0.015, 0.100), "te": (0.004, 0.010), "flip_angle": (15.0, 75.0),
             "field_strength": 3.0},
}

_FIELDS = ("tr", "te", "ti", "flip_angle", "field_strength")


def _bounds(ranges: dict, family: str) -> dict:
    if family not in ranges:
        raise ValueError(f"no parameter range for family {family!r}; ranges: {sorted(ranges)}.")
    out = {}
    for k in _FIELDS:
        v = ranges[family].get(k, 0.0)
        lo, hi = (float(v[0]), float(v[1])) if isinstance(v, (tuple, list)) else (float(v),) * 2
        if hi < lo:
            raise ValueError(f"{family}.{k}: range ({lo}, {hi}) is reversed.")
        out[k] = (lo, hi)
    return out


def make_protocol(family: str, values: dict) -> Protocol:
    """A :class:`Protocol` from config-unit ``values`` (s, degrees, T)."""
    return Protocol.from_degrees(family, tr=values["tr"], te=values["te"],
                                 ti=values.get("ti", 0.0),
                                 flip_angle_deg=values.get("flip_angle", 0.0),
                                 field_strength=values.get("field_strength", 3.0))


def sample_protocols(family: str, ranges: dict, n: int, rng: np.random.Generator
                     ) -> list[Protocol]:
    """``n`` protocols of ``family`` drawn uniformly from ``ranges`` with ``rng``."""
    b = _bounds(ranges, family)
    return [make_protocol(family, {k: float(rng.uniform(*b[k])) for k in b}) for _ in range(n)]


def evaluation_protocols(family: str, ranges: dict, n: int, seed: int) -> list[Protocol]:
    """The protocols a held-out subject is imaged with: for ``mprage``, ``n`` TIs evenly spaced
    over the range (the x axis of the volume-vs-TI figure; other fields at their range's
    centre); for other families a seeded uniform draw of ``n`` (every field varied)."""
    b = _bounds(ranges, family)
    if family == "mprage":
        mid = {k: 0.5 * (lo + hi) for k, (lo, hi) in b.items()}
        return [make_protocol(family, {**mid, "ti": float(ti)})
                for ti in np.linspace(*b["ti"], n)]
    return sample_protocols(family, ranges, n, np.random.default_rng([seed, 16, 2]))


def in_range(protocol: Protocol, ranges: dict, rtol: float = 1e-3) -> list[str]:
    """Why ``protocol`` lies outside ``ranges`` (empty list when inside); only the fields
    ``ranges[protocol.sequence]`` names are checked."""
    if protocol.sequence not in ranges:
        return [f"family {protocol.sequence!r} (trained on {sorted(ranges)})"]
    b = {k: v for k, v in _bounds(ranges, protocol.sequence).items()
         if k in ranges[protocol.sequence]}
    out = []
    for k, (lo, hi) in b.items():
        v = float(getattr(protocol, k))
        if k == "flip_angle":
            v = float(np.rad2deg(v))
        if k == "flip_angle" and protocol.sequence == "mprage":
            continue  # the static MPRAGE equation does not use it
        tol = rtol * max(abs(lo), abs(hi), 1e-9)
        if not lo - tol <= v <= hi + tol:
            out.append(f"{k} {v:g} (trained on {lo:g}-{hi:g})")
    return out


RECONSTRUCTIONS = ("magnitude", "signed")


def image(maps: dict, mask: np.ndarray, protocol: Protocol, effects: scanner.ScannerEffects,
          key, reconstruction: str = "magnitude") -> np.ndarray:
    """One normalized image ``(X, Y, Z)`` float32 of ``maps`` through ``protocol``, ``effects``
    and noise drawn with ``key`` (:func:`phyjax.data.synthetic.acquire`), divided by the 99th
    in-mask percentile of its magnitude.

    ``reconstruction``: ``magnitude`` (what scanners write for MPRAGE/SPGR) or ``signed``: the
    magnitude carrying the sign of the noise-free signed signal
    (:func:`phyjax.physics.signal.signed_signal` with the same B1+ and slice profile) -- a
    phase-sensitive (PSIR-like) real image, in which tissues on either side of an inversion
    null stay apart.  Raises ValueError for another value.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction {reconstruction!r}; expected one of {RECONSTRUCTIONS}.")
    out = synthetic.acquire(maps, mask, protocol, effects, key)
    if reconstruction == "signed":
        b1 = scanner.b1_field(mask.shape, effects.b1_scale, effects.b1_curvature)
        signed = signal.signed_signal(protocol, maps["t1"], maps["t2"], maps["t2star"],
                                      maps["pd"], b1)
        signed = scanner.slice_profile(signed, effects.slice_fwhm, axis=-1)
        out = np.where(np.asarray(signed) < 0, -out, out)
    ref = float(np.percentile(np.abs(out[mask]), 99.0))
    if not ref > 0:
        raise ValueError("simulated image is zero inside the mask.")
    return (out / ref).astype(np.float32)


class SliceBank:
    """Padded axial slices of simulated images of several anatomies, with their gold standard.

    For anatomy ``a`` and each family, ``n_per_family`` protocols are drawn from ``ranges`` and
    imaged with scanner effects drawn from ``effect_ranges``
    (:func:`phyjax.physics.scanner.sample_scanner_effects`) and ``reconstruction`` (see
    :func:`image`).  Held in memory as float16.

    Attributes:
      images: ``(V, Z, H, W)`` float16, one per simulated volume.
      volume_anatomy: ``(V,)`` the anatomy of each volume; ``params``: ``(V, PHYSICS_SIZE)``.
      gold: ``(A, Z, H, W, 3)`` float16 gold-standard probabilities; ``masks``: ``(A, Z, H, W)``.
      rows: ``(N, 2)`` ``(volume, slice)`` of every brain slice.
    """

    def __init__(self, heads, families, ranges: dict, n_per_family: int, effect_ranges: dict,
                 depth: int, min_fraction: float, context: int, seed: int,
                 gold_kwargs: dict | None = None, progress: bool = False,
                 reconstruction: str = "magnitude"):
        shape = heads[0].probs.shape[1:]
        self.pads, self.padded = grid(shape, depth)
        self.context = context
        rng = np.random.default_rng([seed, 16, 1])
        key = jax.random.key(seed)
        images, anat, params, golds, masks, rows, protocols = [], [], [], [], [], [], []
        bar = tqdm(total=len(heads) * len(families) * n_per_family, disable=not progress,
                   desc="simulating training images")
        for a, head in enumerate(heads):
            maps, mask = head.maps(3.0), head.mask
            gold = gold_standard(maps["t1"], mask, **(gold_kwargs or {}))
            golds.append(np.stack([to_slices(gold[..., c], self.pads) for c in range(3)], -1)
                         .astype(np.float16))
            masks.append(to_slices(mask, self.pads))
            z_rows = brain_slices(mask, min_fraction)
            for family in families:
                for p in sample_protocols(family, ranges, n_per_family, rng):
                    k_fx, k_acq = jax.random.split(jax.random.fold_in(key, len(images)))
                    effects = scanner.sample_scanner_effects(k_fx, **effect_ranges)
                    vol = image(head.maps(float(p.field_strength)), mask, p, effects, k_acq,
                                reconstruction)
                    rows += [(len(images), z) for z in z_rows]
                    images.append(to_slices(np.where(mask, vol, 0.0), self.pads)
                                  .astype(np.float16))
                    anat.append(a)
                    params.append(physics_vector(p))
                    protocols.append(p)
                    bar.update()
        bar.close()
        self.images = np.stack(images)
        self.volume_anatomy = np.asarray(anat)
        self.params = np.stack(params)
        self.gold = np.stack(golds)
        self.masks = np.stack(masks)
        self.rows = np.asarray(rows, int).reshape(-1, 2)
        self.protocols = protocols

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, i: int, batch_size: int, seed: int) -> dict:
        """Batch ``i`` (a pure function of ``i`` and ``seed``): ``x (B, H, W, 2 context + 1)``,
        ``y (B, H, W, 3)`` gold probabilities, ``mask (B, H, W, 1)``, ``params (B, P)``, ``noise
        (B, P + CONTRAST_SIZE)`` standard normal (the training jitter of the physics vector and
        its contrast features)."""
        rng = np.random.default_rng([seed, i, 16])
        rows = self.rows[rng.choice(len(self.rows), size=batch_size,
                                    replace=len(self.rows) < batch_size)]
        v, z = rows[:, 0], rows[:, 1]
        n_z = self.images.shape[1]
        zz = np.clip(z[:, None] + np.arange(-self.context, self.context + 1)[None], 0, n_z - 1)
        x = self.images[v[:, None], zz]                      # (B, C, H, W)
        a = self.volume_anatomy[v]
        return {"x": np.moveaxis(x, 1, -1).astype(np.float32),
                "y": self.gold[a, z].astype(np.float32),
                "mask": self.masks[a, z][..., None].astype(np.float32),
                "params": self.params[v],
                "noise": np.concatenate(
                    [rng.standard_normal(self.params[v].shape),
                     rng.standard_normal((batch_size, CONTRAST_SIZE))], -1).astype(np.float32)}
