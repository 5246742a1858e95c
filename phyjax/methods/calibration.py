"""How a slice network's harmonized image is put on the target's intensity scale at inference
(``config.model.calibrate`` for PhyCHarm, ``config.unet.calibrate`` for the U-Net baseline):
:func:`calibrate_output`, and the per-protocol output maps (:func:`fit_site_maps`;
``calibrate="sites"``, docs/phycharm_ablation.md item 41) learned on traveling subjects or on
heads made by the physics (:func:`fit_calibrated`, ``calibrate_with``; items 69-71).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from phyjax.data.nifti import InputError
from phyjax.data.slices import slice_mask
from phyjax.data.split import TrainingSet, protocols_match, require_training_set
from phyjax.data.volumes import normalize
from phyjax.methods.base import protocol_from_json, protocol_to_json
from phyjax.parallel import ordered_map
from phyjax.physics.sequences import Protocol

#: ``config.model.calibrate`` / ``config.unet.calibrate``: how the harmonized image is put on
#: the data's intensity scale at inference (:func:`calibrate_output`): ``none`` (the network's
#: own scale) or ``p99`` (divided
#: by its 99th in-mask percentile, the convention every input and target image follows,
#: :func:`phyjax.data.volumes.normalize`) or ``match`` (the source scan histogram-matched to the
#: network's output: a monotone map of the input that keeps its every edge) or ``sites`` (the
#: network's output through the monotone map learned for the scan's protocol on the training
#: pairs, :func:`fit_site_maps`)
CALIBRATE = ("none", "p99", "match", "sites")

#: ``config.model.calibrate_map`` / ``config.unet.calibrate_map``: the form of a site map
#: (:func:`fit_site_maps`) -- ``quantile`` (the pooled outputs' quantiles matched to the pooled
#: target scans': a transport of one distribution onto the other, needing no voxel pairs) or
#: ``least_squares`` (the increasing map of least squares on voxel pairs, the target's
#: conditional mean given the output: isotonic regression, :func:`least_squares_knots`;
#: where a protocol's heads are not voxel-aligned with their target scans, its map is the
#: quantile one; docs/phycharm_ablation.md, item 81)
CALIBRATE_MAP = ("quantile", "least_squares")

#: Source scans per protocol whose outputs :func:`choose_denoise` scores the candidate filters
#: on (the first ones of the heads the maps are learned on with a voxel grid equal to their
#: target scan's; their every ``slice_step``-th slice): enough to rank filters whose effect is
#: the same at every head, and a bounded memory and time at 1 mm.
DENOISE_SCANS = 4


def parse_denoise(value, key: str = "config.model.calibrate_denoise"
                  ) -> tuple[tuple[float, float], ...]:
    """``config.model.calibrate_denoise`` as ``((sigma, range_sd), ...)``: ``""`` (off) or
    comma-separated ``S:R`` pairs, each an in-plane bilateral filter of spatial sd ``S`` voxels
    and intensity sd ``R`` on the target's scale (its 99th in-mask percentile is 1).  Raises
    InputError naming ``key`` for anything else (a non-number, S or R not positive, S over
    3 voxels, a pair repeated)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "none", "off")):
        return ()
    bad = InputError(f"{key}={value!r}; expected '' (off) or comma-separated 'S:R' pairs: "
                     "the spatial sd S (voxels, 0 < S <= 3) and the intensity sd R (> 0, the "
                     "target's 99th percentile is 1) of an in-plane bilateral filter, e.g. "
                     "'0.5:0.1,0.7:0.05'.")
    if not isinstance(value, str):
        raise bad
    out = []
    for item in value.split(","):
        try:
            sigma, range_sd = (float(x) for x in item.split(":"))
        except ValueError:
            raise bad from None
        if not (0 < sigma <= 3 and 0 < range_sd < np.inf) or (sigma, range_sd) in out:
            raise bad
        out.append((sigma, range_sd))
    return tuple(out)


def check_calibrate_map(value, key: str = "config.model.calibrate_map") -> str:
    """``value`` if it is one of :data:`CALIBRATE_MAP`, else InputError naming ``key``."""
    if value not in CALIBRATE_MAP:
        raise InputError(f"{key}={value!r}; expected one of {CALIBRATE_MAP}: the site maps' "
                         "form (quantile matching, or least squares on voxel pairs).")
    return value


