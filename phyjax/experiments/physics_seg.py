"""Physics-aware segmentation (Borges et al., SASHIMI 2019): train, evaluate, bridge, report.

``run(config, workdir)`` with ``config.mode``:

* ``train_eval``: simulate training images of ``data.n_train`` anatomies over the configured
  MPRAGE/SPGR ranges with scanner effects, labelled by the R1 gold standard
  (:mod:`phyjax.segment.gold`); train the U-Net with the physics branch (``physics_unet/``) and
  the same U-Net without it (``no_branch_unet/``), each resumable; image each held-out anatomy
  with every evaluation protocol (one scanner-effect draw per subject, fixed across protocols,
  so that only the protocol changes) and score the two U-Nets and the fixed HMRF segmenter
  (Dice vs the gold standard, GM/WM volume CoV across protocols); bridge two MPRAGE sites of
  unknown TI (Sec. 3.5 of the paper); write ``report.md``, ``evaluation.csv`` (one row per
  subject, protocol and method), ``cov_per_subject.csv``, ``summary.csv``, ``bridging.csv`` and
  ``volume_vs_ti.png``.
* ``segment``: tissue probability maps and volumes of a user's T1w (or every T1w of a BIDS
  folder) as BIDS derivatives (:mod:`phyjax.segment.infer`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from phyjax.data import simulated
from phyjax.data.atomic import atomic_open
from phyjax.data.nifti import InputError
from phyjax.evaluate import report as tables
from phyjax.experiments.common import prepare_workdir, tissue_segmenter
from phyjax.physics import scanner
from phyjax.segment import evaluate, infer, report, simulate
from phyjax.segment.gold import CLASSES, gold_standard
from phyjax.segment.model import CONDITIONINGS, PHYSICS_SIZE, physics_vector
from phyjax.segment.train import (
    LOSSES,
    Segmenter,
    make_model,
    parameter_statistics,
    train,
)

MODELS = {"physics": ("physics_unet", True), "no_branch": ("no_branch_unet", False)}
#: Evaluation methods (``config.eval.methods``): the two U-Nets, ``physics_b1map`` (the physics
#: U-Net told each subject's B1+ map; needs ``model.b1_input``, and shares the physics U-Net's
#: training) and the fixed HMRF segmenter.
METHOD_NAMES = ("physics", "physics_b1map", "no_branch", "hmrf")


def _range_value(v):
    """A config range value: a pair as a tuple of floats, a number as a float.  A number given
    on the command line for a pair field (``--config.data.mprage.tr=2.4``) arrives as a 1-tuple
    and is a fixed value."""
    if isinstance(v, (tuple, list)):
        return float(v[0]) if len(v) == 1 else tuple(float(x) for x in v)
    return float(v)


def ranges_of(config) -> dict:
    """``{family: {field: value or (low, high)}}`` of ``config.data`` (s, degrees, T)."""
    out = {}
    for family in config.data.families:
        if family not in ("mprage", "spgr"):
            raise InputError(f"config.data.families: {family!r} has no range section "
                             "(mprage, spgr).")
        out[family] = {k: _range_value(v) for k, v in config.data[family].items()}
    return out


def training_ranges(config) -> dict:
    """The ranges the training images are drawn from: :func:`ranges_of` widened by
    ``config.data.range_margin`` (:func:`phyjax.segment.simulate.widen`).  The evaluation and
    segment mode's range check keep :func:`ranges_of`."""
    return simulate.widen(ranges_of(config), float(config.data.range_margin))


def evaluation_counts(config) -> dict[str, int]:
    """``{family: number of evaluation protocols}`` (``config.eval.n_mprage``, ``n_spgr``)."""
    return {"mprage": int(config.eval.n_mprage), "spgr": int(config.eval.n_spgr)}


def mprage_fixed(config) -> dict:
    """The MPRAGE fields the TI sweep and bridging hold fixed (``config.eval.mprage_fixed``,
    config units; used for the fields training varies, see
    :func:`phyjax.segment.simulate.evaluation_protocols`)."""
    return {k: float(v) for k, v in config.eval.get("mprage_fixed", {}).items()}


