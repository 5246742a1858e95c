"""How much of a trained PhyCHarm's error is noise: its calibrated output smoothed after the fact.

Loads a trained PhyCHarm (a benchmark run's ``phycharm``), harmonizes each scan of the chosen
subjects (the run's training or held-out subjects) with its saved inference settings, and scores
the output and in-plane Gaussian-smoothed copies of it (sd in voxels) against the subject's
target scan (PSNR, SSIM), with the gated base's mean gate (the re-synthesis' share of the base;
``model.base=gated``). If a light smoothing raises PSNR, the output carries noise that the
target scan does not -- the evidence behind ``config.model.source_smoothing``
(docs/phycharm_ablation.md, item 44).

Usage::

    python benchmarks/output_noise.py --run runs/abl/gated_s0 --subjects train --max-subjects 2 \\
        --out benchmarks/results/output_noise_gated_s0.md
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from scipy.ndimage import gaussian_filter

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.evaluate.metrics import image_metrics
from phyjax.experiments.common import read_run
from phyjax.methods import phycharm
from phyjax.methods.calibration import denoise_in_plane
from phyjax.physics.sequences import Protocol


def name(s) -> str:
    return f"{s:g}" if not isinstance(s, tuple) else f"bilateral {s[0]:g}:{s[1]:g}"


def smooth(image, mask, s):
    """``image`` (X, Y, Z) smoothed within each axial slice: a Gaussian of sd ``s`` voxels, or
    for ``s = (sigma, range_sd)`` the bilateral filter inside ``mask``."""
    if not isinstance(s, tuple):
        return gaussian_filter(image, (s, s, 0))
    return denoise_in_plane(image, mask, *s)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder")
    ap.add_argument("--method", default="phycharm")
    ap.add_argument("--subjects", choices=("train", "test"), default="train")
    ap.add_argument("--max-subjects", type=int, default=2)
    ap.add_argument("--sigmas", default="0.3,0.5,0.7,1.0",
                    help="in-plane sd (voxels) of a Gaussian; 'S:R' a bilateral filter of "
                         "spatial sd S and intensity sd R (phyjax.models.phycharm."
                         "masked_bilateral, on the brain mask)")
    ap.add_argument("--out", required=True, help="markdown report")
    args = ap.parse_args(argv)
    sigmas = [0.0] + [tuple(map(float, s.split(":"))) if ":" in s else float(s)
                      for s in args.sigmas.split(",")]
    cfg, split = read_run(args.run)
    harm = methods.load(os.path.join(args.run, args.method, "harmonizer"))
    site_maps, calibrate = harm.cfg.get("site_maps"), harm.cfg.get("calibrate", "none")
    harm.cfg = dict(harm.cfg, calibrate="none")     # the raw outputs keep the gate
    data = load_dataset(cfg.data, progress=False, paired=True)
    rows = {}
    for subject in split[args.subjects][:args.max_subjects]:
        tgt = data.volumes[subject][data.target_site]
        for site, vol in sorted(data.volumes[subject].items()):
            if site == data.target_site or not isinstance(vol.protocol, Protocol):
                continue
            raw = harm.predict(vol)
            out = phycharm.calibrate_output(raw, vol.mask, calibrate, source=vol.image,
                                            site_maps=site_maps, protocol=vol.protocol)
            row = rows.setdefault(site, {"psnr": [], "ssim": [], "gate": []})
            scores = []
            for s in sigmas:    # axial slices: smooth within each (the volume's last axis)
                img = out["harmonized"] if s == 0 else smooth(out["harmonized"], vol.mask, s)
                scores.append(image_metrics(np.where(tgt.mask, img, 0.0), tgt.image, tgt.mask))
            row["psnr"].append([m["psnr"] for m in scores])
            row["ssim"].append([m["ssim"] for m in scores])
            gate = raw.get("gate")
            row["gate"].append(float(gate[tgt.mask].mean()) if gate is not None else np.nan)
            print(subject, site, " ".join(f"{m['psnr']:.2f}" for m in scores), flush=True)
    head = " | ".join(["output"] + [f"smoothed {name(s)}" for s in sigmas[1:]])
    lines = [f"Output noise of `{args.run}` ({args.method}, {args.subjects} subjects "
             f"{split[args.subjects][:args.max_subjects]}): PSNR (dB) / SSIM against the target "
             "scan of the calibrated output and of it smoothed in-plane by a Gaussian of sd "
             "(voxels); gate = mean re-synthesis share of the gated base in the brain.", "",
             f"`python benchmarks/output_noise.py --run {args.run} --method {args.method} "
             f"--subjects {args.subjects} --max-subjects {args.max_subjects} "
             f"--sigmas {args.sigmas} --out {args.out}`", "",
             f"| site | {head} | gate |", "|---" * (len(sigmas) + 2) + "|"]
    for site, r in sorted(rows.items()):
        p, q = np.mean(r["psnr"], axis=0), np.mean(r["ssim"], axis=0)
        cells = " | ".join(f"{a:.2f} / {b:.4f}" for a, b in zip(p, q))
        lines.append(f"| {site} | {cells} | {np.mean(r['gate']):.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
