"""PhyCHarm's data-consistency step (``config.model.refine``): what each setting buys.

Loads a trained PhyCHarm (a ``phycharm`` run folder, or a benchmark run's ``phycharm`` /
``phycharm_unpaired``), runs the network once per scan of the chosen subjects and applies the
data-consistency step with each setting to the same network outputs.  Per source site and
overall it reports SSIM / PSNR against the subject's target-protocol scan, Dice and volume
error of the run's fixed segmenter (``segmentation`` of the run's config; Atropos by default)
against the same segmenter on the target scan, and the T1 / M0 NRMSE of the (refined) maps
against the ground-truth maps.  Choose settings on ``--subjects train`` (the training
subjects; the network has seen them), or on a validation split -- ``--data-seed N``: the
subjects of the run's dataset built with ``data.seed = N``, heads the network has never seen
(checked: no T1 map repeats a training subject's) -- and report them on ``--subjects test``
once.

Usage::

    python benchmarks/refine_sweep.py --run runs/phycharm --subjects train \
        --setting off:enabled=False --setting default:enabled=True \
        --setting noise015:enabled=True,noise=0.015 --out benchmarks/results/refine_train.md
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.evaluate.metrics import image_metrics, nrmse
from phyjax.evaluate.overlap import (
    TISSUES,
    tissue_intensity_ratios,
    tissue_overlap,
    tissue_volumes,
)
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run
from phyjax.data.split import Split
from phyjax.methods import calibration, phycharm
from phyjax.physics.sequences import Protocol


def parse_setting(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, settings) with numbers and booleans parsed."""
    name, _, body = text.partition(":")
    out = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if value in ("True", "False"):
            out[key] = value == "True"
        elif key in ("calibrate", "tta", "network", "views", "new_map", "map"):
            out[key] = value            # p99 | match; none | flip; K | all | 0+2; axial+coronal;
                                        # none | drawn | fitted; quantile | least_squares
        elif key == "site_step":
            out[key] = int(value)
        else:
            out[key] = float(value)
    return name, out


def post_filter(image, mask, sigma: float, range_frac: float = 0.0) -> np.ndarray:
    """``image`` (X, Y, Z) smoothed after the fact within each axial slice inside ``mask``:
    a Gaussian of sd ``sigma`` voxels (``range_frac`` 0) or the bilateral filter
    (:func:`phyjax.models.phycharm.masked_bilateral`) with intensity sd ``range_frac`` times
    the in-mask 99th percentile (:func:`phyjax.methods.calibration.denoise_in_plane`, the
    site maps' filter).  A diagnostic: how much of the output's error is noise."""
    from phyjax.methods.calibration import denoise_in_plane

    m = np.asarray(mask, bool)
    p99 = float(np.percentile(image[m], 99))
    rng = range_frac * p99 if range_frac > 0 else 1e6 * max(p99, 1e-6)
    return denoise_in_plane(image, m, sigma, rng)