def contrast_of(config) -> str:
    """The sign convention of the branch's contrast features: ``config.model.contrast``, with
    ``image`` resolved to the training images' (``data.reconstruction``: ``magnitude`` gives
    absolute signals, as a magnitude image shows them)."""
    c = config.model.contrast
    return config.data.reconstruction if c == "image" else c


def _effect_ranges(section) -> dict:
    return {k: tuple(float(x) for x in v) for k, v in section.items()}


def _gold_kwargs(config) -> dict:
    g = config.gold
    return {"means": tuple(g.means), "sds": tuple(g.sds), "priors": tuple(g.priors)}


def _heads(config):
    d = config.data
    return simulated.anatomies(d.n_train + d.n_test, config.seed, d.voxel_size, d.deform_mm,
                               d.tissue_jitter, d.t1_texture)


def train_models(config, workdir: str, heads) -> dict[str, Segmenter]:
    """Train (or resume) both U-Nets on the training anatomies; save each under
    ``<workdir>/<name>/model``."""
    d, m = config.data, config.model
    wide = training_ranges(config)
    bank = simulate.SliceBank(heads, tuple(d.families), wide, d.n_per_family,
                              _effect_ranges(d.effects), len(m.features), d.min_mask_fraction,
                              m.context, config.seed, _gold_kwargs(config),
                              progress=config.progress, reconstruction=d.reconstruction,
                              value_jitter=float(d.value_jitter))
    out = {}
    norm = m.normalize_params
    contrast = contrast_of(config)
    mean, std = ([], []) if norm == "none" else parameter_statistics(
        bank.params, norm == "family", magnitude=contrast == "magnitude")
    keys = list(config.eval.methods)
    if "physics_b1map" in keys and "physics" not in keys:
        keys.append("physics")
    for key in keys:
        if key not in MODELS:
            continue
        name, physics = MODELS[key]
        settings = {"features": list(m.features), "physics": physics,
                    "branch_width": int(m.branch_width), "conditioning": m.conditioning,
                    "condition_encoder": bool(m.condition_encoder),
                    "param_mean": mean, "param_std": std, "contrast": contrast,
                    "context": int(m.context),
                    "voxel_mm": float(d.voxel_size), "ranges": ranges_of(config),
                    "training_ranges": wide,
                    "families": list(d.families), "gold": _gold_kwargs(config),
                    "reconstruction": d.reconstruction, "physics_size": PHYSICS_SIZE,
                    "b1_input": bool(physics and m.b1_input), "patch": int(m.patch),
                    "ndim": int(m.ndim),
                    "branch_dropout": float(config.train.branch_dropout) if physics else 0.0}
        variables = train(make_model(settings), bank, config.train,
                          os.path.join(workdir, name), config.seed, config.progress,
                          desc=f"train {name}", patch=int(m.patch))
        out[key] = Segmenter(settings, variables)
        out[key].save(os.path.join(workdir, name, "model"))
    return out


def _network_method(seg: Segmenter, told_b1: bool = False):
    """``(img, mask, protocol, b1) -> probabilities`` of a U-Net; ``b1`` (the subject's B1+
    field) is passed on only when ``told_b1`` (else the branch is told it is unknown)."""
    def segment(img, mask, p, b1):
        return seg.predict(img, mask, physics_vector(p) if seg.physics else None,
                           b1=b1 if told_b1 else None)
    return segment


def _methods(config, segmenters):
    """``{name: (img, mask, protocol, b1) -> (X, Y, Z, 3) probabilities}`` of
    ``config.eval.methods``."""
    hmrf = tissue_segmenter(config.segmentation)
    methods = {}
    for key in config.eval.methods:
        if key == "hmrf":
            methods[key] = lambda img, mask, p, b1: evaluate.one_hot(hmrf(img, mask))
        elif key == "physics_b1map" and "physics" in segmenters:
            methods[key] = _network_method(segmenters["physics"], told_b1=True)
        elif key in segmenters:
            methods[key] = _network_method(segmenters[key])
        else:
            raise InputError(f"config.eval.methods: unknown method {key!r} "
                             f"{METHOD_NAMES}.")
    return methods


