"""PhyCHarm as a method (Lee, Ye & Oh, NeuroImage 2025): fit, harmonize, save, load.

The network (:class:`phyjax.models.PhyCHarm`) predicts T1 and M0 from a source slice and its
protocol, re-synthesizes the target protocol's image from them and refines it (``config.model.
base``: a residual on the re-synthesis, or -- ``gated``, the default -- on a per-voxel blend of
the re-synthesis and the source slice, the blend's weight predicted too).  Training
(:func:`fit`) minimises, per batch of one source site's slices,

    w_map * L1(R1, M0 vs ground truth, where known) + w_physics * physics consistency
    + w_target_physics * target physics consistency
    + w_harm * L1(harmonized, target) + w_ssim * (1 - SSIM(harmonized, target))
    + w_grad * gradient difference(harmonized, target)
    + w_tissue * tissue-class consistency(harmonized, target)
    + w_edge * edge disagreement(harmonized, source)
    + w_hist * intensity-distribution distance(harmonized, target)
    + w_tissue_hist * per-tissue intensity-distribution distance(harmonized, target)
    + w_mixture * segmentation consistency(harmonized, target),

the physics term re-synthesizing the *source* from the predicted maps through the source
protocol's signal equation (scale-free, :func:`phyjax.losses.physics_consistency`), and the
target physics term the target scan from the same maps through the target protocol's (the
re-synthesis the harmonizer starts from; off by default): one head seen with two contrasts
pins its T1 and M0 down better than either scan alone, as variable-flip-angle mapping does.
The gradient, tissue and edge terms keep anatomy, not just intensities: the
gradient-difference loss (Mathieu et al. 2016) punishes blurred edges; the tissue-class term
compares soft CSF/GM/WM memberships at the target protocol's tissue signal levels (from its
signal equation), so errors that move a voxel across a tissue boundary -- what segmentations
and volumes see -- cost most; the
normalized-gradient-field term (Haber & Modersitzki 2006) asks every edge of the output to lie
where the *source* has one, whatever the contrast -- the only image term that also applies to a
real scan without a target (the unpaired adaptation batches).  The distribution term (the
Wasserstein-1 distance of each slice's in-mask intensities, :func:`phyjax.losses.
intensity_distribution`) asks the output's histogram to keep the target's spread: voxel-wise
losses let the output regress to the mean where the source cannot tell (dark CSF texture,
partial volume), which narrows the histogram and shifts the class boundaries a
histogram-fitting segmenter draws.  The per-tissue form (:func:`phyjax.losses.
tissue_distribution`; off by default) compares the distributions inside each of the target's
tissue classes, so a too-bright grey matter cannot be traded against a too-dark white matter.
The segmentation-consistency term (:func:`phyjax.losses.mixture_consistency`; on by default)
segments the output and the target each with a Gaussian mixture fitted to that image by EM --
the fixed segmenter's model without its MRF prior -- and compares the posteriors: the tissue
levels, spreads and proportions are the image's own, as the segmenter that measures the
volumes re-estimates them, where the tissue-class term holds them at the protocol's levels.

Where the pairs come from (``config.train.pairs``): traveling subjects (``paired``), or the
physics (``simulated``): the training set's own source protocols, ``random_sources`` more per
family drawn from its documented range (domain randomisation, with scanner effects drawn for
every simulated scan) and the target protocol -- or a documented range of targets
(``config.target.randomize``), so that one model harmonizes to any of them -- simulated on
shipped anatomies (:mod:`phyjax.data.simulated`), every
``adapt_every``-th batch a real, unpaired scan of the training set with only the physics term
(its own maps re-synthesized through its own protocol) and the edge term (the output's edges
where the scan has them).  The simulated mode never reads a target-site image: the target is a
protocol.  Traveling-subject training can take physics-made pairs too
(``config.train.simulated_every`` N > 0): every N-th batch is one, on shipped anatomies the
traveling subjects do not have, so the network sees more heads than the site's few.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.config_files import check_number
from phyjax.data import geometry, simulated, synthetic
from phyjax.data.nifti import InputError
from phyjax.data.slices import check_views, slice_mask
from phyjax.data.split import TrainingSet, protocols_match, require_training_set
from phyjax.losses import (edge_agreement, gradient_difference, intensity_distribution, masked_l1,
                           mixture_consistency, physics_consistency, r1_m0_map_loss, ssim_loss,
                           tissue_consistency, tissue_distribution)
from phyjax.methods import map_cache, networks
from phyjax.methods.base import fitted_fields, protocol_to_json, register
from phyjax.methods.calibration import (CALIBRATE, CalibrationHeads,  # noqa: F401
                                       calibrate_output, check_calibrate, check_calibrate_map,
                                       check_min_gain, check_calibrate_simulated, fit_calibrated,
                                       fit_site_maps, learn_site_maps, parse_denoise,
                                       site_map_for)
from phyjax.models.phycharm import (BASES, PARTIAL_VOLUME, PhyCHarm, reference_signal,
                                    synthesize_maps)
from phyjax.physics import consistency, signal, tissues
from phyjax.physics.sequences import Protocol, encode
from phyjax.physics.tissues import TISSUES, tissue_parameters
from phyjax.train import TrainState, fit as fit_loop, make_train_step

MODEL_KEYS = ("features", "cond_features", "t1_max", "m0_max", "context", "readout",
              "partial_volume", "base", "gate_prior", "source_smoothing", "source_range",
              "detail_gate", "source_smoothing_wide")
#: ``config.model.readout``: how the model's signal equations treat an MPRAGE readout train
READOUT = ("sidecar", "static")
#: ``config.model.calibrate_effects``: the scanner effects of the physics-made heads that site
#: maps are learned on (:func:`calibration_heads`): ``drawn`` from
#: :data:`phyjax.data.simulated.EFFECT_RANGES`, ``fitted`` to each site's own scans, or
#: ``auto``: fitted where the site's subjects were also scanned at the target site (the fit's
#: reference, docs/phycharm_ablation.md item 71), else drawn (item 70)
CALIBRATE_EFFECTS = ("auto", "drawn", "fitted")
PAIRS = ("auto", "paired", "simulated")
#: loss weights of ``config.train`` (traced inputs of the training step)
WEIGHTS = ("w_map", "w_physics", "w_harm", "w_ssim", "w_grad", "w_tissue", "w_edge", "w_hist",
           "w_tissue_hist", "w_target_physics", "w_mixture")
#: the terms that need a target image (0 on an unpaired scan's batch)
PAIRED_TERMS = ("w_map", "w_harm", "w_ssim", "w_grad", "w_tissue", "w_hist", "w_tissue_hist",
                "w_target_physics", "w_mixture")
#: ``config.model.refine``: the data-consistency step at inference (:func:`refine_outputs`)
REFINE_DEFAULTS = {"enabled": False, "t1_sd": 0.15, "m0_sd": 0.08, "noise": 0.06,
                   "bias_fwhm_mm": 40.0, "iterations": 3}


def make_model(model_cfg) -> PhyCHarm:
    """The flax module of ``model_cfg`` (a config section or a dict with :data:`MODEL_KEYS`)."""
    m = dict(model_cfg)
    return PhyCHarm(features=tuple(m["features"]), cond_features=m["cond_features"],
                    t1_max=m["t1_max"], m0_max=m["m0_max"],
                    partial_volume=check_partial_volume(m.get("partial_volume", "single")),
                    base=check_base(m.get("base", "resynth")),
                    gate_prior=check_gate_prior(m.get("gate_prior", 0.5)),
                    source_smoothing=check_source_smoothing(m.get("source_smoothing", 0.0)),
                    source_range=check_source_smoothing(m.get("source_range", 0.0),
                                                        "source_range", "intensity sd"),
                    detail_gate=check_detail_gate(m.get("detail_gate", False),
                                                  m.get("base", "resynth"),
                                                  m.get("source_smoothing", 0.0)),
                    source_smoothing_wide=check_smoothing_wide(
                        m.get("source_smoothing_wide", 0.0), m.get("detail_gate", False),
                        m.get("source_smoothing", 0.0)))


def check_smoothing_wide(value, detail_gate, source_smoothing) -> float:
    """``config.model.source_smoothing_wide`` (voxels; 0, off, for a model saved before it
    existed) as a float; InputError if it is not a finite number >= 0, or if it is > 0 without
    the detail gate it is a third arm of, or not wider than ``source_smoothing``."""
    wide = check_source_smoothing(value, "source_smoothing_wide")
    if wide > 0 and not (detail_gate is True or detail_gate is np.True_):
        raise InputError(f"config.model.source_smoothing_wide={value!r} is a third arm of the "
                         "detail gate: it needs config.model.detail_gate=True (and "
                         "source_smoothing > 0).")
    if wide > 0 and wide <= float(source_smoothing):
        raise InputError(f"config.model.source_smoothing_wide={value!r} must be wider than "
                         f"config.model.source_smoothing={source_smoothing!r}.")
    return wide


def check_detail_gate(value, base: str, source_smoothing) -> bool:
    """``config.model.detail_gate`` as a bool (a model saved before the setting existed has
    False); InputError if it is not a bool, or if it is True without something to choose
    between: the gated ``base`` and ``source_smoothing`` > 0."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"config.model.detail_gate={value!r}; must be True or False.")
    if value and not (base == "gated" and float(source_smoothing) > 0):
        raise InputError("config.model.detail_gate=True chooses per voxel between the gated "
                         "base's raw and smoothed source slice: it needs config.model.base="
                         "gated (or auto, for a model of one target) and "
                         f"config.model.source_smoothing > 0 (here base={base!r}, "
                         f"source_smoothing={source_smoothing!r}).")
    return bool(value)


