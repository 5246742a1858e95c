"""Training and evaluation images simulated over acquisition-parameter ranges.

Borges et al. (2019, arXiv:2001.10767) train on images simulated with the static signal
equations from quantitative maps over a range of parameters: MPRAGE with TI 0.6-1.2 s, and SPGR
with TR 15-100 ms, TE 4-10 ms, flip angle 15-75 deg.  Here the quantitative maps are the
anatomies phyjax ships (:func:`phyjax.data.simulated.anatomies`: deformed MNI152 2009a tissue
maps with jittered relaxation values and T1 texture), every image goes through
:func:`phyjax.data.synthetic.acquire` (signal equation, slice profile, B1+, bias field, gain,
Rician noise) and is normalized like a real scan (:func:`phyjax.data.volumes.normalize`).

Ranges are ``{family: {field: value or (low, high)}}`` with times in s and flip angles in
degrees (config units); a scalar is fixed, a pair is drawn uniformly.  Fields: ``tr``, ``te``,
``ti``, ``flip_angle``, ``field_strength`` and, for MPRAGE, ``tr_readout`` (the readout TR,
i.e. echo spacing) and ``n_readouts`` (readouts per shot, drawn as an integer).  An MPRAGE
whose ``tr_readout``, ``n_readouts`` and ``flip_angle`` are all > 0 is imaged with its readout
train (:func:`phyjax.physics.signal.signed_signal` then uses
:func:`phyjax.physics.signal.mprage_readout`, the full form of Deichmann et al. 2000 that is
:func:`phyjax.physics.mp2rage.mprage_full`: k-space centre in the middle of the train, ``tr``
the shot interval between inversions, ``ti`` from the inversion to the k-space-centre pulse);
otherwise with the static equation (flip 0, as in Borges et al.: :data:`PAPER_RANGES`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from tqdm.auto import tqdm

from phyjax.data import synthetic
from phyjax.data.slices import brain_slices, grid, to_slices
from phyjax.physics import scanner, signal
from phyjax.physics.sequences import Protocol
from phyjax.physics.signal import readout_problem
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

#: Readout-train MPRAGE ranges of the default config (``configs/physics_seg.py``): shot
#: interval TR 1.9-3.0 s, TI 0.6-1.2 s (the paper's), readout flip 6-12 deg, readout TR (echo
#: spacing) 6-10 ms, 128-256 readouts per shot; TE fixed at 3 ms.
READOUT_RANGES = {
    "mprage": {"tr": (1.9, 3.0), "te": 0.003, "ti": (0.6, 1.2), "flip_angle": (6.0, 12.0),
               "tr_readout": (0.006, 0.010), "n_readouts": (128.0, 256.0),
               "field_strength": 3.0},
    "spgr": PAPER_RANGES["spgr"],
}

_FIELDS = ("tr", "te", "ti", "flip_angle", "field_strength", "tr_readout", "n_readouts")
#: Units of the fields in messages (config units).
UNITS = {"tr": "s", "te": "s", "ti": "s", "flip_angle": "deg", "field_strength": "T",
         "tr_readout": "s", "n_readouts": ""}
#: MPRAGE fields redrawn until the readout train fits TI and TR - TI.
_READOUT_FIELDS = ("tr_readout", "n_readouts")


def _bounds(ranges: dict, family: str) -> dict:
    if family not in ranges:
        raise ValueError(f"no parameter range for family {family!r}; ranges: {sorted(ranges)}.")
    out = {}
    for k in _FIELDS:
        v = ranges[family].get(k, 0.0)
        if isinstance(v, (tuple, list)) and len(v) == 1:   # "--config...=2.4" on a pair field
            v = v[0]
        lo, hi = (float(v[0]), float(v[1])) if isinstance(v, (tuple, list)) else (float(v),) * 2
        if hi < lo:
            raise ValueError(f"{family}.{k}: range ({lo}, {hi}) is reversed.")
        out[k] = (lo, hi)
    return out


def make_protocol(family: str, values: dict) -> Protocol:
    """A :class:`Protocol` from config-unit ``values`` (s, degrees, T; ``tr_readout`` s and
    ``n_readouts`` for an MPRAGE's readout train, ignored for other families)."""
    p = Protocol.from_degrees(family, tr=values["tr"], te=values["te"],
                              ti=values.get("ti", 0.0),
                              flip_angle_deg=values.get("flip_angle", 0.0),
                              field_strength=values.get("field_strength", 3.0))
    if family == "mprage":
        p = p.replace(tr_readout=float(values.get("tr_readout", 0.0)),
                      n_readouts=float(values.get("n_readouts", 0.0)))
    return p


def _draw(b: dict, given: dict, rng: np.random.Generator) -> dict:
    """One uniform draw of every field of ``b`` (bounds); the readout fields only when the
    family's ranges ``given`` name them, and drawn only when varied (so that families without
    them, and the static MPRAGE, consume the same random numbers as before they existed);
    ``n_readouts`` an integer."""
    out = {k: float(rng.uniform(*b[k])) for k in _FIELDS[:5]}
    if "tr_readout" in given:
        lo, hi = b["tr_readout"]
        out["tr_readout"] = float(rng.uniform(lo, hi)) if hi > lo else lo
    if "n_readouts" in given:
        lo, hi = b["n_readouts"]
        out["n_readouts"] = (float(rng.integers(int(np.ceil(lo)), int(np.floor(hi)) + 1))
                             if hi > lo else float(lo))
    return out


def sample_protocols(family: str, ranges: dict, n: int, rng: np.random.Generator,
                     max_tries: int = 1000, max_draws: int = 20) -> list[Protocol]:
    """``n`` protocols of ``family`` drawn uniformly from ``ranges`` with ``rng`` (``n_readouts``
    an integer).  An MPRAGE whose readout train does not fit its TI and TR - TI
    (:func:`readout_problem`) has its readout TR and readouts per shot redrawn (TI, TR and flip
    kept, so their marginals stay uniform); where no train in the ranges fits a draw's TI and TR
    (possible only with ranges whose TI reaches close to TR, e.g. widened by :func:`widen`) the
    whole protocol is drawn again.  Raises ValueError when ``max_draws`` whole draws, each with
    ``max_tries`` readout redraws, find no train that fits."""
    b, given = _bounds(ranges, family), ranges[family]
    out = []
    for _ in range(n):
        for _ in range(max_draws):      # a whole new draw only where no train fits TI and TR
            values = _draw(b, given, rng)
            p = make_protocol(family, values)
            for _ in range(max_tries):
                if not readout_problem(p):
                    break
                redraw = _draw(b, given, rng)
                p = make_protocol(family, {**values, **{k: redraw[k] for k in _READOUT_FIELDS
                                                        if k in redraw}})
            if not readout_problem(p):
                break
        else:
            raise ValueError(f"{family}: no readout train in the ranges fits "
                             f"({readout_problem(p)}).")
        out.append(p)
    return out


def widen(ranges: dict, margin: float) -> dict:
    """``ranges`` with every varied field widened by the factor ``1 + margin`` on each side,
    multiplicatively: ``(lo, hi) -> (lo / (1 + margin), hi * (1 + margin))``, so that every
    field stays positive (flip angles capped at 90 deg); fixed fields are kept.

    Why: a network is least reliable at the edges of what it was trained on, and the edges of
    Borges et al.'s ranges are where the contrast is hardest (MPRAGE TI 0.6 s near the GM/WM
    inversion nulls of a magnitude image, SPGR at low flip angles and long TR, nearly
    PD-weighted).  Training over a margin puts the supported range (the configured one, which
    the evaluation and segment mode's range check keep) inside the training distribution.

    Raises ValueError for a negative ``margin``."""
    if not margin >= 0:
        raise ValueError(f"range margin {margin} must be >= 0.")
    out = {}
    for family, fields in ranges.items():
        out[family] = {}
        for k, v in fields.items():
            if isinstance(v, (tuple, list)) and len(v) == 2 and float(v[1]) > float(v[0]):
                lo, hi = float(v[0]) / (1.0 + margin), float(v[1]) * (1.0 + margin)
                if k == "flip_angle":
                    hi = min(hi, 90.0)
                v = (lo, hi)
            out[family][k] = v
    return out


def evaluation_protocols(family: str, ranges: dict, n: int, seed: int,
                         fixed: dict | None = None) -> list[Protocol]:
    """The protocols a held-out subject is imaged with: for ``mprage``, ``n`` TIs evenly spaced
    over the range (the x axis of the volume-vs-TI figure), every other field that training
    varied at its value in ``fixed`` (config units; a field ``fixed`` lacks: its range's centre)
    and every field training fixed at its training value; for other families a seeded uniform
    draw of ``n`` (every field varied).  Raises ValueError when a ``fixed`` value lies outside
    its range or an MPRAGE's readout train does not fit one of the TIs."""
    b = _bounds(ranges, family)
    if family == "mprage":
        base = {k: 0.5 * (lo + hi) for k, (lo, hi) in b.items()}
        for k, v in (fixed or {}).items():
            lo, hi = b[k]
            if hi > lo and k != "ti":
                if not lo <= float(v) <= hi:
                    raise ValueError(f"evaluation MPRAGE: {k} {float(v):g} outside the training "
                                     f"range {lo:g}-{hi:g}.")
                base[k] = float(v)
        out = [make_protocol(family, {**base, "ti": float(ti)})
               for ti in np.linspace(*b["ti"], n)]
        bad = [readout_problem(p) for p in out if readout_problem(p)]
        if bad:
            raise ValueError(f"evaluation MPRAGE: {bad[0]}.")
        return out
    return sample_protocols(family, ranges, n, np.random.default_rng([seed, 16, 2]))


def _static_flip(ranges: dict, family: str) -> bool:
    """Whether ``family``'s training had no readout train (MPRAGE flip fixed at 0)."""
    fa = ranges.get(family, {}).get("flip_angle", 0.0)
    return family == "mprage" and not isinstance(fa, (list, tuple)) and float(fa) == 0.0


def in_range(protocol: Protocol, ranges: dict, rtol: float = 1e-3) -> list[str]:
    """Why ``protocol`` lies outside ``ranges`` (empty list when inside): one string per field,
    naming it, its value and the range, e.g. ``"flip_angle 14 deg (trained on 6-12 deg)"``.
    Only the fields ``ranges[protocol.sequence]`` names are checked; an MPRAGE's flip angle is
    not checked against a static (flip 0) training, whose equation does not use it."""
    if protocol.sequence not in ranges:
        return [f"family {protocol.sequence!r} (trained on {sorted(ranges)})"]
    b = {k: v for k, v in _bounds(ranges, protocol.sequence).items()
         if k in ranges[protocol.sequence]}
    out = []
    for k, (lo, hi) in b.items():
        v = float(getattr(protocol, k))
        if k == "flip_angle":
            v = float(np.rad2deg(v))
            if _static_flip(ranges, protocol.sequence):
                continue  # the static MPRAGE equation does not use it
        tol = rtol * max(abs(lo), abs(hi), 1e-9)
        if not lo - tol <= v <= hi + tol:
            u = f" {UNITS[k]}" if UNITS.get(k) else ""
            out.append(f"{k} {v:g}{u} (trained on {lo:g}-{hi:g}{u})")
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


def _gold_slices(head, pads, gold_kwargs) -> np.ndarray:
    """``(Z, H, W, 3)`` float16 gold standard of ``head`` (a
    :class:`~phyjax.data.simulated.Anatomy`) from its 3 T R1 map, as padded axial slices."""
    gold = gold_standard(head.maps(3.0)["t1"], head.mask, **(gold_kwargs or {}))
    return np.stack([to_slices(gold[..., c], pads) for c in range(3)], -1).astype(np.float16)


class SliceBank:
    """Padded axial slices of simulated images of several anatomies, with their gold standard.

    For anatomy ``a`` and each family, ``n_per_family`` protocols are drawn from ``ranges`` and
    imaged with scanner effects drawn from ``effect_ranges``
    (:func:`phyjax.physics.scanner.sample_scanner_effects`) and ``reconstruction`` (see
    :func:`image`).  Held in memory as float16.

    ``value_jitter`` > 0 gives every simulated volume its own tissue values: the anatomy's
    (T1, T2, T2*, PD) of each tissue times ``1 + value_jitter`` x a standard normal (clipped to
    0.7-1.3; the spread :func:`phyjax.data.synthetic.make_subject` gives a subject), drawn from a
    stream of its own so that protocols, scanner effects and noise are those of ``0``; its gold
    standard is computed from its own R1 map.  With ``0`` (the default) the volumes of an anatomy
    share its values and gold standard, and a network can learn each anatomy's contrast under
    each protocol; with it, the contrast it is told (the branch's reference tissues) and the
    contrast the image shows differ from volume to volume, as they do between subjects.

    Attributes:
      images: ``(V, Z, H, W)`` float16, one per simulated volume.
      b1: ``(V, Z, H, W)`` float16, the relative B1+ field each volume was imaged with
        (:func:`phyjax.physics.scanner.b1_field`; NaN in the slices' padding).
      volume_anatomy: ``(V,)`` the anatomy of each volume; ``volume_family`` ``(V,)`` the index
        of its family in ``families``; ``params``: ``(V, PHYSICS_SIZE)``.
      gold: ``(G, Z, H, W, 3)`` float16 gold-standard probabilities, ``volume_gold`` ``(V,)``
        the row of each volume's (one per anatomy, ``G = A``, or with ``value_jitter`` one per
        volume); ``masks``: ``(A, Z, H, W)``.
      rows: ``(N, 2)`` ``(volume, slice)`` of every brain slice.
    """

    def __init__(self, heads, families, ranges: dict, n_per_family: int, effect_ranges: dict,
                 depth: int, min_fraction: float, context: int, seed: int,
                 gold_kwargs: dict | None = None, progress: bool = False,
                 reconstruction: str = "magnitude", value_jitter: float = 0.0):
        if not value_jitter >= 0:
            raise ValueError(f"value_jitter {value_jitter} must be >= 0.")
        shape = heads[0].probs.shape[1:]
        self.pads, self.padded = grid(shape, depth)
        self.context = context
        rng = np.random.default_rng([seed, 16, 1])
        key = jax.random.key(seed)
        images, anat, params, golds, masks, rows, protocols = [], [], [], [], [], [], []
        b1s, volume_gold, fams = [], [], []
        value_rng = np.random.default_rng([seed, 16, 3])
        bar = tqdm(total=len(heads) * len(families) * n_per_family, disable=not progress,
                   desc="simulating training images")
        for a, head in enumerate(heads):
            mask = head.mask
            if not value_jitter:
                golds.append(_gold_slices(head, self.pads, gold_kwargs))
            masks.append(to_slices(mask, self.pads))
            z_rows = brain_slices(mask, min_fraction)
            for family in families:
                for p in sample_protocols(family, ranges, n_per_family, rng):
                    k_fx, k_acq = jax.random.split(jax.random.fold_in(key, len(images)))
                    effects = scanner.sample_scanner_effects(k_fx, **effect_ranges)
                    tissue = head
                    if value_jitter:
                        tissue = dataclasses.replace(head, factors=np.clip(
                            head.factors * (1.0 + value_jitter * value_rng.standard_normal(
                                (3, 4))), 0.7, 1.3))
                        golds.append(_gold_slices(tissue, self.pads, gold_kwargs))
                    volume_gold.append(len(golds) - 1)
                    vol = image(tissue.maps(float(p.field_strength)), mask, p, effects, k_acq,
                                reconstruction)
                    rows += [(len(images), z) for z in z_rows]
                    images.append(to_slices(np.where(mask, vol, 0.0), self.pads)
                                  .astype(np.float16))
                    b1 = np.asarray(scanner.b1_field(shape, effects.b1_scale,
                                                     effects.b1_curvature), np.float32)
                    b1s.append(to_slices(b1, self.pads, np.nan).astype(np.float16))
                    anat.append(a)
                    fams.append(families.index(family))
                    params.append(physics_vector(p))
                    protocols.append(p)
                    bar.update()
        bar.close()
        self.images = np.stack(images)
        self.b1 = np.stack(b1s)
        self.volume_anatomy = np.asarray(anat)
        self.volume_family = np.asarray(fams, int)
        self.params = np.stack(params)
        self.gold = np.stack(golds)
        self.volume_gold = np.asarray(volume_gold, int)
        self.masks = np.stack(masks)
        self.rows = np.asarray(rows, int).reshape(-1, 2)
        self.protocols = protocols

    def __len__(self) -> int:
        return len(self.rows)

    def partners(self, volumes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each volume index of ``volumes`` another volume of the same anatomy and family
        (another protocol and scanner-effect draw of the same head), uniformly at random with
        ``rng``.  Raises ValueError when a volume has no such partner (``n_per_family`` 1)."""
        out = np.empty(len(volumes), int)
        for j, v in enumerate(np.asarray(volumes, int)):
            same = np.flatnonzero((self.volume_anatomy == self.volume_anatomy[v])
                                  & (self.volume_family == self.volume_family[v]))
            same = same[same != v]
            if not len(same):
                raise ValueError(f"volume {v} has no other protocol of its anatomy and family "
                                 "to pair with (n_per_family must be >= 2).")
            out[j] = rng.choice(same)
        return out

    def batch(self, i: int, batch_size: int, seed: int, b1_known: float = 0.0,
              paired: bool = False, patch: int = 0, ndim: int = 2) -> dict:
        """Batch ``i`` (a pure function of ``i`` and ``seed``): ``x (B, H, W, 2 context + 1)``,
        ``y (B, H, W, 3)`` gold probabilities, ``mask (B, H, W, 1)``, ``params (B, P)``, ``noise
        (B, P + CONTRAST_SIZE)`` standard normal (the training jitter of the physics vector and
        its contrast features), ``b1 (B, H, W)`` float32: each slice's B1+ field for a
        random fraction ``b1_known`` of the batch, NaN (unknown) for the rest -- so that a
        branch told B1+ learns with and without a map.  The draws before ``b1``'s are those of
        batches without it (models that ignore it train as before).

        ``paired``: the batch is ``batch_size // 2`` slices drawn as above followed by the same
        slices of the same heads imaged with another protocol of their family
        (:meth:`partners`; drawn from a stream of their own), so that sample ``j`` and ``j +
        batch_size // 2`` show one anatomy under two protocols (the protocol-consistency term
        of :func:`phyjax.segment.train.train`).  Raises ValueError for an odd ``batch_size``.

        ``patch`` > 0: every sample is cropped to a ``patch`` x ``patch`` window of its slice
        (:meth:`crop`; paired samples share their window), so that the network sees no more of
        the slice than that.  The crops come from a stream of their own: the whole-slice batch
        they are cut from is the batch without ``patch``.

        ``ndim`` 3 (with ``patch`` > 0): every sample is a ``patch``-voxel cube ``x (B, P, P, P,
        1)`` (``y``, ``mask``, ``b1`` likewise, axes (Z, H, W) of the slices) centred, in
        plane, on a voxel of the sampled slice's mask as above and through-plane on that slice
        (shifted to lie inside the volume), for a 3-D U-Net; ``context`` does not apply.
        Raises ValueError for a cube that does not fit the volume or ``ndim`` 3 without
        ``patch``."""
        rng = np.random.default_rng([seed, i, 16])
        if paired and batch_size % 2:
            raise ValueError(f"a paired batch needs an even batch size, not {batch_size}.")
        n = batch_size // 2 if paired else batch_size
        rows = self.rows[rng.choice(len(self.rows), size=n, replace=len(self.rows) < n)]
        if paired:
            other = self.partners(rows[:, 0], np.random.default_rng([seed, i, 16, 1]))
            rows = np.concatenate([rows, np.stack([other, rows[:, 1]], -1)])
        v, z = rows[:, 0], rows[:, 1]
        n_z = self.images.shape[1]
        zz = np.clip(z[:, None] + np.arange(-self.context, self.context + 1)[None], 0, n_z - 1)
        x = self.images[v[:, None], zz]                      # (B, C, H, W)
        a = self.volume_anatomy[v]
        out = {"x": np.moveaxis(x, 1, -1).astype(np.float32),
               "y": self.gold[self.volume_gold[v], z].astype(np.float32),
               "mask": self.masks[a, z][..., None].astype(np.float32),
               "params": self.params[v],
               "noise": np.concatenate(
                   [rng.standard_normal(self.params[v].shape),
                    rng.standard_normal((batch_size, CONTRAST_SIZE))], -1).astype(np.float32),
               "b1": np.where((known := rng.uniform(size=batch_size) < b1_known)[:, None, None],
                              self.b1[v, z].astype(np.float32), np.nan)}
        if ndim not in (2, 3):
            raise ValueError(f"ndim {ndim}: 2 (slices) or 3 (cubes).")
        if ndim == 3 and not patch:
            raise ValueError("a 3-D batch needs a cube size (patch > 0).")
        if patch:
            corners = self.crop(out["mask"][:n, ..., 0], patch,
                                np.random.default_rng([seed, i, 16, 2]))
            if paired:
                corners = np.concatenate([corners, corners])
            rr = corners[:, :1, None] + np.arange(patch)[None, :, None]    # (B, P, 1)
            cc = corners[:, 1:, None] + np.arange(patch)[None, None, :]    # (B, 1, P)
            bb = np.arange(len(corners))[:, None, None]
            if ndim == 3:
                return self._cubes(v, a, z, rr, cc, known, patch, out)
            out = {k: (val[bb, rr, cc] if k in ("x", "y", "mask", "b1") else val)
                   for k, val in out.items()}
        return out

    def _cubes(self, v, a, z, rr, cc, known, patch: int, out: dict) -> dict:
        """``out`` (a slice batch of volumes ``v``, anatomies ``a``, slices ``z``) with its
        images, gold standard, masks and B1+ (where ``known``, ``(B,)`` bool; else NaN)
        replaced by the ``patch``-cubes whose in-plane windows are rows ``rr`` ``(B, P, 1)`` x
        columns ``cc`` ``(B, 1, P)`` and whose slices are centred on ``z`` (see
        :meth:`batch`)."""
        n_z = self.images.shape[1]
        if patch > n_z:
            raise ValueError(f"a {patch}-voxel cube does not fit volumes of {n_z} slices.")
        z0 = np.clip(z - patch // 2, 0, n_z - patch)
        zz = (z0[:, None] + np.arange(patch)[None])[:, :, None, None]    # (B, P, 1, 1)
        rr, cc = rr[:, None], cc[:, None]                                 # (B, 1, P, 1/P)
        vv = v[:, None, None, None]
        known = np.asarray(known, bool)[:, None, None, None]
        return dict(out,
                    x=self.images[vv, zz, rr, cc][..., None].astype(np.float32),
                    y=self.gold[self.volume_gold[vv], zz, rr, cc].astype(np.float32),
                    mask=self.masks[a[:, None, None, None], zz, rr, cc][..., None]
                    .astype(np.float32),
                    b1=np.where(known, self.b1[vv, zz, rr, cc].astype(np.float32), np.nan))

    @staticmethod
    def crop(masks: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
        """Top-left corners ``(B, 2)`` of ``patch`` x ``patch`` windows of slices ``(B, H,
        W)``: each centred on a voxel drawn uniformly from its slice's ``masks`` (so that
        every window holds brain; the slice's centre if the mask is empty), shifted to lie
        inside the slice.  Raises ValueError for a window larger than the slices."""
        h, w = masks.shape[1:]
        if not 0 < patch <= min(h, w):
            raise ValueError(f"a {patch} x {patch} patch does not fit slices of {h} x {w}.")
        out = np.empty((len(masks), 2), int)
        for j, m in enumerate(masks):
            idx = np.flatnonzero(m > 0.5)
            centre = np.unravel_index(rng.choice(idx), m.shape) if len(idx) else (h // 2, w // 2)
            out[j] = (np.clip(centre[0] - patch // 2, 0, h - patch),
                      np.clip(centre[1] - patch // 2, 0, w - patch))
        return out