#: ``config.eval.b1_plus``: each held-out subject's drawn B1+ (``subject``) or none
#: (``nominal``: B1+ = 1 everywhere, so every tissue sees the flip angle the protocol names).
B1_PLUS = ("subject", "nominal")


def _subject_effects(config, i: int):
    """Held-out subject ``i``'s scanner effects and its acquisition key.
    ``config.eval.noise_fraction >= 0`` replaces its noise level; ``config.eval.b1_plus =
    "nominal"`` its B1+ by 1 (the other effects, drawn from the same key, are unchanged)."""
    key = jax.random.fold_in(jax.random.key(config.eval.effects_seed), i)
    k_fx, k_acq = jax.random.split(key)
    effects = scanner.sample_scanner_effects(k_fx, **_effect_ranges(config.data.effects))
    if config.eval.noise_fraction >= 0:
        effects = dataclasses.replace(effects, noise_fraction=float(config.eval.noise_fraction))
    if config.eval.b1_plus == "nominal":
        effects = dataclasses.replace(effects, b1_scale=1.0, b1_curvature=0.0)
    return effects, k_acq


def evaluate_across_protocols(config, test_heads, methods) -> list[dict]:
    """One row per held-out subject, evaluation protocol, noise draw and method (Dice,
    volumes).  Draw ``d`` of a protocol uses the subject's key folded with ``d`` (draw 0: the
    key itself), so only the noise (and bias field) differ between draws."""
    ranges = ranges_of(config)
    counts = evaluation_counts(config)
    protocols = {f: simulate.evaluation_protocols(f, ranges, counts[f], config.seed,
                                                  mprage_fixed(config))
                 for f in config.data.families}
    voxel = float(config.data.voxel_size) ** 3
    rows = []
    draws = int(config.eval.noise_draws)
    total = len(test_heads) * sum(len(p) for p in protocols.values()) * draws
    bar = tqdm(total=total, desc="evaluating", disable=not config.progress)
    for i, head in enumerate(test_heads):
        subject = f"test{i + 1:02d}"
        mask = head.mask
        gold = gold_standard(head.maps(3.0)["t1"], mask, **_gold_kwargs(config))
        gold_vol = evaluate.volumes_ml(gold, voxel)
        effects, k_acq = _subject_effects(config, i)
        b1 = np.asarray(scanner.b1_field(mask.shape, effects.b1_scale, effects.b1_curvature),
                        np.float32)
        for family, ps in protocols.items():
            for (j, p), d in itertools.product(enumerate(ps), range(draws)):
                key = k_acq if d == 0 else jax.random.fold_in(k_acq, d)
                img = simulate.image(head.maps(float(p.field_strength)), mask, p, effects, key,
                                     config.data.reconstruction)
                for method, fn in methods.items():
                    r = {"subject": subject, "family": family, "protocol": j, "draw": d,
                         "tr": float(p.tr), "te": float(p.te), "ti": float(p.ti),
                         "flip_angle_deg": float(np.rad2deg(float(p.flip_angle))),
                         "tr_readout": float(p.tr_readout), "n_readouts": float(p.n_readouts),
                         "method": method}
                    r.update(evaluate.score(fn(img, mask, p, b1), gold, mask, voxel))
                    r.update({f"gold_vol_{t}": gold_vol[t] for t in CLASSES})
                    rows.append(r)
                bar.update()
    bar.close()
    return rows