def least_squares_knots(output: np.ndarray, target: np.ndarray, knots: int = 256
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(output_knots, target_knots)`` ``(knots,)`` each, nondecreasing: the increasing
    piecewise-linear map of least squares from ``output`` to ``target`` (1-D, the same voxels
    in the same order: the network's output and the target scan of one head, pooled over
    heads), for :func:`apply_site_map`.

    The voxel pairs are sorted by output and cut into ``knots`` bins of (nearly) equal count;
    the bins' mean target, weighted by their counts, is made nondecreasing by isotonic
    regression (pool-adjacent-violators; Barlow et al., *Statistical Inference under Order
    Restrictions*, 1972; :class:`sklearn.isotonic.IsotonicRegression`), placed at the bins'
    mean output.  The map estimates the target's conditional mean given the output -- the
    least-squares increasing map at the bins' resolution -- where quantile matching
    (:func:`fit_site_maps`' other form) transports the output's distribution onto the
    target's: that depends on the heads' tissue proportions, and on the maps' own heads it
    pulled each head's tissue volumes toward the population's (docs/phycharm_ablation.md,
    items 80, 81).  Raises InputError for unequal lengths, fewer voxels than ``knots`` or
    ``knots`` < 2."""
    from sklearn.isotonic import IsotonicRegression

    o, t = np.asarray(output, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    knots = int(knots)
    if o.shape != t.shape or knots < 2 or o.size < knots:
        raise InputError(f"least-squares site map: {o.size} output and {t.size} target "
                         f"voxels for {knots} knots; expected equal counts, at least the "
                         "knots, and knots >= 2.")
    order = np.argsort(o, kind="stable")
    edges = np.linspace(0, o.size, knots + 1).round().astype(int)
    counts = np.diff(edges).astype(np.float64)
    mean_o = np.add.reduceat(o[order], edges[:-1]) / counts
    mean_t = np.add.reduceat(t[order], edges[:-1]) / counts
    fitted = IsotonicRegression(increasing=True).fit_transform(mean_o, mean_t,
                                                               sample_weight=counts)
    return np.maximum.accumulate(mean_o), np.maximum.accumulate(fitted)


def check_min_gain(value, key: str = "config.model.calibrate_denoise_min_gain") -> float:
    """``value`` as a finite number of dB >= 0 (the least PSNR gain on the maps' heads for
    which a site map keeps the filter it chose), else InputError naming ``key``."""
    try:
        gain = float(value)
    except (TypeError, ValueError):
        gain = float("nan")
    if isinstance(value, bool) or not (0.0 <= gain < np.inf):
        raise InputError(f"{key}={value!r}; expected a number of dB >= 0 (a site map keeps "
                         "its in-plane filter only where the filter gains at least that much "
                         "PSNR on the heads the map is learned on).")
    return gain


def denoise_in_plane(image: np.ndarray, mask: np.ndarray, sigma: float,
                     range_sd: float) -> np.ndarray:
    """``image`` ``(X, Y, Z)`` with every axial slice (the last axis: the planes a slice
    network works in) passed through the edge-preserving bilateral filter of spatial sd
    ``sigma`` voxels and intensity sd ``range_sd`` (image units) inside ``mask`` ``(X, Y, Z)``
    (Tomasi & Manduchi, ICCV 1998; :func:`phyjax.models.phycharm.masked_bilateral`); voxels
    outside ``mask`` keep their value."""
    import jax.numpy as jnp

    m = np.asarray(mask, bool)
    if not m.any():
        return np.asarray(image)
    slices = jnp.asarray(np.moveaxis(np.asarray(image, np.float32), -1, 0)[..., None])
    inside = jnp.asarray(np.moveaxis(m, -1, 0)[..., None], jnp.float32)
    out = np.asarray(_bilateral()(slices, inside, float(sigma), float(range_sd)))[..., 0]
    return np.where(m, np.moveaxis(out, 0, -1), image).astype(np.float32)


@functools.cache
def _bilateral():
    """:func:`phyjax.models.phycharm.masked_bilateral` compiled once per shape and spatial sd
    (its shifted copies fused into one pass; eagerly they cost ~10x more at 1 mm)."""
    import jax

    from phyjax.models.phycharm import masked_bilateral

    return jax.jit(masked_bilateral, static_argnums=(2,))


def apply_site_map(image: np.ndarray, mask: np.ndarray, entry: dict) -> np.ndarray:
    """``image`` ``(X, Y, Z)`` through a site map ``entry`` of :func:`fit_site_maps`: its
    monotone map inside ``mask`` (0 outside), then its ``denoise`` filter where it chose one
    (:func:`choose_denoise`)."""
    mask = np.asarray(mask, bool)
    mapped = np.zeros_like(np.asarray(image, np.float32))
    mapped[mask] = np.interp(np.asarray(image, np.float32)[mask], entry["output"],
                             entry["target"])
    f = entry.get("denoise")
    if f:       # inside the mask only: outside it stays 0
        mapped = denoise_in_plane(mapped, mask, f["sigma"], f["range"])
    return mapped.astype(np.float32)


def choose_denoise(images: list, entry: dict, candidates: tuple[tuple[float, float], ...],
                   min_gain_db: float = 0.0) -> dict | None:
    """The in-plane filter, among ``candidates`` (:func:`parse_denoise`) and none, that brings
    a protocol's mapped outputs closest to the same heads' target scans (least squared error
    inside the brain mask), or None where none does better than no filter by more than
    ``min_gain_db`` (dB of PSNR on those heads; ``config.model.calibrate_denoise_min_gain``).

    ``images``: ``(output, target, mask)`` triples of one grid each (a source scan's output,
    the network's calibration off, and its subject's target scan, :func:`pooled_outputs`);
    ``entry``: the protocol's map (``output`` / ``target`` knots), applied first.  The filter
    removes the part of the output's error that is noise the target scan does not have (a
    noisy source's share of the output; docs/phycharm_ablation.md, item 75); an intensity sd
    well under the tissues' contrast keeps their boundaries.  Returns ``{"sigma", "range",
    "psnr_gain_db"}`` (the gain on those heads over no filter) or None."""
    if not candidates or not images:
        return None
    plain = dict(entry, denoise=None)
    mapped = [(apply_site_map(o, m, plain), t, m) for o, t, m in images]

    def sse(f):
        return sum(float(np.sum(((denoise_in_plane(x, m, *f) if f else x)[m] - t[m]) ** 2))
                   for x, t, m in mapped)
    base = sse(None)
    errors = {f: sse(f) for f in candidates}
    best = min(errors, key=errors.get)
    if not errors[best] < base:
        return None
    gain = float(10.0 * np.log10(base / errors[best]))
    if gain < min_gain_db:
        return None
    return {"sigma": best[0], "range": best[1], "psnr_gain_db": gain}


def check_calibrate(calibrate: str, key: str = "config.model.calibrate") -> str:
    """``calibrate`` if it is one of :data:`CALIBRATE`, else InputError naming ``key``."""
    if calibrate not in CALIBRATE:
        raise InputError(f"{key}={calibrate!r}; expected one of {CALIBRATE}.")
    return calibrate


def calibrate_output(out: dict, mask: np.ndarray, calibrate: str = "none",
                     source: np.ndarray | None = None, site_maps: list | None = None,
                     protocol: Protocol | None = None, where: str = "the source scan") -> dict:
    """``out`` with its ``harmonized`` image on the data's intensity scale, or replaced by a
    monotone map of the source scan (``calibrate``, one of :data:`CALIBRATE`;
    ``config.model.calibrate``).

    Every image phyjax reads is divided by its 99th in-mask percentile
    (:func:`phyjax.data.volumes.normalize`), the targets the network was trained on included, so
    a target-protocol scan has that percentile at 1.  ``p99`` divides the harmonized image by
    its own (over ``mask``, ``(X, Y, Z)`` bool), so the output follows the same convention
    whatever global scale the network gave it.  ``match`` returns the source scan (``source``,
    ``(X, Y, Z)``, the network's input) histogram-matched inside ``mask`` to the network's
    harmonized image (:func:`skimage.exposure.match_histograms`): the intensity distribution
    of the subject's own physics-predicted target-protocol image, reached by a monotone
    increasing map of the input, so no edge, tissue order or through-plane blur of the input
    changes (classical histogram matching, Nyul et al. 1999, with the network's output as the
    reference instead of a population template).  ``sites`` passes the output through the
    monotone map of ``site_maps`` (:func:`fit_site_maps`) whose protocol matches ``protocol``
    (the source scan's; :func:`phyjax.data.split.protocols_match`); a protocol no map was
    learned for keeps the network's output, with a warning naming ``where``; a map that chose an
    in-plane filter (``config.model.calibrate_denoise``) applies it after the map
    (:func:`apply_site_map`).  ``none`` returns
    ``out`` unchanged.  Only ``harmonized`` changes (the maps and the re-synthesis keep their
    scale).

    Raises InputError for an unknown setting, an empty mask, a non-positive percentile
    (``p99``), a missing or differently shaped ``source`` (``match``), or no ``site_maps`` or
    ``protocol`` (``sites``).
    """
    if check_calibrate(calibrate) == "none":
        return out
    mask = np.asarray(mask, bool)
    image = np.where(mask, np.asarray(out["harmonized"], np.float32), 0.0)
    if calibrate == "p99":
        return dict(out, harmonized=normalize(image, mask))
    if calibrate == "sites":
        if not site_maps:
            raise InputError("config.model.calibrate=sites: this harmonizer has no site maps "
                             "(they are learned at training, on traveling subjects or heads "
                             "made by the physics, when it is trained with calibrate=sites).")
        if protocol is None:
            raise InputError(f"config.model.calibrate=sites: {where} has no acquisition "
                             "protocol to choose a site map by.")
        m = site_map_for(site_maps, protocol)
        if m is None:
            warnings.warn(f"config.model.calibrate=sites: no site map was learned for the "
                          f"protocol of {where} ({protocol}); its harmonized image is the "
                          "network's output, uncalibrated.", stacklevel=2)
            return out
        return dict(out, harmonized=apply_site_map(image, mask, m))
    if source is None or np.shape(source) != image.shape:
        raise InputError(f"config.model.calibrate=match needs the source scan of the output's "
                         f"shape {image.shape}; got "
                         f"{None if source is None else np.shape(source)}.")
    if not mask.any():
        raise InputError("config.model.calibrate=match: the brain mask is empty.")
    from skimage.exposure import match_histograms

    matched = np.zeros_like(image)
    matched[mask] = match_histograms(np.asarray(source, np.float32)[mask], image[mask])
    return dict(out, harmonized=matched)


def site_map_for(site_maps: list, protocol: Protocol) -> dict | None:
    """The entry of ``site_maps`` (:func:`fit_site_maps`) learned for ``protocol``, or None."""
    for m in site_maps:
        if protocols_match(protocol_from_json(m["protocol"]), protocol):
            return m
    return None


@dataclasses.dataclass(frozen=True)
class CalibrationHeads:
    """Heads made by the physics that site maps are learned on
    (``config.model.calibrate_simulated``; :func:`phyjax.data.simulated.calibration_volumes`):
    ``volumes`` ``{subject: {site: Volume}}`` with a scan at ``target_site`` and at every source
    site.  :func:`pooled_outputs` reads it as it reads a :class:`~phyjax.data.split.
    TrainingSet`; nothing trains on it."""

    volumes: Mapping[str, Mapping]
    target_site: str
    #: the sites whose heads carry that site's own scanner effects (read off its scans), where
    #: a site map may choose an in-plane filter (:func:`fit_site_maps`); None: every site
    own_effects: frozenset | None = None

    def __post_init__(self):
        object.__setattr__(self, "volumes", MappingProxyType(dict(self.volumes)))

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(sorted(self.volumes))


#: ``config.model.calibrate_with``: which heads the site maps are learned on --
#: ``traveling`` subjects (the training pairs; a model without them has no maps), heads made by
#: the ``physics`` (``calibrate_simulated`` of them, :func:`fit_calibrated`), or ``auto``:
#: traveling subjects where the training has them, else the physics' heads
#: (docs/phycharm_ablation.md items 69, 70)
CALIBRATE_WITH = ("auto", "traveling", "physics")


def check_calibrate_simulated(value, key: str = "config.model.calibrate_simulated") -> int:
    """``value`` as an integer >= 1 (heads made by the physics that the site maps are learned
    on), else InputError naming ``key``."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n != value or n < 1:
        raise InputError(f"{key}={value!r}; expected an integer >= 1 (heads made by the "
                         "physics to learn the site maps on).")
    return n


def maps_source(settings, paired: bool, section: str = "model") -> str:
    """``"traveling"``, ``"physics"`` or ``"none"``: where the site maps of a network with
    ``settings`` (``config.model`` / ``config.unet``) are learned, given whether it trains on
    traveling-subject ``paired`` data (:data:`CALIBRATE_WITH`).  ``"none"`` where it has no
    maps (``calibrate`` other than ``sites``, or traveling subjects asked for and not there).
    Raises InputError naming ``config.<section>.calibrate_with`` for an unknown value."""
    with_ = settings.get("calibrate_with", "auto")
    if with_ not in CALIBRATE_WITH:
        raise InputError(f"config.{section}.calibrate_with={with_!r}; expected one of "
                         f"{CALIBRATE_WITH}.")
    if settings.get("calibrate", "none") != "sites":
        return "none"
    if with_ == "physics" or (with_ == "auto" and not paired):
        return "physics"
    return "traveling" if paired else "none"


def pooled_outputs(harmonizer, train: TrainingSet, progress: bool = True,
                   slice_step: int = 1, keep: int = 0) -> list[dict]:
    """Per source protocol of ``train`` (:func:`phyjax.data.split.protocols_match`), the
    in-mask voxels of ``harmonizer``'s outputs (its calibration off) on the training scans,
    pooled, and of the same subjects' target-site scans, pooled: a list of ``{"p": protocol,
    "sites", "subjects": sets, "out", "tgt": 1-D arrays, "aligned": bool}`` -- what
    :func:`fit_site_maps` fits.

    ``slice_step`` k > 1: only every k-th slice along each scan's third axis (source and
    target alike) is harmonized and pooled, a systematic sample of the voxels
    (``harmonizer.harmonize(volume, z_slices=...)`` of a slice network,
    :func:`phyjax.methods.networks.predict_volume`) for about 1/k of the inference time.  The
    sample starts at slice ``i mod k`` for the ``i``-th subject (sorted names): heads on one
    grid (deformations of one template, the physics-made heads) then have every slice position
    sampled by 1/k of them, where one start for all would pool the same anatomical positions
    from every head -- a sample of the anatomy, not of the voxels (docs/phycharm_ablation.md,
    items 78 and 79).
    ``train`` may also be :class:`CalibrationHeads` (heads made by the physics).
    ``"aligned"``: every scan of the group has its target scan's brain mask, voxel for voxel,
    so ``out`` and ``tgt`` are voxel pairs (what :func:`least_squares_knots` needs).
    ``keep`` > 0: each group also holds ``"images"``, ``(output, target, mask)`` of its first
    ``keep`` scans whose grid is their target scan's (the sampled slices only), for
    :func:`choose_denoise`.
    Raises InputError when no training subject has a scan at a source site and the target
    site, or for ``slice_step`` < 1.
    """
    if not isinstance(train, CalibrationHeads):
        train = require_training_set(train)
    step = int(slice_step)
    if step < 1:
        raise InputError(f"config.model.calibrate_slice_step={slice_step!r}; expected an "
                         "integer >= 1.")

    def sampled(vol, start):    # (z_slices to harmonize or None, their in-mask voxels)
        if step == 1:
            return None, np.asarray(vol.mask, bool)
        n = np.shape(vol.mask)[2]
        z = np.arange(start if start < n else 0, n, step)
        return z, slice_mask(vol.mask, z)
    jobs = []       # (subject, site, scan, its target, the target's sampled voxels, the
    # sample's first slice), in order
    for i, subject in enumerate(sorted(train.subjects)):
        scans = train.volumes[subject]
        target = scans.get(train.target_site)
        if target is None:
            continue
        start = i % step
        t = np.asarray(target.image, np.float32)[sampled(target, start)[1]]  # once per subject
        jobs += [(subject, site, vol, target, t, start) for site, vol in sorted(scans.items())
                 if site != train.target_site and vol.protocol is not None]

    def run(job):
        vol = job[2]
        z, inside = sampled(vol, job[5])
        out = harmonizer.harmonize(vol) if z is None else harmonizer.harmonize(vol, z_slices=z)
        return out, z, inside

    groups: list[dict] = []
    saved = harmonizer.cfg.get("calibrate", "none")
    harmonizer.cfg["calibrate"] = "none"
    try:
        # two scans in flight at once (phyjax.parallel): the same outputs, in the same order
        for k, (out, z, inside) in enumerate(ordered_map(run, jobs)):
            subject, site, vol, target, t, _ = jobs[k]
            g = next((g for g in groups if protocols_match(g["p"], vol.protocol)), None)
            if g is None:
                g = {"p": vol.protocol, "sites": set(), "subjects": set(), "out": [],
                     "tgt": [], "images": [], "aligned": True}
                groups.append(g)
            # voxel pairs: the output's sampled voxels are the target's, one for one, only
            # where the two scans share their brain mask voxel for voxel (heads made by the
            # physics; co-registered scans with one mask)
            g["aligned"] = g["aligned"] and np.array_equal(np.asarray(vol.mask, bool),
                                                           np.asarray(target.mask, bool))
            g["out"].append(out[inside])
            g["tgt"].append(t)
            if len(g["images"]) < keep and np.shape(vol.mask) == np.shape(target.mask):
                zs = slice(None) if z is None else z
                g["images"].append((np.asarray(out, np.float32)[:, :, zs],
                                    np.asarray(target.image, np.float32)[:, :, zs],
                                    np.asarray(target.mask, bool)[:, :, zs]))
            g["sites"].add(site)
            g["subjects"].add(subject)
            if progress and (k + 1 == len(jobs) or jobs[k + 1][0] != subject):
                print(f"[{getattr(harmonizer, 'name', 'harmonizer')}] site maps: subject "
                      f"{subject} harmonized", flush=True)
    finally:
        harmonizer.cfg["calibrate"] = saved
    if not groups:
        raise InputError("config.model.calibrate=sites: no training subject has a scan at a "
                         f"source site and at the target site {train.target_site!r}.")
    return [dict(g, out=np.concatenate(g["out"]), tgt=np.concatenate(g["tgt"])) for g in groups]


def calibration_holdout(train: TrainingSet, heads, seed: int,
                        key: str = "config.model.calibrate_heads"
                        ) -> tuple[TrainingSet, TrainingSet]:
    """``(network_set, maps_set)``: the training subjects the network learns from and those
    its site maps (:func:`fit_site_maps`) are learned on.

    ``heads`` 0 (the default): both are ``train`` -- the maps are learned on the heads the
    network was trained on.  ``heads`` N > 0: N traveling subjects, drawn with ``seed`` among
    those scanned at the target site and at a source site, are kept out of the network's
    training and used only for the maps, so the maps correct the network's residual on heads
    it has not memorized -- the residual it will have on a new head (docs/phycharm_ablation.md,
    item 61).  Raises InputError naming ``key`` when ``heads`` is not an integer >= 0, when
    it would leave the network no subject or take every eligible one, or when a source
    protocol of the network's subjects has no scan among the held-out heads (its map could
    not be learned; the sites are named)."""
    train = require_training_set(train)
    try:
        n = int(heads)
    except (TypeError, ValueError):
        n = -1
    if n != heads or n < 0:
        raise InputError(f"{key}={heads!r}; expected an integer >= 0 (0: the maps are learned "
                         "on the network's own training subjects).")
    if n == 0:
        return train, train
    eligible = sorted(
        s for s, scans in train.volumes.items() if train.target_site in scans
        and any(site != train.target_site and v.protocol is not None
                for site, v in scans.items()))
    if n >= len(eligible) or n >= len(train.subjects):
        raise InputError(f"{key}={n}: only {len(eligible)} training subject(s) have a scan at "
                         f"the target site {train.target_site!r} and at a source site, and the "
                         "network needs at least one of the training subjects; hold out fewer.")
    chosen = sorted(np.random.default_rng(seed).permutation(eligible)[:n].tolist())
    rest, held = train.partition(chosen)

    def protocols(ts):
        return [(site, v.protocol) for scans in ts.volumes.values() for site, v in scans.items()
                if site != ts.target_site and v.protocol is not None]
    held_p = [p for _, p in protocols(held)]
    missing = sorted({site for site, p in protocols(rest)
                      if not any(protocols_match(p, q) for q in held_p)})
    if missing:
        raise InputError(f"{key}={n}: the held-out subjects {chosen} have no scan with the "
                         f"protocol of site(s) {missing}, so no map could be learned for them; "
                         "hold out more subjects or set it to 0.")
    return rest, held


def fit_site_maps(harmonizer, train: TrainingSet, knots: int = 256,
                  progress: bool = True, slice_step: int = 1, denoise: str = "",
                  denoise_min_gain: float = 0.0, form: str = "quantile") -> list[dict]:
    """The monotone intensity map, per source protocol, that carries the network's outputs on
    the training scans onto the same subjects' target-site scans (``config.model.calibrate=
    sites``).

    For each protocol of the training set's source scans (:func:`phyjax.data.split.
    protocols_match`; one per site in the default data), ``harmonizer`` (its calibration off)
    harmonizes every training scan with it; the in-mask voxel values of those outputs, pooled,
    and of the same subjects' target-site scans, pooled, give ``knots`` quantiles each, and the
    map is the piecewise-linear function through the pairs of quantiles -- quantile matching
    (the transport that maps one 1-D distribution onto another; the step of Nyul et al. 1999
    with every quantile as a landmark), fitted on pairs so that what it corrects is the
    network's systematic residual at that protocol, not anatomy: both distributions are of
    the same heads.  Beyond the end knots the map is constant.

    ``form`` (``config.model.calibrate_map``, :data:`CALIBRATE_MAP`) ``"least_squares"``: where
    a protocol's outputs and target scans are voxel pairs (``"aligned"`` in
    :func:`pooled_outputs`: the heads made by the physics), the map is instead the increasing
    map of least squares on those pairs (:func:`least_squares_knots`, ``knots`` bins); a
    protocol whose heads are not aligned keeps the quantile map, printed.  A source scan
    counts as voxel-paired with its target scan when their brain masks are equal voxel for
    voxel: true of the physics' heads and of co-registered scans with one mask, and also of
    unregistered sessions that share one subject-level BIDS mask, which this cannot tell
    apart -- use ``least_squares`` with traveling subjects only when their scans are
    co-registered.  ``slice_step``:
    the voxels of every ``slice_step``-th slice only (:func:`pooled_outputs`).

    ``denoise`` (``config.model.calibrate_denoise``, :func:`parse_denoise`): candidate
    in-plane filters; each map then also holds the one :func:`choose_denoise` picks on the
    same heads (``"denoise"``: ``{"sigma", "range", "psnr_gain_db"}``, or None for no filter,
    also where it gains less than ``denoise_min_gain`` dB there, or where ``train`` is
    :class:`CalibrationHeads` whose ``own_effects`` lacks the site: heads with drawn scanner
    effects have a noise that is not the site's), applied after the map
    (:func:`apply_site_map`).

    Returns a list of ``{"protocol", "sites", "subjects", "form", "output", "target"}``
    (JSON-ready; ``form``: the map's, ``quantile`` or ``least_squares``; ``output``/``target``:
    ``(knots,)`` nondecreasing intensities on the data's scale; and ``"denoise"`` with
    candidates).  Raises InputError for ``knots`` < 2, a bad ``denoise`` or ``form`` or a
    training set with no subject scanned at both a source site and the target site.
    """
    knots = int(knots)
    if knots < 2:
        raise InputError(f"config.model.calibrate_knots={knots}; expected at least 2.")
    check_calibrate_map(form)
    candidates = parse_denoise(denoise)
    least = check_min_gain(denoise_min_gain)
    own = getattr(train, "own_effects", None)
    # the scans a filter is scored on are kept only where some site may choose one
    groups = pooled_outputs(harmonizer, train, progress, slice_step,
                            keep=DENOISE_SCANS if candidates and own != frozenset() else 0)
    q = np.linspace(0.0, 1.0, knots)
    maps = []
    for g in groups:
        entry = {"protocol": protocol_to_json(g["p"]), "sites": sorted(g["sites"]),
                 "subjects": len(g["subjects"])}
        if form == "least_squares" and g["aligned"] and g["out"].size >= knots:
            out_k, tgt_k = least_squares_knots(g["out"], g["tgt"], knots)
            entry.update(form="least_squares", output=out_k.tolist(), target=tgt_k.tolist())
        else:
            if form == "least_squares" and progress:
                why = ("its heads are not voxel pairs with their target scans (another brain "
                       "mask or grid)" if not g["aligned"] else
                       f"its heads have {g['out'].size} voxel pairs for {knots} knots")
                print(f"[{getattr(harmonizer, 'name', 'harmonizer')}] site map of "
                      f"{', '.join(sorted(g['sites'])) or g['p']}: {why}, so its map is the "
                      "quantile one", flush=True)
            entry.update(form="quantile",
                         output=np.maximum.accumulate(np.quantile(g["out"], q)).tolist(),
                         target=np.maximum.accumulate(np.quantile(g["tgt"], q)).tolist())
        if candidates and own is not None and not set(g["sites"]) <= own:
            entry["denoise"] = None     # drawn noise is not the site's: no filter chosen on it
        elif candidates:
            entry["denoise"] = choose_denoise(g["images"], entry, candidates, least)
            if progress:
                f = entry["denoise"]
                print(f"[{getattr(harmonizer, 'name', 'harmonizer')}] site map of "
                      f"{', '.join(sorted(g['sites'])) or g['p']}: " + (
                          "no in-plane filter" if f is None else
                          f"in-plane filter {f['sigma']:g} voxel, range {f['range']:g} "
                          f"(+{f['psnr_gain_db']:.2f} dB on {len(g['images'])} scans)"),
                      flush=True)
        maps.append(entry)
    return maps


def learn_site_maps(harmonizer, train: TrainingSet, knots: int = 256, has_heads: bool = True,
                    progress: bool = True, slice_step: int = 1, denoise: str = "",
                    denoise_min_gain: float = 0.0, form: str = "quantile"):
    """After training: ``harmonizer`` with its site maps (:func:`fit_site_maps`, of ``form``,
    ``knots`` knots from every ``slice_step``-th slice, on ``train``: traveling subjects or
    :class:`CalibrationHeads`) in ``cfg["site_maps"]`` when its ``cfg["calibrate"]`` is
    ``"sites"``; with no heads to learn them on (``has_heads`` False: a model without
    traveling subjects whose ``calibrate_with`` asks for them) it falls back to
    ``calibrate="none"``, printed.  Returns ``harmonizer``."""
    if harmonizer.cfg.get("calibrate", "none") != "sites":
        return harmonizer
    name = getattr(harmonizer, "name", "harmonizer")
    if not has_heads:
        print(f"[{name}] calibrate=sites with calibrate_with='traveling' learns its maps on "
              "traveling-subject pairs; this model trains on physics-made ones, so its output "
              "stays the network's (calibrate=none)", flush=True)
        harmonizer.cfg["calibrate"] = "none"
        return harmonizer
    harmonizer.cfg["site_maps"] = fit_site_maps(harmonizer, train, knots, progress, slice_step,
                                                denoise, denoise_min_gain, form)
    return harmonizer


@dataclasses.dataclass(frozen=True)
class MapsPlan:
    """Where a network's site maps are learned (:func:`plan_site_maps`).

    ``source``: ``"traveling"``, ``"physics"`` or ``"none"`` (:func:`maps_source`, after a
    method without the physics has fallen back); ``network_set``: the training subjects the
    network learns from; ``maps_set``: the traveling subjects the maps are learned on
    (``"traveling"``; the network's own unless ``calibrate_heads`` holds some out), or None
    (``"physics"``: ``n_physics`` heads made by the physics after training; ``"none"``)."""

    source: str
    network_set: TrainingSet
    maps_set: TrainingSet | None
    n_physics: int = 0


def plan_site_maps(train: TrainingSet, settings, seed: int, section: str, paired: bool = True,
                   has_physics: bool = True, name: str = "harmonizer") -> MapsPlan:
    """The :class:`MapsPlan` of a network with ``settings`` (``config.model`` /
    ``config.unet``; ``section`` names it in errors) trained on ``train``: the one place that
    decides which heads its site maps are learned on, for training (:func:`fit_calibrated`)
    and for a tool that learns them again (``benchmarks/refine_sweep.py``).

    * traveling subjects (``calibrate="sites"`` with traveling-subject pairs, ``paired``):
      :func:`calibration_holdout` with ``calibrate_heads`` and ``seed`` splits ``train`` into
      the network's subjects and the maps' (both ``train`` when ``calibrate_heads`` is 0);
    * heads made by the physics (``calibrate_with="physics"``, or ``"auto"`` without traveling
      subjects): the network learns from all of ``train``; ``n_physics`` is
      ``calibrate_simulated`` (default 8).  A method without the physics
      (``has_physics=False``, e.g. the U-Net) falls back to its traveling subjects under
      ``"auto"``.

    Raises InputError for a bad ``calibrate_with``, ``calibrate_simulated`` or
    ``calibrate_heads``, for physics-made maps together with ``calibrate_heads`` > 0 (two
    sources for one map), or for ``calibrate_with="physics"`` without the physics."""
    source = maps_source(settings, paired, section)
    if source == "physics" and not has_physics:
        if settings.get("calibrate_with", "auto") == "physics":
            raise InputError(f"config.{section}.calibrate_with='physics': {name} has no "
                             "physics to make heads with; use 'traveling'.")
        source = "traveling" if paired else "none"
    if source == "physics":
        n_physics = check_calibrate_simulated(settings.get("calibrate_simulated", 8),
                                              f"config.{section}.calibrate_simulated")
        if settings.get("calibrate_heads", 0):
            raise InputError(f"config.{section}.calibrate_heads="
                             f"{settings.get('calibrate_heads')} holds traveling subjects out "
                             "for the site maps, but they are learned on heads made by the "
                             f"physics here (config.{section}.calibrate_with="
                             f"{settings.get('calibrate_with', 'auto')!r}); set one or the "
                             "other.")
        return MapsPlan(source, train, None, n_physics)
    if source == "traveling":
        net_set, maps_set = calibration_holdout(train, settings.get("calibrate_heads", 0), seed,
                                                f"config.{section}.calibrate_heads")
        return MapsPlan(source, net_set, maps_set)
    return MapsPlan(source, train, None)


def fit_calibrated(fit_network, train: TrainingSet, settings, seed: int, section: str,
                   paired: bool = True, progress: bool = True, name: str = "harmonizer",
                   physics_heads: Callable[[TrainingSet, int], CalibrationHeads] | None = None):
    """A slice network trained by ``fit_network(training_set)`` and its site maps, as
    ``settings`` (``config.model`` for PhyCHarm, ``config.unet`` for the U-Net; ``section``
    names it in errors) ask, learned where :func:`plan_site_maps` says:

    * on traveling subjects (``calibrate="sites"`` with traveling-subject pairs, ``paired``):
      the network learns from the subjects :func:`calibration_holdout` leaves it
      (``calibrate_heads``, drawn with ``seed``) and :func:`learn_site_maps` learns the maps on
      the others (on the same subjects when ``calibrate_heads`` is 0);
    * on heads made by the physics (``calibrate_with="physics"``, or ``"auto"`` without
      traveling subjects): the network learns from every subject of ``train``, and the maps
      are learned on ``calibrate_simulated`` heads ``physics_heads(train, n)``
      (:class:`CalibrationHeads`): heads the network never saw, imaged with each source
      protocol and the target's (docs/phycharm_ablation.md, items 69, 70).

    The harmonizer's ``fitted_on`` is every subject of ``train`` and
    ``cfg["calibration_subjects"]`` those the maps were learned on (empty without maps).
    Raises InputError as :func:`plan_site_maps` does (a method without ``physics_heads`` has
    no physics; with ``"auto"`` it keeps its traveling-subject maps)."""
    plan = plan_site_maps(train, settings, seed, section, paired, physics_heads is not None,
                          name)
    if plan.network_set is not train and progress:
        print(f"[{name}] site maps from the held-out heads {list(plan.maps_set.subjects)}; the "
              f"network trains on {list(plan.network_set.subjects)}", flush=True)
    harm = fit_network(plan.network_set)
    harm.fitted_on = frozenset(train.subjects)      # the held-out heads fitted its maps
    maps_set = plan.maps_set if plan.maps_set is not None else train
    if plan.source == "physics":
        maps_set = physics_heads(train, plan.n_physics)
        if progress:
            print(f"[{name}] site maps from {plan.n_physics} heads made by the physics",
                  flush=True)
    learns = plan.source != "none"
    harm.cfg["calibration_subjects"] = list(maps_set.subjects) if learns else []
    return learn_site_maps(harm, maps_set, settings.get("calibrate_knots", 256), learns,
                           progress, settings.get("calibrate_slice_step", 1),
                           settings.get("calibrate_denoise", ""),
                           settings.get("calibrate_denoise_min_gain", 0.0),
                           check_calibrate_map(settings.get("calibrate_map", "quantile"),
                                               f"config.{section}.calibrate_map"))