def check_source_smoothing(value, key: str = "source_smoothing", unit: str = "voxels") -> float:
    """``value`` as a float if it is finite and >= 0 (``config.model.source_smoothing``, voxels,
    or ``source_range``, an intensity sd; a model saved before the settings existed has 0: the
    source slice unsmoothed), else InputError naming ``config.model.<key>``."""
    return check_number(value, f"config.model.{key}", low=0.0, note=f"{unit}; 0 = off")


def check_gate_prior(value) -> float:
    """``value`` as a float if it is in (0, 1) (``config.model.gate_prior``; a model saved
    before the setting existed has 0.5, no offset), else InputError."""
    return check_number(value, "config.model.gate_prior", low=0.0, high=1.0, low_open=True,
                        high_open=True)


def check_base(value: str) -> str:
    """``value`` if it is one of :data:`phyjax.models.phycharm.BASES` (a model's resolved
    ``base``; one saved before the setting existed is ``resynth``), else InputError (``auto``
    too: :func:`resolve_base` first)."""
    if value not in BASES:
        raise InputError(f"config.model.base={value!r}; expected one of {BASES}"
                         + (" (resolve 'auto' with resolve_base first)" if value == "auto"
                            else "") + ".")
    return value


def resolve_base(value: str, many_targets: bool) -> str:
    """``config.model.base`` for one training: ``auto`` is ``gated`` for a model of one target
    and ``resynth`` for one trained for a range of targets (``config.target.randomize``): the
    source's own slice is the wrong start for a target far from its contrast, and in a
    300-step test a gated model asked for a short-TI target kept the source's contrast
    (tests/test_unpaired_training.py; docs/phycharm_ablation.md, item 42).  A named base is
    kept.  InputError for another value."""
    if value == "auto":
        return "resynth" if many_targets else "gated"
    return check_base(value)


def resolve_base_settings(model_cfg, many_targets: bool) -> dict:
    """``base``, ``partial_volume``, ``source_smoothing``, ``source_range``, ``detail_gate`` and
    ``source_smoothing_wide`` of ``model_cfg`` for one training: ``base`` resolved
    (:func:`resolve_base`), every value checked (InputError naming the bad one), and the gated
    base's own settings off where they cannot act, as ``gate_prior`` is unused there: all of
    them for a ``resynth`` base (no source slice to smooth; named or resolved from ``auto``, so
    ``--config.model.base=resynth`` needs no other flag beside the default's smoothing),
    ``detail_gate`` where nothing is smoothed (as ``source_range`` is then inert),
    ``source_smoothing_wide`` without the detail gate; ``partial_volume`` resolved for that base
    and ``model_cfg["pairs"]`` (:func:`resolve_partial_volume`; ``paired`` if absent). What is
    returned is what the model is built and saved with, so the harmonize sidecar records what
    was used."""
    base = resolve_base(model_cfg["base"], many_targets)
    partial_volume = resolve_partial_volume(model_cfg.get("partial_volume", "single"), base,
                                            model_cfg.get("pairs", "paired"))
    smoothing = check_source_smoothing(model_cfg.get("source_smoothing", 0.0))
    range_sd = check_source_smoothing(model_cfg.get("source_range", 0.0), "source_range",
                                      "intensity sd")
    detail = check_detail_gate(model_cfg.get("detail_gate", False), "gated", 1.0)  # its type
    wide = check_source_smoothing(model_cfg.get("source_smoothing_wide", 0.0),
                                  "source_smoothing_wide")
    if base == "resynth":
        smoothing, range_sd = 0.0, 0.0
    detail = detail and smoothing > 0
    wide = wide if detail else 0.0      # a third arm of the detail gate, inert without it
    check_smoothing_wide(wide, detail, smoothing)
    return {"base": base, "partial_volume": partial_volume, "source_smoothing": smoothing,
            "source_range": range_sd, "detail_gate": detail, "source_smoothing_wide": wide}


def resolve_partial_volume(value: str, base: str, pairs: str = "paired") -> str:
    """``config.model.partial_volume`` for one training with the resolved ``base`` and ``pairs``
    (:func:`resolve_pairs`): ``auto`` is ``two_tissue`` on the gated base, where it passed its
    validation rule with traveling-subject pairs (two seeds, 12 unseen heads: +0.03 dB, GM Dice
    +0.0027, mean |dV| -0.56 points; docs/phycharm_ablation.md, item 50) and with physics-made
    pairs (``phycharm_unpaired``: -0.22 dB, GM Dice +0.0053, mean |dV| -1.35 points; item 52),
    and ``single`` on the re-synthesis base, where it failed its rule twice (-0.37 dB; items
    30 and 35).  ``pairs`` is kept for the record (both kinds resolve alike since item 52).
    A named value is kept.  InputError for another value."""
    if value == "auto":
        return "two_tissue" if base == "gated" else "single"
    return check_partial_volume(value)


def check_partial_volume(value: str) -> str:
    """``value`` if it is one of :data:`phyjax.models.phycharm.PARTIAL_VOLUME`
    (``config.model.partial_volume``; a model saved before the setting existed is ``single``),
    else InputError."""
    if value not in PARTIAL_VOLUME:
        raise InputError(f"config.model.partial_volume={value!r}; expected one of "
                         f"{PARTIAL_VOLUME}"
                         + (" (resolve 'auto' with resolve_partial_volume first)"
                            if value == "auto" else "") + ".")
    return value


def reference_level(target: Protocol) -> float:
    """Signal of white matter under ``target`` (the unit of re-synthesized target images)."""
    return float(reference_signal(target, tissue_parameters(target.field_strength)["wm"]))


def tissue_levels(target: Protocol, target_ref):
    """``(3,)`` CSF, GM, WM signal of ``target`` in units of ``target_ref`` (T2/T2* folded into
    M0 as in :func:`phyjax.models.phycharm.synthesize_maps`), from the tissue table of the B0
    nearest ``target.field_strength``; every input may be traced (a concrete B0 without a
    table raises ValueError, :func:`phyjax.physics.tissues.check_field_strengths`)."""
    table = tissues.nearest_table(target.field_strength)   # (3, [t1, t2, t2*, pd])
    assert TISSUES == ("csf", "gm", "wm")
    return signal.synthesize(target, table[:, 0], jnp.inf, jnp.inf, table[:, 3]) / target_ref


def init_params(model: PhyCHarm, padded, context: int, seed: int):
    """Initial parameters for slices of shape ``padded`` (PRNG key ``seed``)."""
    h, w = padded
    x = jnp.zeros((1, h, w, 2 * context + 1))
    mask = jnp.zeros((1, h, w, 1))
    code = jnp.zeros((1, encode(Protocol(tr=1.0, te=0.0)).shape[-1]))
    tgt = Protocol(tr=2.0, te=0.0, ti=1.0)
    return model.init(jax.random.key(seed), x, mask, code, code, tgt, 1.0, 3.0)["params"]