def bridging(config, train_heads, test_heads, segmenters) -> list[dict]:
    """Borges et al. (2019) Sec. 3.5 on two simulated MPRAGE sites A and B whose TIs the methods
    are not told: raw volume difference (U-Net without the branch), a per-tissue linear
    correction of site B's volumes fitted on training subjects, and the physics U-Net with the
    TI pair chosen on the training subjects (grid over the trained range) -- plus, for
    reference, the physics U-Net told the true TIs.  Rows: mean ± sd over held-out subjects of
    ``100 |V_A - V_B| / mean`` for GM and WM."""
    b, ranges = config.bridging, ranges_of(config)
    # the evaluation's fixed MPRAGE (readout train, TR) with the TI replaced
    ref = simulate.evaluation_protocols("mprage", ranges, 1, config.seed, mprage_fixed(config))[0]
    sites = {s: ref.replace(ti=float(ti)) for s, ti in (("a", b.ti_a), ("b", b.ti_b))}
    effects = {"a": scanner.ScannerEffects(**dict(b.effects_a)),
               "b": scanner.ScannerEffects(**dict(b.effects_b))}
    grid = [ref.replace(ti=float(t)) for t in np.linspace(*ranges["mprage"]["ti"], b.n_grid)]
    phys, plain = segmenters["physics"], segmenters["no_branch"]
    voxel = float(config.data.voxel_size) ** 3
    tissues = ("gm", "wm")

    def vols(seg, img, mask, p):
        v = evaluate.volumes_ml(seg.predict(img, mask, physics_vector(p) if p else None), voxel)
        return [v[t] for t in tissues]

    def analyse(heads, offset):
        out = {"raw": {}, "grid": {}, "true": {}}
        for i, head in enumerate(tqdm(heads, desc="bridging", disable=not config.progress)):
            mask = head.mask
            for s in ("a", "b"):
                key = jax.random.fold_in(jax.random.key(config.seed + 77), 2 * (offset + i)
                                         + (s == "b"))
                img = simulate.image(head.maps(3.0), mask, sites[s], effects[s], key,
                                     config.data.reconstruction)
                out["raw"].setdefault(s, []).append(vols(plain, img, mask, None))
                out["true"].setdefault(s, []).append(vols(phys, img, mask, sites[s]))
                out["grid"].setdefault(s, []).append([vols(phys, img, mask, g) for g in grid])
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in out.items()}

    tr, te = analyse(train_heads, 0), analyse(test_heads, len(train_heads))
    i, j, _ = evaluate.bridge_parameters(tr["grid"]["a"], tr["grid"]["b"])
    lines = [evaluate.fit_linear(tr["raw"]["b"][:, k], tr["raw"]["a"][:, k])
             for k in range(len(tissues))]
    linear_b = np.stack([lines[k][0] * te["raw"]["b"][:, k] + lines[k][1]
                         for k in range(len(tissues))], -1)
    ti = lambda p: f"{float(p.ti):.3f}"
    cases = [("raw (U-Net, no branch)", "–", te["raw"]["a"], te["raw"]["b"]),
             ("linear (no branch + per-tissue line fitted on training pairs)", "–",
              te["raw"]["a"], linear_b),
             ("physics bridging (TIs fitted on training pairs)",
              f"{ti(grid[i])} / {ti(grid[j])}", te["grid"]["a"][:, i], te["grid"]["b"][:, j]),
             ("physics U-Net told the true TIs (reference)",
              f"{ti(sites['a'])} / {ti(sites['b'])}", te["true"]["a"], te["true"]["b"])]
    rows = []
    for name, params, va, vb in cases:
        d = evaluate.relative_difference(va, vb)          # (subjects, tissues)
        sd = d.std(0, ddof=1) if len(d) > 1 else np.full(d.shape[1], np.nan)
        rows.append({"approach": name, "parameters": params,
                     **{f"diff_{t}": float(d[:, k].mean()) for k, t in enumerate(tissues)},
                     **{f"diff_{t}_sd": float(sd[k]) for k, t in enumerate(tissues)},
                     "n_test": len(d), "n_train": len(train_heads)})
    return rows