def score(img, tgt, t_lab, t_vol, seg) -> dict:
    """SSIM / PSNR / NRMSE of ``img`` against the target scan ``tgt`` (a Volume) in its mask,
    the Dice of ``seg``'s CSF / GM / WM on ``img`` against its labels of the target (``t_lab``),
    and the signed volume errors ``dv_<tissue>`` (%) against the target's volumes ``t_vol``."""
    lab = seg(img, tgt.mask)
    row = {**image_metrics(img, tgt.image, tgt.mask),
           **{k: v for k, v in tissue_overlap(lab, t_lab, tgt.mask).items()
              if k.startswith("dice")}}
    v = tissue_volumes(lab[tgt.mask], 1.0)
    for t in TISSUES:
        row[f"dv_{t}"] = 100.0 * (v[t] - t_vol[t]) / t_vol[t]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="phycharm or benchmark run folder")
    ap.add_argument("--method", default="", help="benchmark run: phycharm | phycharm_unpaired")
    ap.add_argument("--subjects", choices=("train", "test", "all"), default="train",
                    help="all: the training subjects, then the test subjects")
    ap.add_argument("--setting", action="append", required=True,
                    help="name:key=value,... (config.model.refine keys, and calibrate=True "
                         "(config.model.calibrate=p99) or calibrate=p99|match|sites after "
                         "them (sites: the run's maps, or learned here as training would; "
                         "with site_step=K always learned here, on the heads training learns "
                         "them on -- its physics-made heads, config.model.calibrate_with, or "
                         "its traveling subjects -- with its filter candidates, from every "
                         "K-th slice, config.model.calibrate_slice_step, and timed; with "
                         "map=quantile|least_squares their form, config.model."
                         "calibrate_map), and "
                         "tta=none|flip (config.model.tta; default: the saved network's) and "
                         "views=axial+coronal+... (config.model.views: the planes it infers "
                         "in; default: the saved network's) before them), and "
                         "denoise=False: the site maps without the in-plane filters they "
                         "chose (config.model.calibrate_denoise), min_gain=X: without those "
                         "that gained less than X dB on the maps' heads "
                         "(config.model.calibrate_denoise_min_gain), and "
                         "post=S[,post_range=R]: the calibrated output smoothed in-plane "
                         "after the fact (a Gaussian of sd S voxels, or with R > 0 the "
                         "bilateral filter of intensity sd R x the in-mask p99), and "
                         "new_map=none|drawn|fitted with calibrate=sites: the scan's own site "
                         "map withheld, as for a protocol the training never saw, and none "
                         "used, or one the physics makes at harmonize time "
                         "(config.harmonize.new_protocol_map=physics, phycharm."
                         "physics_site_maps; effects drawn or fitted to the site's first 8 "
                         "scans among --subjects, as a folder of them is harmonized); the "
                         "name 'none' scores the source image itself")
    ap.add_argument("--ensemble-run", action="append", default=[],
                    help="further run folder(s) of the same method (e.g. other seeds): the "
                         "setting key network=all averages the outputs of --run and these "
                         "(model averaging), network=0+2 those of runs 0 and 2, network=K "
                         "uses run K alone (0: --run)")
    ap.add_argument("--max-subjects", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=-1,
                    help="validation: the subjects (--subjects) of the dataset built with this "
                         "data.seed instead of the run's (no head, i.e. T1 map, may repeat a "
                         "training subject's)")
    ap.add_argument("--test-anatomy", default="",
                    help="data.test_anatomy of the held-out subjects (e.g. real_philips: the "
                         "README's real head; the training subjects are unchanged)")
    ap.add_argument("--out", required=True, help="markdown report (a .csv is written beside)")
    args = ap.parse_args(argv)
    cfg, split = read_run(args.run)
    if args.test_anatomy:
        with cfg.unlocked():
            cfg.data.test_anatomy = args.test_anatomy
    own = None
    run_cfg = cfg.copy_and_resolve_references()     # before a validation seed replaces its own
    if args.data_seed >= 0:
        if args.data_seed == int(cfg.data.seed):
            raise SystemExit(f"--data-seed {args.data_seed} is the run's own data.seed.")
        own = load_dataset(cfg.data, progress=False, paired=True)
        cfg.data.seed = args.data_seed
    def load(run):          # a phycharm run's harmonizer/, or a benchmark run's <method>/
        return methods.load(os.path.join(run, args.method, "harmonizer"))

    harm = load(args.run)
    others = [load(r) for r in args.ensemble_run]
    saved_tta = harm.cfg.get("tta", "none")     # what the saved maps were learned with
    net_cfg = dict(harm.cfg, refine=dict(harm.cfg.get("refine") or {}, enabled=False),
                   calibrate="none")
    harm.cfg = net_cfg
    for o in others:
        if o.target_protocol != harm.target_protocol:
            raise SystemExit("--ensemble-run: the runs harmonize to different targets.")
    target = phycharm._f32(harm.target_protocol, net_cfg.get("readout", "sidecar"))
    ref = phycharm.reference_level(target)
    settings = [parse_setting(s) for s in args.setting]
    for name, s in settings:     # a form is a way of learning maps: the saved ones have theirs
        if "map" in s and "site_step" not in s:
            raise SystemExit(f"--setting {name}: map={s['map']} needs site_step=K (the site "
                             "maps are learned again, in that form, from every K-th slice).")
    # each network's own planes (a setting's views= overrides them)
    own_views = [h.cfg.get("views", ["axial"]) for h in [harm] + others]
    data = load_dataset(cfg.data, progress=False, paired=True)
    site_maps = harm.cfg.get("site_maps")
    # the run's own training subjects, where training learns the site maps
    run_data = own if own is not None else data
    split_ = Split(train=tuple(split["train"]), test=tuple(split["test"]))
    train_set = run_data.training_set(split_)
    # the network's own section: the U-Net's maps follow config.unet, PhyCHarm's config.model
    section = "unet" if args.method == "unet" else "model"
    maps_cfg = cfg[section]
    knots = int(maps_cfg.get("calibrate_knots", 256))
    if any(s.get("calibrate") == "sites" for _, s in settings) and not site_maps:
        # a harmonizer saved without maps: learn them as training does (config.model.
        # calibrate=sites) with this network
        site_maps = phycharm.fit_site_maps(
            harm, train_set, knots, slice_step=int(maps_cfg.get("calibrate_slice_step", 1)))
    learned = {}            # (site_step, form) -> (maps learned here, seconds)
    own_form = maps_cfg.get("calibrate_map", "quantile")
    steps = sorted({(s["site_step"], s.get("map", own_form)) for _, s in settings
                    if "site_step" in s})
    if steps:               # compile first, so that no timing below holds the compilation
        harm.predict(next(v for v in run_data.volumes[split_.train[0]].values()
                          if v.site != run_data.target_site))
        # the heads and filter candidates the run's training learned its maps on and with
        # (calibration.plan_site_maps, as training decides): heads made by the physics
        # (config.model.calibrate_with, item 71) or its traveling subjects, those that
        # calibrate_heads held out of the network's training where it did; built once,
        # outside the timing (the same for every K)
        pairs = phycharm.resolve_pairs(phycharm.pairs_mode(cfg.train, args.method or
                                                           "phycharm"), train_set)
        plan = calibration.plan_site_maps(train_set, maps_cfg, int(run_cfg.seed), section,
                                          pairs == "paired", has_physics=section == "model")
        heads = plan.maps_set if plan.maps_set is not None else train_set
        if plan.source == "physics":
            t0 = time.perf_counter()
            heads = phycharm.calibration_heads(run_cfg, train_set, plan.n_physics,
                                               target_scans=pairs == "paired")
            print(f"{len(heads.subjects)} heads made by the physics for the maps: "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        elif plan.network_set is not train_set:
            print(f"the maps' heads: {list(heads.subjects)}, held out of the network's "
                  "training (calibrate_heads)", flush=True)
    for step, form in steps:
        t0 = time.perf_counter()
        maps = phycharm.fit_site_maps(harm, heads, knots, progress=False, slice_step=step,
                                      denoise=maps_cfg.get("calibrate_denoise", ""),
                                      denoise_min_gain=float(maps_cfg.get(
                                          "calibrate_denoise_min_gain", 0.0)), form=form)
        learned[step, form] = (maps, time.perf_counter() - t0)
        print(f"{form} site maps from every {step}. slice: {learned[step, form][1]:.1f} s"
              + "".join(f"; {', '.join(m['sites'])}: {m['form']}"
                        + (f", filter {m['denoise']['sigma']:g}:{m['denoise']['range']:g}"
                           if m.get("denoise") else "") for m in maps), flush=True)
        if (step == int(maps_cfg.get("calibrate_slice_step", 1)) and form == own_form
                and site_maps):
            # the run's own setting: the maps learned here should be the ones training saved
            # (zip would compare only the shorter list's maps: a count that differs is said)
            gap = max(float(np.max(np.abs(np.subtract(a["output"], b["output"]))))
                      for a, b in zip(maps, site_maps)) if len(maps) == len(site_maps) else None
            print("  against the run's saved maps (the same K): " + (
                f"largest knot difference {gap:.3g}" if gap is not None else
                f"{len(maps)} maps learned here, {len(site_maps)} saved"), flush=True)
    if own is not None:     # a validation head must not be a training head (same T1 map)
        def head(volumes, site):
            v = volumes[site]
            return v.t1 if v.t1 is not None else v.image

        heads = [head(v, data.target_site) for v in data.volumes.values()]
        for subject in split["train"]:
            a = head(own.volumes[subject], own.target_site)
            if any(a.shape == b.shape and np.allclose(a, b, atol=1e-3) for b in heads):
                raise SystemExit(f"data.seed {args.data_seed}: a subject repeats training "
                                 f"subject {subject}'s head (its T1 map).")
    if "segmentation" in cfg:
        seg = make_segmenter(cfg.segmentation)
    else:                   # a phycharm run's config has none: the benchmark config's
        from real_philips import benchmark_segmenter

        seg = benchmark_segmenter()
    subjects = (list(split["train"]) + list(split["test"]) if args.subjects == "all"
                else split[args.subjects])
    if args.max_subjects:
        subjects = subjects[:args.max_subjects]
    new_maps = {}           # (site, effects) -> the map the physics makes at harmonize time

    def without_own(maps, protocol):
        from phyjax.data.split import protocols_match
        from phyjax.methods.base import protocol_from_json

        return [m for m in maps if not protocols_match(protocol_from_json(m["protocol"]),
                                                       protocol)]

    def new_map(site, effects):
        if (site, effects) not in new_maps:
            from phyjax.experiments.harmonize import NEW_MAP_SCANS

            vols = [data.volumes[s][site] for s in subjects
                    if site in data.volumes[s]][:NEW_MAP_SCANS]
            saved = harm.cfg
            harm.cfg = dict(saved, calibrate="sites", tta=saved_tta,
                            site_maps=without_own(site_maps, vols[0].protocol))
            t0 = time.perf_counter()
            try:
                (made,) = phycharm.physics_site_maps(harm, vols, effects=effects,
                                                     heads=phycharm.heads_settings(cfg))
            finally:
                harm.cfg = saved
            new_maps[site, effects] = made
            print(f"{site}: map made by the physics ({effects} effects, {len(vols)} scans) in "
                  f"{time.perf_counter() - t0:.1f} s; {made['made']['fitted_effects']}",
                  flush=True)
        return new_maps[site, effects]

    rows = []
    for subject in subjects:
        tgt = data.volumes[subject][data.target_site]
        t_lab = seg(tgt.image, tgt.mask)
        t_vol = tissue_volumes(t_lab[tgt.mask], 1.0)
        for site, vol in sorted(data.volumes[subject].items()):
            if site == data.target_site or not isinstance(vol.protocol, Protocol):
                continue
            raws = {}               # each network's outputs, once per test-time augmentation

            def network(tta, which="0", views=None, raws=raws, vol=vol):
                if which == "all" or "+" in which:
                    members = range(1 + len(others)) if which == "all" else which.split("+")
                    outs = [network(tta, str(k), views) for k in members]
                    return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}
                if (tta, which, views) not in raws:
                    h = ([harm] + others)[int(which)]
                    h.cfg = dict(h.cfg, tta=tta, refine=net_cfg["refine"], calibrate="none")
                    h.cfg["views"] = views.split("+") if views else own_views[int(which)]
                    raws[tta, which, views] = h.predict(vol)
                return raws[tta, which, views]

            for name, s in settings:
                s = dict(s)
                raw = network(s.pop("tta", net_cfg.get("tta", "none")),   # default: saved
                              str(s.pop("network", "0")), s.pop("views", None))
                if name == "none":     # the source image itself (the "no harmonization" row)
                    out = {"harmonized": vol.image, "t1": raw["t1"], "m0": raw["m0"]}
                else:
                    step = s.pop("site_step", None)
                    form = s.pop("map", own_form)
                    post, post_range = s.pop("post", 0.0), s.pop("post_range", 0.0)
                    maps = site_maps if step is None else learned[step, form][0]
                    if s.pop("denoise", True) is False:     # the maps without their filters
                        maps = [dict(m, denoise=None) for m in maps]
                    least = s.pop("min_gain", 0.0)     # ... or without those that gain less
                    maps = [dict(m, denoise=None) if m.get("denoise") and
                            m["denoise"]["psnr_gain_db"] < least else m for m in maps]
                    withheld = s.pop("new_map", None)
                    if withheld is not None:
                        maps = without_own(maps, vol.protocol) + (
                            [new_map(site, withheld)] if withheld != "none" else [])
                    calibrate = s.pop("calibrate", False)
                    calibrate = {True: "p99", False: "none"}.get(calibrate, calibrate)
                    st = phycharm.refine_settings(dict(net_cfg["refine"], **s))
                    out = phycharm.refine_outputs(raw, vol, target, ref, st, net_cfg) \
                        if st["enabled"] else raw
                    out = phycharm.calibrate_output(out, vol.mask, calibrate, source=vol.image,
                                                    site_maps=maps, protocol=vol.protocol)
                    if post:
                        out = dict(out, harmonized=post_filter(out["harmonized"], vol.mask,
                                                               post, post_range))
                img = np.where(tgt.mask, out["harmonized"], 0.0)
                row = {"subject": subject, "site": site, "setting": name,
                       **score(img, tgt, t_lab, t_vol, seg)}
                row.update(tissue_intensity_ratios(img, tgt.image, t_lab, tgt.mask))
                if vol.t1 is not None:
                    m = vol.mask.astype(bool)
                    row["t1_nrmse"] = float(nrmse(out["t1"], vol.t1, m))
                    row["m0_nrmse"] = float(nrmse(out["m0"], vol.m0, m))
                rows.append(row)
                print(f"{subject} {site} {name}: SSIM {row['ssim']:.4f} PSNR {row['psnr']:.2f} "
                      f"Dice {row['dice_csf']:.3f}/{row['dice_gm']:.3f}/{row['dice_wm']:.3f} "
                      f"dV {row['dv_csf']:+.1f}/{row['dv_gm']:+.1f}/{row['dv_wm']:+.1f}",
                      flush=True)
    keys = [k for k in rows[0] if k not in ("subject", "site", "setting")]
    with open(os.path.splitext(args.out)[0] + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["subject", "site", "setting"] + keys)
        w.writeheader()
        w.writerows(rows)
    cols = ["ssim", "psnr", "dice_csf", "dice_gm", "dice_wm", "dv_csf", "dv_gm", "dv_wm",
            "t1_nrmse", "m0_nrmse"]
    which = f"{args.subjects} subjects" if own is None else \
        f"{args.subjects} subjects of data.seed {args.data_seed} (a validation split)"
    lines = [f"Data-consistency settings on the {which} of `{args.run}` "
             f"({len(subjects)} subjects): `python benchmarks/refine_sweep.py "
             + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             ("dV: signed volume error (%) against the target scan's segmentation; "
              "|dV|: its absolute mean; GM/WM: the output's GM over WM median intensity "
              "relative to the target's, in the target's segmentation (1: the target's "
              "contrast; > 1: GM too bright against WM)."), "",
             ("| site | setting | SSIM | PSNR | Dice CSF | Dice GM | Dice WM | |dV| CSF | "
              "|dV| GM | |dV| WM | dV CSF | dV GM | dV WM | T1 NRMSE | M0 NRMSE | GM/WM |"),
             "|---|" * 1 + "---|" * 15]
    if learned:
        lines[2:2] = [("Site maps learned here on the run's training subjects (site_step=K: "
                       "every K-th slice): " + ", ".join(
                           f"K={k} {f} {t:.1f} s" for (k, f), (_, t) in learned.items())
                    + "."), ""]
    sites = sorted({r["site"] for r in rows}) + ["overall"]
    for site in sites:
        for name, _ in settings:
            sel = [r for r in rows if r["setting"] == name and site in (r["site"], "overall")]
            mean = {c: np.mean([r[c] for r in sel if c in r]) if any(c in r for r in sel)
                    else np.nan for c in cols}
            absdv = {t: np.mean([abs(r[f"dv_{t}"]) for r in sel]) for t in TISSUES}
            lines.append(f"| {site} | {name} | {mean['ssim']:.4f} | {mean['psnr']:.2f} | "
                         f"{mean['dice_csf']:.3f} | {mean['dice_gm']:.3f} | "
                         f"{mean['dice_wm']:.3f} | {absdv['csf']:.1f} | {absdv['gm']:.1f} | "
                         f"{absdv['wm']:.1f} | {mean['dv_csf']:+.1f} | {mean['dv_gm']:+.1f} | "
                         f"{mean['dv_wm']:+.1f} | {mean['t1_nrmse']:.3f} | "
                         f"{mean['m0_nrmse']:.3f} | "
                         f"{np.mean([r['ratio_gm'] / r['ratio_wm'] for r in sel]):.3f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