#: the training metric each loss term is logged as (``ssim`` logged as SSIM, not 1 - SSIM)
METRIC_NAMES = {"w_map": "map", "w_physics": "physics", "w_harm": "l1", "w_ssim": "ssim",
                "w_grad": "grad", "w_tissue": "tissue", "w_edge": "edge", "w_hist": "hist",
                "w_tissue_hist": "tissue_hist", "w_target_physics": "target_physics",
                "w_mixture": "mixture"}


def resolve_loss_weights(train_cfg, pairs: str, calibrate: str) -> dict[str, float]:
    """The :data:`WEIGHTS` of one training, from ``config.train``: each weight as configured,
    except the intensity-distribution term's, which depends on whether per-site output maps
    follow the network: ``train.w_hist`` where they do (traveling-subject ``pairs="paired"``
    with ``calibrate="sites"``, the default: the maps, quantile matching onto the target on
    the training pairs, restore the histogram's spread -- 0 there passed its validation rule,
    docs/phycharm_ablation.md item 57), ``train.w_hist_no_maps`` everywhere else
    (physics-made pairs, whose maps are learned on heads made by the physics and were measured
    with this term on, item 70; or another ``calibrate``; 2, item 6's weight, never re-measured
    there). Raises InputError naming the key of a weight that is not a finite number >= 0."""
    maps = pairs == "paired" and calibrate == "sites"
    out = {}
    for k in WEIGHTS:
        key = "w_hist_no_maps" if k == "w_hist" and not maps else k
        value = train_cfg.get(key, train_cfg[k])   # a config without w_hist_no_maps: w_hist
        w = check_number(value, f"config.train.{key}", low=0.0)
        out[k] = w
    return out


def active_terms(train_cfg) -> tuple[str, ...]:
    """The loss terms of :data:`WEIGHTS` whose ``config.train`` weight is not 0, in that order."""
    return tuple(k for k in WEIGHTS if float(train_cfg[k]) != 0.0)


def make_loss(model: PhyCHarm, active=WEIGHTS):
    """``loss_fn(params, batch, source, target, target_ref, weights) -> (loss, metrics)``.

    ``source``/``target``: :class:`Protocol` (traced numeric fields, so one compilation serves
    every protocol of a family); ``target_ref``: :func:`reference_level` of ``target``;
    ``weights``: :data:`WEIGHTS` (traced scalars: a batch without a target image -- a real,
    unpaired scan -- sets :data:`PAIRED_TERMS` to 0).  ``active``: the terms computed at all
    (static; :func:`active_terms` of the config): a term switched off in the config costs no
    compute, and a non-finite gradient of a term that is off cannot reach the parameters
    (``0 * nan`` is nan).  The metrics are ``loss`` and the active terms' :data:`METRIC_NAMES`.

    Raises ValueError for a name in ``active`` that is not in :data:`WEIGHTS`.
    """
    active = tuple(active)
    unknown = sorted(set(active) - set(WEIGHTS))
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; expected some of {WEIGHTS}")

    def loss_fn(params, b, source_protocol, target, target_ref, weights):
        code = encode(source_protocol)
        code_src = jnp.broadcast_to(code, (b["source"].shape[0],) + code.shape)
        code_tgt = jnp.broadcast_to(encode(target), code_src.shape)
        out = model.apply({"params": params}, b["source"], b["mask"], code_src, code_tgt,
                          target, target_ref, source_protocol.field_strength)
        harm, tgt, mask = out["harmonized"], b["target"], b["mask"]
        centre = b["source"].shape[-1] // 2
        source = b["source"][..., centre:centre + 1]

        def physics():
            if model.partial_volume == "single":
                r_src = signal.synthesize(source_protocol, out["t1"], jnp.inf, jnp.inf, out["m0"])
            else:   # the source through the same voxel model as the target re-synthesis
                r_src = synthesize_maps(source_protocol, out["t1"], out["m0"],
                                        source_protocol.field_strength, model.partial_volume)
            return physics_consistency(source, r_src, mask)

        levels = lambda: tissue_levels(target, target_ref)  # noqa: E731
        terms = {"w_map": lambda: r1_m0_map_loss(out["t1"], out["m0"], b["t1"], b["m0"], mask),
                 "w_physics": physics,
                 "w_harm": lambda: masked_l1(harm, tgt, mask),
                 "w_ssim": lambda: ssim_loss(harm, tgt, mask),
                 "w_grad": lambda: gradient_difference(harm, tgt, mask),
                 "w_tissue": lambda: tissue_consistency(harm, tgt, mask, levels()),
                 "w_edge": lambda: edge_agreement(harm, source, mask),
                 "w_hist": lambda: intensity_distribution(harm, tgt, mask),
                 "w_tissue_hist": lambda: tissue_distribution(harm, tgt, mask, levels()),
                 "w_mixture": lambda: mixture_consistency(harm, tgt, mask, levels()),
                 # the same maps must explain the target scan too (two contrasts of one head)
                 "w_target_physics": lambda: physics_consistency(tgt, out["resynth"], mask)}
        values = {k: terms[k]() for k in active}
        loss = sum((weights[k] * values[k] for k in active), jnp.zeros((), harm.dtype))
        metrics = {METRIC_NAMES[k]: values[k] for k in active}
        if "ssim" in metrics:
            metrics["ssim"] = 1.0 - metrics["ssim"]
        return loss, {"loss": loss, **metrics}

    return loss_fn


class PhyCHarmHarmonizer(networks.SliceNetworkHarmonizer):
    """Trained PhyCHarm; :meth:`predict` gives ``t1`` (s, source B0), ``m0``, ``resynth`` and
    ``harmonized``.  Harmonizes to its fitted target, or to any ``target`` inside the range it
    was trained for (``cfg["target_range"]``, :func:`phyjax.data.simulated.target_range`)."""

    config_key = "model"

    def build(self):
        model = make_model(self.cfg)

        @jax.jit
        def predict(params, source, mask, code_src, source_field_strength, target, ref):
            code_tgt = jnp.broadcast_to(encode(target), code_src.shape)
            return model.apply({"params": params}, source, mask, code_src, code_tgt, target,
                               ref, source_field_strength)

        return predict

    def check_target(self, target: Protocol) -> None:
        """InputError unless this model was trained for ``target``."""
        accepted = self.cfg.get("target_range") or simulated.target_range(self.target_protocol,
                                                                          False)
        problems = simulated.range_problems(target, accepted)
        if problems:
            raise InputError(f"this PhyCHarm model was not trained for the requested target: "
                             f"{'; '.join(problems)}. Train with config.target.randomize=True "
                             "(or for this target) to harmonize to it.")

    def predict(self, volume, target: Protocol | None = None,
                z_slices=None) -> dict[str, np.ndarray]:
        """Every output on ``volume`` (``(X, Y, Z)`` arrays), harmonized to ``target``
        (default: the fitted target); ``z_slices``: only those slices along the third axis
        are needed (:func:`phyjax.methods.networks.predict_volume`; the data-consistency step
        then fits those slices alone).  Site maps (``calibrate="sites"``) were learned for the
        fitted target: to another target of a model trained for a range of them
        (``config.target.randomize``) the output stays the network's, with a warning
        (:meth:`maps_apply`).  Raises InputError for a target outside the trained range."""
        target = self.target_protocol if target is None else target
        self.check_target(target)
        maps_apply = self.maps_apply(target)
        target = _f32(target, self.cfg.get("readout", "sidecar"))
        check_protocol(volume.protocol, getattr(volume, "path", None) or "the source scan")
        ref = reference_level(target)

        def run(params, source, mask, code, b0):
            return self._predict(params, source, mask, code, b0, target, ref)

        out = networks.predict_volume(run, self.params, volume.image, volume.mask,
                                      volume.protocol, len(self.cfg["features"]),
                                      self.batch_size, self.cfg["context"], *self.tta(volume),
                                      self.views(), z_slices)
        settings = refine_settings(self.cfg.get("refine"))
        if settings["enabled"]:
            out = refine_outputs(out, volume, target, ref, settings, self.cfg,
                                 mask=slice_mask(volume.mask, z_slices))
        if not maps_apply:
            warnings.warn("config.model.calibrate=sites: the site maps were learned for the "
                          f"fitted target ({self.target_protocol}); harmonized to another "
                          "target, the output is the network's, uncalibrated.", stacklevel=2)
            return out
        return self.calibrate(out, volume, z_slices)

    def maps_apply(self, target: Protocol | None) -> bool:
        """Whether the site maps act on an output harmonized to ``target`` (None: the fitted
        one): True unless this model calibrates with ``sites`` and ``target`` is not the
        fitted target, whose scans the maps were learned to match."""
        return (self.cfg.get("calibrate", "none") != "sites" or target is None
                or protocols_match(target, self.target_protocol))

    def harmonize(self, volume, target: Protocol | None = None, z_slices=None) -> np.ndarray:
        """The harmonized image of ``volume`` (``target`` and ``z_slices``: see
        :meth:`predict`; slices outside ``z_slices`` are 0)."""
        return self.image_of(volume, self.predict(volume, target, z_slices), z_slices)