def write_report(workdir: str, config, rows, subject_rows, summary, bridge_rows, seconds) -> str:
    path = os.path.join(workdir, "report.md")
    d = config.data
    text = [(f"# Physics-aware segmentation (Borges et al. 2019) -- {d.n_test} held-out "
            f"anatomies, {d.voxel_size} mm, {d.reconstruction} images"), "",
            (f"Trained on {d.n_train} anatomies x {d.n_per_family} protocols per family "
            f"({', '.join(d.families)}), {config.train.steps} steps; evaluated on "
            f"{config.eval.n_mprage} MPRAGE TIs and {config.eval.n_spgr} SPGR protocols per "
            "held-out anatomy (one scanner-effect draw per subject, fixed across its protocols"
            + ("; B1+ nominal: no transmit inhomogeneity" if config.eval.b1_plus == "nominal"
               else "") + "). "
            "CoV: sample sd / mean of a subject's volume across the family's protocols, then "
            "mean ± sd over subjects; Dice of hard labels vs the R1 gold standard's, mean over "
            "protocols."), "", report.summary_table(summary), ""]
    if bridge_rows:
        text += ["## Bridging two MPRAGE sites of unknown TI", "",
                 (f"Site A TI {config.bridging.ti_a} s, site B TI {config.bridging.ti_b} s "
                 "(different scanner effects); methods are not told the TIs. Mean relative "
                 "volume difference between the sites over held-out subjects (paper: 5 % raw, "
                 "3 % linear, 2 % physics)."), "", report.bridging_table(bridge_rows), ""]
    text += ["![volume deviation vs TI](volume_vs_ti.png)", "",
             f"Total wall time {seconds:.0f} s."]
    with atomic_open(path) as f:
        f.write("\n".join(text) + "\n")
    return path


def check_config(config) -> None:
    """Refuse, before any work, settings the run could only fail on later (InputError)."""
    unknown = [m for m in config.eval.methods if m not in METHOD_NAMES]
    if unknown:
        raise InputError(f"config.eval.methods: unknown {unknown} {METHOD_NAMES}.")
    if "physics_b1map" in config.eval.methods and not config.model.b1_input:
        raise InputError("config.eval.methods: 'physics_b1map' needs a branch told B1+ "
                         "(config.model.b1_input=True).")
    if not 0.0 <= float(config.train.b1_known) <= 1.0:
        raise InputError(f"config.train.b1_known={config.train.b1_known}: a fraction in [0, 1].")
    if config.data.reconstruction not in simulate.RECONSTRUCTIONS:
        raise InputError(f"config.data.reconstruction={config.data.reconstruction!r}; expected "
                         f"one of {simulate.RECONSTRUCTIONS}.")
    if config.model.conditioning not in CONDITIONINGS:
        raise InputError(f"config.model.conditioning={config.model.conditioning!r}; expected one "
                         f"of {CONDITIONINGS}.")
    if config.model.contrast not in ("image", "signed", "magnitude"):
        raise InputError(f"config.model.contrast={config.model.contrast!r}; expected 'image', "
                         "'signed' or 'magnitude'.")
    if config.model.normalize_params not in ("family", "global", "none"):
        raise InputError(f"config.model.normalize_params={config.model.normalize_params!r}; "
                         "expected 'family', 'global' or 'none'.")
    if config.train.loss not in LOSSES:
        raise InputError(f"config.train.loss={config.train.loss!r}; expected one of {LOSSES}.")
    for family in config.data.families:
        n = evaluation_counts(config).get(family, 2)
        if n < 2:
            raise InputError(f"config.eval.n_{family}={n}: the volume CoV across protocols "
                             "needs at least 2 evaluation protocols.")
    if config.eval.b1_plus not in B1_PLUS:
        raise InputError(f"config.eval.b1_plus={config.eval.b1_plus!r}; expected one of "
                         f"{B1_PLUS}.")
    if int(config.eval.noise_draws) < 1:
        raise InputError(f"config.eval.noise_draws={config.eval.noise_draws}; needs >= 1.")
    factor = 2 ** (len(config.model.features) - 1)
    if int(config.model.patch) < 0 or int(config.model.patch) % factor:
        raise InputError(f"config.model.patch={config.model.patch}: 0 (whole slices) or a "
                         f"window size divisible by {factor} (the U-Net's down-sampling).")
    if int(config.model.ndim) not in (2, 3):
        raise InputError(f"config.model.ndim={config.model.ndim}: 2 (slices) or 3 (cubes).")
    if int(config.model.ndim) == 3 and int(config.model.patch) <= 0:
        raise InputError("config.model.ndim=3 trains on cubes: give their size, "
                         "config.model.patch (e.g. 32), a multiple of "
                         f"{factor}.")
    ranges = ranges_of(config)
    try:
        wide = training_ranges(config)
    except ValueError as exc:
        raise InputError(f"config.data.range_margin: {exc}") from exc
    for family in ranges:
        try:
            simulate.sample_protocols(family, ranges, 1, np.random.default_rng(0))
            simulate.sample_protocols(family, wide, 1, np.random.default_rng(0))
        except ValueError as exc:
            raise InputError(f"config.data.{family}: {exc}") from exc
    if "mprage" in ranges:
        try:
            simulate.evaluation_protocols("mprage", ranges, int(config.eval.n_mprage),
                                          config.seed, mprage_fixed(config))
            for ti in ((config.bridging.ti_a, config.bridging.ti_b)
                       if config.bridging.enabled else ()):
                p = simulate.evaluation_protocols("mprage", ranges, 1, config.seed,
                                                  mprage_fixed(config))[0].replace(ti=float(ti))
                if simulate.readout_problem(p):
                    raise ValueError(f"bridging TI {ti:g} s: {simulate.readout_problem(p)}")
        except ValueError as exc:
            raise InputError(f"config.eval.mprage_fixed / config.bridging: {exc}") from exc
    if config.bridging.enabled and "mprage" not in ranges:
        raise InputError("config.bridging needs the mprage family (or bridging.enabled=False).")


