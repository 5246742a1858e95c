"""A per-site intensity map learned on the training pairs (PhyCHarm's ``calibrate=sites``) after
any slice network of a benchmark run: what it buys.

Runs a trained network (``--method``: a benchmark run's ``phycharm`` or ``unet``) on its
training subjects' scans, learns for each source protocol the monotone map that carries the
pooled in-brain outputs onto the same subjects' target scans
(:func:`phyjax.methods.calibration.fit_site_maps`, ``--knots`` quantiles each), then scores the
held-out subjects with and without it: SSIM / PSNR against the target scan and the run's fixed
segmenter's Dice and signed volume error against the same segmenter on the target scan.  (For
PhyCHarm, ``refine_sweep.py --setting name:calibrate=sites`` does the same on validation
heads; this script exists for the other networks, e.g. the U-Net baseline.)

Usage::

    python benchmarks/site_lut.py --run runs/base34 --method unet --knots 256 \
        --out benchmarks/results/site_maps_unet.md
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.data.split import Split
from phyjax.evaluate.overlap import TISSUES, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run
from phyjax.methods.calibration import calibrate_output, fit_site_maps
from phyjax.physics.sequences import Protocol

from refine_sweep import score   # a sibling script: run as python benchmarks/site_lut.py


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--method", default="phycharm", help="phycharm | unet (a slice network)")
    ap.add_argument("--knots", type=int, action="append", default=[])
    ap.add_argument("--data-seed", type=int, default=-1,
                    help="score the test subjects of the dataset built with this data.seed "
                         "(a validation split) instead of the run's")
    ap.add_argument("--test-anatomy", default="",
                    help="data.test_anatomy of the scored subjects (e.g. real_philips: the "
                         "README's real head; the maps are learned on the run's own training "
                         "subjects)")
    ap.add_argument("--max-subjects", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    knots = args.knots or [256]
    cfg, split = read_run(args.run)
    harm = methods.load(os.path.join(args.run, args.method, "harmonizer"))
    harm.cfg["calibrate"] = "none"      # "network": the saved network's own output
    seg = make_segmenter(cfg.segmentation)
    data = load_dataset(cfg.data, progress=False, paired=True)
    sites = split["source_sites"]

    train = data.training_set(Split(train=tuple(split["train"]), test=tuple(split["test"])))
    maps = {k: fit_site_maps(harm, train, k) for k in knots}
    test_data = data
    if args.data_seed >= 0 or args.test_anatomy:
        with cfg.unlocked():
            if args.data_seed >= 0:
                cfg.data.seed = args.data_seed
            if args.test_anatomy:
                cfg.data.test_anatomy = args.test_anatomy
        test_data = load_dataset(cfg.data, progress=False, paired=True)
    rows = []
    for subject in split["test"][:args.max_subjects or None]:
        tgt = test_data.volumes[subject][test_data.target_site]
        t_lab = seg(tgt.image, tgt.mask)
        t_vol = tissue_volumes(t_lab[tgt.mask], 1.0)
        for site in sites:
            vol = test_data.volumes[subject][site]
            if not isinstance(vol.protocol, Protocol):
                continue
            h = harm.harmonize(vol)
            variants = {"network": h}
            for k in knots:
                variants[f"lut{k}"] = calibrate_output(
                    {"harmonized": h}, tgt.mask, "sites", site_maps=maps[k],
                    protocol=vol.protocol)["harmonized"]
            for name, img in variants.items():
                row = {"subject": subject, "site": site, "setting": name,
                       **score(img, tgt, t_lab, t_vol, seg)}
                rows.append(row)
                print(f"{subject} {site} {name}: PSNR {row['psnr']:.2f} Dice "
                      f"{row['dice_csf']:.3f}/{row['dice_gm']:.3f}/{row['dice_wm']:.3f} dV "
                      f"{row['dv_csf']:+.1f}/{row['dv_gm']:+.1f}/{row['dv_wm']:+.1f}", flush=True)
    names = ["network"] + [f"lut{k}" for k in knots]
    lines = [f"`python benchmarks/site_lut.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "", "| site | setting | SSIM | PSNR | Dice CSF | Dice GM | Dice WM | |dV| CSF | "
             "|dV| GM | |dV| WM | dV CSF | dV GM | dV WM |", "|---" * 13 + "|"]
    for site in sites + ["overall"]:
        for name in names:
            sel = [r for r in rows if r["setting"] == name and site in (r["site"], "overall")]
            m = {c: np.mean([r[c] for r in sel]) for c in sel[0] if c not in
                 ("subject", "site", "setting")}
            a = {t: np.mean([abs(r[f"dv_{t}"]) for r in sel]) for t in TISSUES}
            lines.append(f"| {site} | {name} | {m['ssim']:.4f} | {m['psnr']:.2f} | "
                         f"{m['dice_csf']:.3f} | {m['dice_gm']:.3f} | {m['dice_wm']:.3f} | "
                         f"{a['csf']:.1f} | {a['gm']:.1f} | {a['wm']:.1f} | {m['dv_csf']:+.1f} | "
                         f"{m['dv_gm']:+.1f} | {m['dv_wm']:+.1f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