def refine_settings(cfg) -> dict:
    """``config.model.refine`` (or a saved harmonizer's) completed with :data:`REFINE_DEFAULTS`
    (a model saved before the setting existed: off).  InputError for an unknown key or a
    value out of range."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(REFINE_DEFAULTS))
    if unknown:
        raise InputError(f"config.model.refine: unknown setting(s) {unknown}; expected "
                         f"{sorted(REFINE_DEFAULTS)}.")
    out = dict(REFINE_DEFAULTS, **cfg)
    for key in ("t1_sd", "m0_sd", "noise", "bias_fwhm_mm"):
        if not float(out[key]) > 0:
            raise InputError(f"config.model.refine.{key}={out[key]!r}; must be > 0.")
    if int(out["iterations"]) < 1:
        raise InputError(f"config.model.refine.iterations={out['iterations']!r}; must be >= 1.")
    return out


def _voxel_signal(protocol: Protocol, t1, m0, maps_field_strength, partial_volume: str):
    """:func:`phyjax.models.phycharm.synthesize_maps` (the network's own voxel model) for maps
    of any shape without a batch axis, at ``maps_field_strength`` (T, scalar)."""
    return synthesize_maps(protocol, t1[None], m0[None], maps_field_strength,
                           partial_volume)[0]


@functools.partial(jax.jit, static_argnames=("iterations", "partial_volume"))
def _refine_volume(source_protocol, target, ref, image, t1, m0, gain, b0_source, settings,
                   iterations, partial_volume="single"):
    def forward(t1_, m0_):      # the source through the voxel model the maps were made under
        return _voxel_signal(source_protocol, t1_, m0_, b0_source, partial_volume)

    t1r, m0r = consistency.map_update(
        source_protocol, image, t1, m0, gain, t1_sd=settings["t1_sd"], m0_sd=settings["m0_sd"],
        noise=settings["noise"], iterations=iterations, t1_max=settings["t1_max"],
        m0_max=settings["m0_max"], forward=forward)

    def target_image(t1_, m0_):
        return _voxel_signal(target, t1_, m0_, b0_source, partial_volume) / ref

    return t1r, m0r, target_image(t1r, m0r) - target_image(t1, m0)


def refine_outputs(out: dict, volume, target: Protocol, ref: float, settings: dict,
                   cfg: dict, mask: np.ndarray | None = None) -> dict:
    """PhyCHarm's outputs on ``volume`` after the data-consistency step.

    The network's maps ``out["t1"]``, ``out["m0"]`` (``(X, Y, Z)``, at the source B0) are the
    prior of a per-voxel MAP estimate given the source image itself
    (:func:`phyjax.physics.consistency.map_update`; receive gain by
    :func:`~phyjax.physics.consistency.local_gain` with a Gaussian of ``bias_fwhm_mm`` FWHM on
    the volume's grid), and the target image moves by what the refined maps change in the
    target protocol's signal equation: ``harmonized + g * (S_t(T1', M0') - S_t(T1, M0))`` (same
    units as the re-synthesis; ``g`` the gated model's ``out["gate"]``, 1 for ``base=resynth``:
    the weight the re-synthesis has in the output).  So detail the network smoothed away but
    the source shows comes back with the target's contrast, and nothing changes where the
    source cannot tell.
    Both signal equations take the model's voxel model (``cfg["partial_volume"]``: one tissue
    per voxel, or the two tissues each mean T1 stands for;
    :func:`phyjax.models.phycharm.synthesize_maps`), so the fit explains the source the way
    the network's physics term did.
    ``mask`` (``(X, Y, Z)`` bool; default the volume's): the voxels to fit and to fit the
    receive gain on (e.g. the volume's mask on the slices the network was run on); the others
    keep the network's maps and are 0 in ``resynth`` and ``harmonized``.
    Returns the dict with ``t1``, ``m0``, ``resynth`` and ``harmonized`` refined and the
    network's maps kept as ``t1_network``, ``m0_network``.
    """
    readout = cfg.get("readout", "sidecar")
    pv = check_partial_volume(cfg.get("partial_volume", "single"))
    src = _f32(volume.protocol, readout)
    mask = np.asarray(volume.mask if mask is None else mask, bool)
    image = np.asarray(volume.image, np.float32)
    t1, m0 = out["t1"].astype(np.float32), out["m0"].astype(np.float32)
    b0 = np.float32(volume.protocol.field_strength)
    s = np.asarray(_voxel_signal(src, jnp.asarray(t1), jnp.asarray(m0), b0, pv))
    voxel = np.linalg.norm(np.asarray(volume.grid_affine())[:3, :3], axis=0)
    sigma = float(settings["bias_fwhm_mm"]) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel
    gain = consistency.local_gain(image, s, mask, sigma) * mask
    numeric = {k: np.float32(settings[k]) for k in ("t1_sd", "m0_sd", "noise")}
    numeric.update(t1_max=np.float32(cfg["t1_max"]), m0_max=np.float32(cfg["m0_max"]))
    t1r, m0r, delta = jax.device_get(_refine_volume(
        src, target, np.float32(ref), image, t1, m0, gain,
        b0, numeric, int(settings["iterations"]), pv))
    result = dict(out, t1_network=t1, m0_network=m0)
    result["t1"] = np.where(mask, t1r, t1)
    result["m0"] = np.where(mask, m0r, m0)
    result["resynth"] = np.where(mask, out["resynth"] + delta, 0.0)
    # a gated model's output holds the re-synthesis with its gate's weight (config.model.base)
    result["harmonized"] = np.where(mask, out["harmonized"] + out.get("gate", 1.0) * delta, 0.0)
    return result


def model_protocol(p: Protocol, readout: str = "sidecar") -> Protocol:
    """``p`` as the model's signal equations see it (``config.model.readout``): ``sidecar``
    keeps its readout train (the full MPRAGE/IR-SPGR form where the protocol has one,
    :func:`phyjax.physics.signal.mprage_readout`); ``static`` drops it (the static MPRAGE
    equation for every inversion-prepared scan: the model before issue 14, kept for the
    ablation).  Raises InputError for another value."""
    if readout not in READOUT:
        raise InputError(f"config.model.readout={readout!r}; expected one of {READOUT}.")
    check_protocol(p)
    return p.replace(tr_readout=0.0, n_readouts=0.0) if readout == "static" else p


def check_protocol(p: Protocol, where: str = "") -> None:
    """InputError for a protocol PhyCHarm cannot model: a B0 without a tissue table within
    :data:`phyjax.physics.tissues.FIELD_TOLERANCE_T` (the maps are converted between field
    strengths through the table, and the target's tissue levels come from it), or an MPRAGE
    readout train that cannot be imaged (:func:`phyjax.physics.signal.readout_problem`).
    Concrete protocols only (inside ``jit`` these values are not checked, so every protocol
    is checked here, where it enters)."""
    prefix = f"{where}: " if where else ""
    try:
        tissues.table_field(p.field_strength)
    except ValueError as e:
        raise InputError(f"{prefix}{e}") from None
    problem = signal.readout_problem(p)
    if problem:
        raise InputError(f"{prefix}{problem}.")


def _f32(p: Protocol, readout: str = "sidecar") -> Protocol:
    """:func:`model_protocol` with float32 numeric fields, so protocols read from sidecars
    (float64) and made in Python (float) hit one compiled training step."""
    return jax.tree.map(np.float32, model_protocol(p, readout))


def paired_sampler(data: networks.SlicePairs, train: TrainingSet, batch_size: int, seed: int):
    """``sample(i) -> (site, row indices, protocol index)`` for paired batch ``i``, every row of
    a batch from scans of one protocol, ``sample.protocols`` the list the index points into.

    A site's subjects may have been scanned with different protocols (a protocol changed during
    a study); PhyCHarm's step takes one source protocol per batch, so such a site's batches take
    turns over its protocol groups, each drawn from that group's scans only.  Where a site has
    one protocol (the usual case) the draw is :meth:`SlicePairs.sample`'s."""
    protocols, groups = [], {}          # groups[site] = [(protocol index, subject indices)]
    for site in data.sites:
        own = [train.volumes[subject][site].protocol for subject in data.subjects]
        kinds = simulated.distinct(own)
        of = [next(g for g, p in enumerate(kinds) if protocols_match(q, p)) for q in own]
        groups[site] = [(len(protocols) + g, [k for k, h in enumerate(of) if h == g])
                        for g in range(len(kinds))]
        protocols += kinds

    def sample(i: int):
        site = data.sites[i % len(data.sites)]
        if len(groups[site]) == 1:
            site, idx = data.sample(i, batch_size, seed)
            return site, idx, groups[site][0][0]
        g, members = groups[site][(i // len(data.sites)) % len(groups[site])]
        rows = data.rows[(site, data.view_of(i))]
        candidates = np.flatnonzero(np.isin(rows[:, 0], members))
        idx = np.random.default_rng([seed, i]).choice(
            candidates, size=batch_size, replace=len(candidates) < batch_size)
        return site, idx, g

    sample.protocols = protocols
    return sample


def interleaved(i: int, every: int) -> tuple[bool, int]:
    """Step ``i`` of a training that makes every ``every``-th batch (0: none) of a second
    kind: ``(True, k)`` when it is the ``k``-th of those, else ``(False, j)``, the ``j``-th of
    the main kind -- each kind numbered 0, 1, 2, ... without a gap."""
    if every > 0 and (i + 1) % every == 0:
        return True, i // every
    return False, i - ((i + 1) // every if every > 0 else 0)


def batch_kind(i: int, adapt_every: int, has_real: bool) -> tuple[str, int]:
    """``("real", k)`` when step ``i`` of simulated-pairs training is the ``k``-th batch of real
    scans (every ``adapt_every``-th step, when there are real scans to adapt to), else
    ``("simulated", j)``, the ``j``-th simulated batch.  Slicing planes cycle over ``k`` and
    ``j``, not over ``i``: over the step, a number of planes sharing a factor with
    ``adapt_every`` would give some planes no simulated batch at all."""
    real, k = interleaved(i, adapt_every if has_real else 0)
    return ("real" if real else "simulated"), k


def check_simulated_every(value, key: str = "config.train.simulated_every") -> int:
    """``value`` as an int >= 0 (0: off), else InputError naming ``key``."""
    n = check_number(value, key, low=0.0, note="every n-th traveling-subject batch a "
                     "physics-made pair; 0 = off")
    if n != int(n):
        raise InputError(f"{key}={value!r}; must be a whole number (0 = off).")
    return int(n)


def paired_batch_kind(i: int, simulated_every: int) -> tuple[str, int]:
    """``("simulated", k)`` when step ``i`` of traveling-subject training is its ``k``-th
    physics-made batch (every ``simulated_every``-th step; 0: never), else ``("paired", j)``,
    its ``j``-th traveling-subject batch -- so with 0 every step ``i`` is paired batch ``i``,
    as before the setting existed (:func:`interleaved`)."""
    physics_made, k = interleaved(i, simulated_every)
    return ("simulated" if physics_made else "paired"), k


def weights_by_site(weights: dict, train_cfg, sites) -> dict[str, dict]:
    """The loss weights of each source site's paired batches: ``weights``, with ``w_physics`` 0
    for the sites in ``config.train.physics_off_sites``.

    The source physics-consistency term compares one re-synthesized slice with the measured one
    and models no slice profile, so where a site's slices are thicker than the grid (a 2-D spin
    echo) it asks the predicted maps to carry the measured through-plane blur.  Raises
    InputError naming a site of ``physics_off_sites`` that is not in ``sites``."""
    off = {str(s) for s in train_cfg.get("physics_off_sites", ())}
    unknown = sorted(off - set(sites))
    if unknown:
        raise InputError(f"config.train.physics_off_sites: {unknown} are not training sites; "
                         f"expected some of {sorted(sites)}.")
    return {site: dict(weights, w_physics=np.float32(0.0)) if site in off else weights
            for site in sites}


def resolve_pairs(mode: str, train: TrainingSet) -> str:
    """``config.train.pairs``: ``paired`` (traveling subjects), ``simulated`` (physics-made pairs
    + self-supervised adaptation to the real scans; target-site scans unused) or ``auto``
    (paired when every training subject has a target-site scan).  InputError otherwise."""
    if mode not in PAIRS:
        raise InputError(f"config.train.pairs={mode!r}; expected one of {PAIRS}.")
    if mode != "auto":
        return mode
    paired = all(train.target_site in train.volumes[s] for s in train.subjects)
    return "paired" if paired else "simulated"


def _simulated_data(config, train: TrainingSet, target: Protocol, depth: int, progress: bool,
                    workdir: str, views=("axial",), with_real: bool = True):
    """Physics-made pairs (the training set's source protocols and the target protocol(s) on
    shipped anatomies) and the real source scans to adapt to.  ``with_real=False`` (physics-made
    batches of traveling-subject training): no real scans (None) and one target, ``target``."""
    t, d = config.train, config.data
    sites, scans = _source_scans(train, "PhyCHarm")
    tc = config.get("target")
    # a range of targets only for a model trained on physics-made pairs alone
    n_targets = int(tc.n_protocols) if with_real and tc is not None and tc.randomize else 1
    targets = simulated.sample_targets(target, n_targets, config.seed)
    own = [v.protocol for v in scans]
    sources = simulated.distinct(own + [target] + simulated.sample_sources(
        own, int(t.random_sources), config.seed))
    voxel, heads = _shipped_heads(config, train, int(t.n_anatomies))
    profiles = None
    if simulated.check_slice_profile(t.get("slice_profile", "drawn")) == "sidecar":
        profiles = simulated.slice_profiles(sources, scans, voxel)
        known = sum(p is not None for p in profiles)
        lacking = sorted({v.site for v in scans if v.slice_thickness_mm is None})
        if not any(profiles):
            raise InputError("config.train.slice_profile='sidecar': no training scan's sidecar "
                             f"gives SliceThickness (sites {lacking}); use 'drawn'.")
        if progress:
            print(f"[phycharm] simulated slice profiles from the sidecars for {known} of "
                  f"{len(sources)} source protocol(s)"
                  + (f"; drawn for sites without SliceThickness: {lacking}" if lacking else ""))
    sim = simulated.SimulatedPairs(sources, targets, heads, depth, d.min_mask_fraction,
                                   config.model.context, config.seed, progress, workdir, views,
                                   profiles)
    real = (simulated.SourceSlices(train, sites, depth, d.min_mask_fraction, config.model.context,
                                   directory=workdir, views=views)
            if with_real and t.adapt_every > 0 else None)
    return sim, real


def _source_scans(train: TrainingSet, method: str) -> tuple[list[str], list]:
    """``(sites, scans)``: the training set's source sites (every site but the target) and
    their scans, each with a complete protocol.  InputError naming ``method`` when there is no
    source site or a source scan lacks its protocol (the target site's scans are not used)."""
    sites = [s for s in train.sites if s != train.target_site]
    if not sites:
        raise InputError(f"{method}: no training scan outside the target site "
                         f"{train.target_site!r} to harmonize.")
    train.require_protocols(method, sites)
    return sites, [train.volumes[s][site] for s in train.subjects for site in sites
                   if site in train.volumes[s]]


def heads_settings(config) -> dict:
    """How the physics makes heads and site maps on them for ``config``: its ``seed`` and
    ``config.data``'s deformation, tissue jitter, T1 texture, atrophy and partial volume (a
    user's BIDS config may lack the last two), and ``config.model``'s head count ``n``
    (``calibrate_simulated``), ``knots`` (``calibrate_knots``), ``slice_step``
    (``calibrate_slice_step``), ``denoise`` and ``denoise_min_gain`` (``calibrate_denoise``,
    ``calibrate_denoise_min_gain``) and ``form`` (``calibrate_map``).  Saved with a trained
    PhyCHarm (``cfg["physics_heads"]``) so that harmonize mode makes a new protocol's site map
    as training made the sites' own (:func:`physics_site_maps`)."""
    d, m = config.data, config.model
    return {"seed": int(config.seed), "deform_mm": float(d.deform_mm),
            "tissue_jitter": float(d.tissue_jitter), "t1_texture": float(d.t1_texture),
            "atrophy": float(d.get("atrophy", 0.0)),
            "partial_volume": str(d.get("partial_volume", "signal")),
            "n": m.get("calibrate_simulated", 8),   # checked where used (maps only)
            "knots": int(m.get("calibrate_knots", 256)),
            "slice_step": int(m.get("calibrate_slice_step", 1)),
            "denoise": str(m.get("calibrate_denoise", "") or ""),
            "denoise_min_gain": float(m.get("calibrate_denoise_min_gain", 0.0)),
            "form": str(m.get("calibrate_map", "quantile"))}


def template_voxel(grid_mm) -> int:
    """The shipped template's resolution (1 or 2 mm; nilearn's MNI152) nearest a grid of voxel
    sizes ``grid_mm`` (mm): 1 where its finest axis is under 1.5 mm."""
    return 1 if min(float(x) for x in grid_mm) < 1.5 else 2


def physics_heads(settings: dict, n: int, voxel: int, first: int = 0):
    """``n`` shipped anatomies from index ``first`` (:func:`phyjax.data.simulated.anatomies`)
    at ``voxel`` mm, made as ``settings`` (:func:`heads_settings`) says."""
    s = settings
    return simulated.anatomies(n, s["seed"], voxel, s["deform_mm"], s["tissue_jitter"],
                               s["t1_texture"], s["atrophy"], s["partial_volume"], first=first)


def _shipped_heads(config, train: TrainingSet, n: int, first: int = 0):
    """``(voxel, heads)``: ``n`` shipped anatomies from index ``first`` as the default dataset
    makes them (:func:`heads_settings`), at the template resolution nearest the training grid
    (:func:`template_voxel`)."""
    voxel = template_voxel(train.grid_mm())
    return voxel, physics_heads(heads_settings(config), n, voxel, first)


@register("phycharm", "phycharm_unpaired", harmonizer=PhyCHarmHarmonizer)
def fit(config, train: TrainingSet, name: str = "phycharm", *, workdir: str,
        progress: bool = True, has_maps: bool = True, **_) -> PhyCHarmHarmonizer:
    """Train PhyCHarm on ``train`` with ``config.model`` / ``config.train`` (checkpoints in
    ``workdir``), on traveling-subject pairs or physics-made ones (``config.train.pairs``,
    :func:`resolve_pairs`), for the target protocol or a range of them (``config.target``).
    Registered twice: ``phycharm`` (pairs as configured) and ``phycharm_unpaired`` (always
    physics-made pairs: never a target-site image), so a benchmark can show both.

    ``has_maps``: ground-truth T1/M0 exist for the real scans (the default dataset); otherwise
    ``w_map`` is 0 on real pairs (simulated pairs always have their maps).
    ``config.model.ensemble`` > 1: that many networks, seeds ``config.seed + k``, averaged at
    inference (:func:`phyjax.methods.networks.fit_ensemble`).
    ``config.model.calibrate="sites"`` (the default): after training, the per-protocol output
    maps of :func:`fit_site_maps` are learned and saved with the model: on
    ``config.model.calibrate_simulated`` heads made by the physics (:func:`calibration_heads`;
    ``config.model.calibrate_with="physics"``, the default, or ``"auto"`` without traveling
    subjects) or on the training pairs (``"traveling"``, ``"auto"`` with them);
    ``config.model.calibrate_heads`` N > 0: on N traveling subjects kept out of the network's
    training (:func:`phyjax.methods.calibration.fit_calibrated`; the heads' names in
    ``cfg["calibration_subjects"]``). ``fitted_on`` is every subject of ``train`` either way.
    """
    context = dict(name=name, workdir=workdir, progress=progress, has_maps=has_maps)
    paired = resolve_pairs(pairs_mode(config.train, name), require_training_set(train))
    check_calibrate_effects(config.model.get("calibrate_effects", "drawn"))  # before training
    parse_denoise(config.model.get("calibrate_denoise", ""))
    check_min_gain(config.model.get("calibrate_denoise_min_gain", 0.0))
    check_calibrate_map(config.model.get("calibrate_map", "quantile"))
    harm = fit_calibrated(
        lambda subset: (networks.fit_ensemble(_fit_network, config, "model", subset, **context)
                        or _fit_network(config, subset, **context)),
        train, config.model, config.seed, "model", paired == "paired", progress, name,
        # a model trained without target-site images (phycharm_unpaired, pairs=simulated) does
        # not read the traveling subjects' target scans for the effects' fit either
        physics_heads=functools.partial(calibration_heads, config, progress=progress,
                                        target_scans=paired == "paired"))
    harm.cfg["physics_heads"] = heads_settings(config)    # harmonize mode's new-protocol maps
    return harm


def check_calibrate_effects(value) -> str:
    """``value`` if one of :data:`CALIBRATE_EFFECTS`, else InputError naming
    ``config.model.calibrate_effects``."""
    if value not in CALIBRATE_EFFECTS:
        raise InputError(f"config.model.calibrate_effects={value!r}; expected one of "
                         f"{CALIBRATE_EFFECTS}.")
    return value


def calibration_heads(config, train: TrainingSet, n: int, progress: bool = False,
                      site_effects: dict | None = None, target_scans: bool = True
                      ) -> CalibrationHeads:
    """``n`` heads made by the physics to learn PhyCHarm's site maps on
    (``config.model.calibrate_simulated``): anatomies as the default dataset makes them
    (``config.data``'s deformation, jitter, texture, atrophy and partial volume; indices from
    :data:`phyjax.data.simulated.CALIBRATION_HEADS_FIRST`, so never the physics-made training
    heads of ``train.simulated_every`` or ``pairs=simulated``), each imaged with every distinct
    source protocol of ``train`` (under the name of the first site with it) and with the
    target protocol (:func:`phyjax.data.simulated.calibration_volumes`).  A source whose scans'
    sidecars give ``SliceThickness`` is simulated with that slice profile
    (:func:`phyjax.data.simulated.slice_profiles`); the other scanner effects are drawn
    (``config.model.calibrate_effects="drawn"``) or each site's own, read off its training
    scans' intensity distribution (``"fitted"``: :func:`phyjax.data.simulated.fit_site_effects`
    on the first two heads, against the same subjects' target-site scans where every one of
    them has one and ``target_scans`` allows it -- False for a model trained without
    target-site images; printed; ``"auto"``: fitted only against such scans, else drawn) --
    unless ``site_effects`` ``{site: ScannerEffects}`` gives them (a diagnosis:
    ``benchmarks/calibration_maps.py --physics``).
    Raises InputError when a training source scan lacks its protocol, or for an unknown
    ``calibrate_effects``."""
    train = require_training_set(train)
    _, scans = _source_scans(train, "PhyCHarm (calibrate_simulated)")
    sources = simulated.distinct(v.protocol for v in scans)
    names = [next(v.site for v in scans if protocols_match(v.protocol, p)) for p in sources]
    voxel, heads = _shipped_heads(config, train, n, simulated.CALIBRATION_HEADS_FIRST)
    affine = synthetic.load_anatomy(voxel)[2]
    profiles = simulated.slice_profiles(sources, scans, voxel)
    how = check_calibrate_effects(config.model.get("calibrate_effects", "drawn"))
    if site_effects is None and how != "drawn":
        site_effects = {}
        for p, site, profile in zip(sources, names, profiles):
            own = [v for v in scans if protocols_match(v.protocol, p)]
            # the same subjects at the target site, where they travel: the fit then compares
            # source-minus-target quantiles, which the heads' anatomy mostly cancels out of
            refs = [train.volumes[v.subject][train.target_site] for v in own
                    if target_scans and train.target_site in train.volumes[v.subject]]
            if len(refs) < len(own) and how == "auto":
                continue                    # no reference: this site's effects are drawn
            fx, distance = simulated.fit_site_effects(
                p, own, heads[:2], profile, config.seed,
                reference=(train.target_protocol(), refs) if len(refs) == len(own) else None)
            site_effects[site] = fx
            if progress:
                print(f"[phycharm] {site}: scanner effects read off its {len(own)} training "
                      f"scan(s): B1+ x{fx.b1_scale:.2f} (drop {fx.b1_curvature:.2f}), bias "
                      f"{fx.bias_amplitude:.0%}, noise {fx.noise_fraction:.0%} (quantile "
                      f"distance {distance:.4f})", flush=True)
    volumes = simulated.calibration_volumes(
        sources, names, train.target_protocol(), train.target_site, heads, affine, config.seed,
        profiles, progress, effects=[(site_effects or {}).get(site) for site in names])
    # a site's in-plane filter (calibrate_denoise) is chosen only on heads with its own noise
    return CalibrationHeads(volumes, train.target_site,
                            own_effects=frozenset(site_effects or ()))


#: ``config.harmonize.new_protocol_map``: what a PhyCHarm with site maps does with a scan whose
#: protocol none of them was learned for (a scanner its training never saw): ``physics`` --
#: the physics makes that protocol's map at harmonize time, on heads imaged with it
#: (:func:`physics_site_maps`, docs/phycharm_ablation.md item 72) -- or ``none``: the
#: network's output, uncalibrated, with a warning (the behaviour before)
NEW_PROTOCOL_MAPS = ("physics", "none")
#: ``config.harmonize.new_protocol_effects``: the scanner effects of those heads' scans --
#: ``drawn`` from :data:`phyjax.data.simulated.EFFECT_RANGES` (as for a model trained without
#: target-site images, item 70), or ``fitted`` to the scans being harmonized
#: (:func:`phyjax.data.simulated.fit_site_effects` without a reference: no scan of those
#: subjects with the target protocol exists)
NEW_PROTOCOL_EFFECTS = ("drawn", "fitted")
#: what a harmonize-time map's entry records in place of training sites
MADE_AT_HARMONIZE = "made by the physics at harmonize time"


def check_new_protocol(how, effects) -> tuple[str, str]:
    """``(how, effects)`` if they are one of :data:`NEW_PROTOCOL_MAPS` and
    :data:`NEW_PROTOCOL_EFFECTS`, else InputError naming the ``config.harmonize`` key."""
    if how not in NEW_PROTOCOL_MAPS:
        raise InputError(f"config.harmonize.new_protocol_map={how!r}; expected one of "
                         f"{NEW_PROTOCOL_MAPS}.")
    if effects not in NEW_PROTOCOL_EFFECTS:
        raise InputError(f"config.harmonize.new_protocol_effects={effects!r}; expected one of "
                         f"{NEW_PROTOCOL_EFFECTS}.")
    return how, effects


def unmapped_protocols(harmonizer, protocols, target: Protocol | None = None) -> list[Protocol]:
    """The distinct ones of ``protocols`` (:func:`phyjax.data.split.protocols_match`) that
    ``harmonizer``'s site maps would act on for ``target`` (:meth:`PhyCHarmHarmonizer.
    maps_apply`; None: the fitted one) but that no map was learned for: [] unless it
    calibrates with ``sites``."""
    cfg = getattr(harmonizer, "cfg", {})
    if (cfg.get("calibrate") != "sites" or not hasattr(harmonizer, "maps_apply")
            or not harmonizer.maps_apply(target)):
        return []
    return [p for p in simulated.distinct(protocols)
            if site_map_for(cfg.get("site_maps") or [], p) is None]


def physics_site_maps(harmonizer, volumes, target: Protocol | None = None,
                      effects: str = "drawn", heads: dict | None = None,
                      progress: bool = False, cache: str | None = None) -> list[dict]:
    """At harmonize time: a site map for every protocol of ``volumes`` (the scans about to be
    harmonized, :class:`~phyjax.data.volumes.Volume`) that ``harmonizer`` (a PhyCHarm with
    ``calibrate="sites"``) has none for (:func:`unmapped_protocols`), made by the physics as
    training made its own (items 69-71), as ``heads`` (default the saved
    ``cfg["physics_heads"]``, :func:`heads_settings`) says: its ``n`` shipped anatomies
    (indices from :data:`phyjax.data.simulated.CALIBRATION_HEADS_FIRST`, never a training head,
    at the template resolution nearest the scans', :func:`template_voxel`) imaged with that
    protocol
    -- the slice profile of the scans' ``SliceThickness`` (:func:`phyjax.data.simulated.
    slice_profiles`), scanner effects ``effects`` (:data:`NEW_PROTOCOL_EFFECTS`; ``fitted``:
    read off those of ``volumes`` with the protocol, :func:`phyjax.data.simulated.
    fit_site_effects`) -- and with the fitted target protocol, clean
    (:func:`phyjax.data.simulated.calibration_volumes`); the map is quantile matching of the
    network's outputs on the first onto the second (:func:`phyjax.methods.calibration.
    fit_site_maps`, with its ``knots``, and its ``slice_step`` at the slice spacing in mm it
    had in training: heads finer than training's take proportionally more steps).

    The maps are appended to ``harmonizer.cfg["site_maps"]`` in memory (the saved harmonizer
    is not changed), so every later scan with the protocol goes through them, and returned;
    each entry's ``sites`` is empty and ``made`` records how it was made (heads, voxel,
    effects, the scans read).  ``cache``: a folder where each map made is kept and looked up
    first (:mod:`phyjax.methods.map_cache`: used only when the network, its inference
    settings, the target, the protocol and every setting above are those it was made with;
    ``made["kept"]`` then names its file).  Raises InputError for an unknown ``effects``."""
    check_new_protocol("physics", effects)
    volumes = list(volumes)
    missing = unmapped_protocols(harmonizer, [v.protocol for v in volumes], target)
    if not missing:
        return []
    cfg = harmonizer.cfg
    settings = heads or cfg.get("physics_heads")
    if settings is None:
        raise InputError("this PhyCHarm was saved before harmonize-time site maps existed (no "
                         "physics_heads in its harmonizer.json, and no run config.json beside "
                         "it to read them from): retrain it, or set "
                         "config.harmonize.new_protocol_map=none.")
    n = check_calibrate_simulated(settings["n"], "config.model.calibrate_simulated")
    made = []
    # every slice_step-th slice at the spacing in mm training's maps had (its heads at the
    # template resolution nearest its grid): 1 mm heads of a 2 mm model take every
    # 2 x slice_step-th -- as many slices, each with 4 x the voxels, at half the cost
    trained = template_voxel(harmonizer.grid_mm) if harmonizer.grid_mm else None
    for p in missing:
        own = [v for v in volumes if protocols_match(v.protocol, p)]
        voxel = template_voxel(min(geometry.zooms(v.grid_affine())) for v in own)
        step = max(1, round(settings["slice_step"] * (trained or voxel) / voxel))
        profile = simulated.slice_profiles([p], own, voxel)[0]
        shipped = None if effects == "drawn" else physics_heads(
            settings, n, voxel, simulated.CALIBRATION_HEADS_FIRST)
        fx = fitted = None
        if effects == "fitted":
            fx, distance = simulated.fit_site_effects(p, own, shipped[:2], profile,
                                                      settings["seed"])
            fitted = {"b1_scale": fx.b1_scale, "b1_curvature": fx.b1_curvature,
                      "bias_amplitude": fx.bias_amplitude,
                      "noise_fraction": fx.noise_fraction, "quantile_distance": distance}
            if progress:
                print(f"[phycharm] scanner effects read off {len(own)} scan(s) of {p}: B1+ "
                      f"x{fx.b1_scale:.2f} (drop {fx.b1_curvature:.2f}), bias "
                      f"{fx.bias_amplitude:.0%}, noise {fx.noise_fraction:.0%}", flush=True)
        how = {"by": MADE_AT_HARMONIZE, "heads": n, "voxel_mm": voxel, "slice_step": step,
               "effects": effects, "fitted_effects": fitted,
               "slice_profile": profile and [float(profile[0]), int(profile[1])]}
        key = map_cache.map_key(harmonizer, p, dict(how, settings=settings))
        kept, path = map_cache.load(cache, key) if cache else (None, None)
        if kept is not None:
            entry = {"protocol": protocol_to_json(p), "subjects": n, **kept}
            if progress:
                print(f"[harmonize] no site map was learned for {p}: the one the physics made "
                      f"for it before is read back ({path})", flush=True)
        else:
            if progress:
                print(f"[harmonize] no site map was learned for {p}: the physics makes one "
                      f"({effects} scanner effects)", flush=True)
            if shipped is None:
                shipped = physics_heads(settings, n, voxel, simulated.CALIBRATION_HEADS_FIRST)
            site = "new-protocol"
            while site == harmonizer.target_site:
                site += "_"
            scans = simulated.calibration_volumes(
                [p], [site], harmonizer.target_protocol, harmonizer.target_site, shipped,
                synthetic.load_anatomy(voxel)[2], settings["seed"], [profile], progress,
                effects=[fx])
            # a filter only where the heads have the scans' own noise (fitted effects): drawn
            # noise is not the scan's, and on the real Philips T1w a filter chosen on it cost
            # detail and Dice vs FAST (docs/phycharm_ablation.md, item 76)
            own_fx = frozenset([site]) if effects == "fitted" else frozenset()
            [entry] = fit_site_maps(harmonizer,
                                    CalibrationHeads(scans, harmonizer.target_site, own_fx),
                                    settings["knots"], progress, step,
                                    settings.get("denoise", ""),
                                    settings.get("denoise_min_gain", 0.0),
                                    settings.get("form", "quantile"))
            if cache:
                path = map_cache.store(cache, key, entry)
        entry.update(sites=[], made=dict(how, scans=sorted({str(v.path) for v in own}),
                                         kept=path))     # None: not kept
        cfg["site_maps"] = list(cfg.get("site_maps") or []) + [entry]
        made.append(entry)
    return made


def pairs_mode(train_cfg, name: str) -> str:
    """``config.train.pairs`` as method ``name`` reads it: ``phycharm_unpaired`` always trains
    on physics-made pairs (``simulated``)."""
    return "simulated" if name == "phycharm_unpaired" else train_cfg.get("pairs", "auto")


def _fit_network(config, train: TrainingSet, name: str = "phycharm", *, workdir: str,
                 progress: bool = True, has_maps: bool = True) -> PhyCHarmHarmonizer:
    """One PhyCHarm network (or ensemble member) as :func:`fit` describes, calibration maps
    not yet learned."""
    train = require_training_set(train)
    for scans in train.volumes.values():      # a B0 or readout train it cannot model, by file
        for v in scans.values():
            if v.protocol is not None:
                check_protocol(v.protocol, v.path)
    model_cfg = {k: config.model[k] for k in MODEL_KEYS}
    model_cfg["features"] = tuple(model_cfg["features"])
    model_cfg["refine"] = refine_settings(config.model.get("refine"))
    model_cfg["calibrate"] = check_calibrate(config.model.get("calibrate", "none"))
    model_cfg["tta"] = networks.check_tta(config.model.get("tta", "none"))
    views = model_cfg["views"] = check_views(config.model.get("views", ("axial",)))
    ro = model_cfg["readout"]
    t = config.train
    depth = len(model_cfg["features"])
    target = train.target_protocol()
    model_protocol(target, ro)   # an unknown readout setting fails here, before any work
    tc = config.get("target")
    pairs = model_cfg["pairs"] = resolve_pairs(pairs_mode(t, name), train)
    # a range of targets only where training saw one (simulated pairs); paired: its target
    many_targets = bool(tc and tc.randomize) and pairs == "simulated"
    model_cfg["target_range"] = simulated.target_range(target, many_targets)
    model_cfg.update(resolve_base_settings(model_cfg, many_targets))
    resolved = resolve_loss_weights(t, pairs, model_cfg["calibrate"])
    full = {k: np.float32(v) for k, v in resolved.items()}
    ref = reference_level(model_protocol(target, ro))
    every = check_simulated_every(t.get("simulated_every", 0))
    simulated.check_slice_profile(t.get("slice_profile", "drawn"))
    if pairs == "paired":
        data = networks.SlicePairs(train, depth, config.data.min_mask_fraction,
                                   model_cfg["context"], method="PhyCHarm", directory=workdir,
                                   views=views)
        padded = data.padded
        weights = dict(full, w_map=full["w_map"] if has_maps else np.float32(0.0))
        site_weights = weights_by_site(weights, t, data.sites)

        sample = paired_sampler(data, train, t.batch_size, config.seed)
        # converted (and checked, model_protocol) once, not at every step
        sources32 = [_f32(q, ro) for q in sample.protocols]
        target32 = _f32(target, ro)
        if every:   # physics-made pairs on heads the traveling subjects do not have
            sim, _ = _simulated_data(config, train, target, depth, progress, workdir, views,
                                     with_real=False)
            sim32 = [_f32(q, ro) for q in sim.sources]
            sim_refs = [np.float32(reference_level(model_protocol(q, ro))) for q in sim.targets]
            sim_targets32 = [_f32(q, ro) for q in sim.targets]
            sim_weights = full    # simulated heads have their maps

        def view_of(i):
            kind, k = paired_batch_kind(i, every)
            return sim.view_of(k) if kind == "simulated" else data.view_of(k)

        def batch_fn(i):
            kind, k = paired_batch_kind(i, every)
            if kind == "simulated":
                arrays, p, q = sim.batch(k, t.batch_size, config.seed, sim.view_of(k))
                return arrays, sim32[p], sim_targets32[q], sim_refs[q], sim_weights
            site, idx, g = sample(k)
            return (data.batch(site, idx, data.view_of(k)),
                    sources32[g], target32, np.float32(ref), site_weights[site])
    else:
        for key, value in (("physics_off_sites", tuple(t.get("physics_off_sites", ()))),
                           ("simulated_every", every)):
            if value:
                raise InputError(f"config.train.{key} applies to traveling-subject pairs only; "
                                 f"this run trains on physics-made pairs (pairs={pairs!r}).")
        sim, real = _simulated_data(config, train, target, depth, progress, workdir, views)
        padded = sim.padded
        refs = [np.float32(reference_level(model_protocol(q, ro))) for q in sim.targets]
        # converted (and checked, model_protocol) once, not at every step
        sources32, targets32 = ([_f32(q, ro) for q in qs] for qs in (sim.sources, sim.targets))
        real32 = [] if real is None else [_f32(q, ro) for q in real.protocols]
        target32 = _f32(target, ro)
        adapt = dict(full, **{k: np.float32(0.0) for k in PAIRED_TERMS})

        def view_of(i):
            kind, k = batch_kind(i, t.adapt_every, real is not None)
            return real.view_of(k) if kind == "real" else sim.view_of(k)

        def batch_fn(i):
            kind, k = batch_kind(i, t.adapt_every, real is not None)
            if kind == "real":
                arrays, g = real.batch(k, t.batch_size, config.seed)
                return arrays, real32[g], target32, np.float32(ref), adapt
            arrays, p, q = sim.batch(i, t.batch_size, config.seed, sim.view_of(k))
            return arrays, sources32[p], targets32[q], refs[q], full

    batch_fn = networks.mirrored(batch_fn, config.seed, t.get("mirror", 0.0), view_of)
    model, tx = make_model(model_cfg), networks.make_optimizer(t)
    state = TrainState.create(init_params(model, padded, model_cfg["context"], config.seed), tx)
    step = make_train_step(make_loss(model, active_terms(resolved)), tx)
    state = fit_loop(state, step, batch_fn, t.steps, workdir, checkpoint_every=t.checkpoint_every,
                     log_every=t.log_every, progress=progress,
                     desc=f"PhyCHarm ({pairs}{' + simulated' if every else ''})")
    return PhyCHarmHarmonizer(networks.trained_params(state), model_cfg, config.eval.batch_size,
                              **fitted_fields(train, name))