def run(config, workdir: str):
    """Run ``config.mode`` (``train_eval`` or ``segment``); returns the report's path (or the
    derivatives folder)."""
    if config.mode == "segment":
        return infer.segment(config, workdir)
    if config.mode != "train_eval":
        raise InputError(f"config.mode={config.mode!r}; expected 'train_eval' or 'segment'.")
    t0 = time.time()
    check_config(config)
    prepare_workdir(config, workdir, resumable_keys=("model", "data", "gold", "seed", "train"))
    heads = _heads(config)
    train_heads, test_heads = heads[:config.data.n_train], heads[config.data.n_train:]
    segmenters = train_models(config, workdir, train_heads)
    rows = evaluate_across_protocols(config, test_heads, _methods(config, segmenters))
    subject_rows = evaluate.cov_table(rows)
    keys = ["cov_gm", "cov_wm"] + [f"dice_{t}" for t in CLASSES]
    if config.eval.noise_draws > 1:
        keys += ["draw_sd_gm", "draw_sd_wm"]
    summary = evaluate.summarize(subject_rows, keys)
    bridge_rows = []
    if config.bridging.enabled and {"physics", "no_branch"} <= set(segmenters):
        bridge_rows = bridging(config, train_heads, test_heads, segmenters)
        tables.write_rows(bridge_rows, os.path.join(workdir, "bridging.csv"))
    tables.write_rows(rows, os.path.join(workdir, "evaluation.csv"))
    tables.write_rows(subject_rows, os.path.join(workdir, "cov_per_subject.csv"))
    tables.write_rows(summary, os.path.join(workdir, "summary.csv"))
    if "mprage" in config.data.families:
        report.volume_vs_ti_figure(rows, os.path.join(workdir, "volume_vs_ti.png"),
                                   list(config.eval.methods))
    path = write_report(workdir, config, rows, subject_rows, summary, bridge_rows,
                        time.time() - t0)
    if config.progress:
        with open(path) as f:
            print(f.read())
    return path
