"""Thick slices in another orientation: does a network trained on axial slices still harmonize a
scan whose thick slices are coronal or sagittal, and does one trained on every plane
(``config.model.views``)?

Every site of the default dataset blurs through-plane along the last (axial) axis.  This script
re-acquires the thick-slice sites of validation heads (``--data-seed``: the dataset built with
that ``data.seed``, heads no network trained on) with the same anatomy, protocol, scanner
effects and PRNG key as the dataset's own scan, the slice profile along the axial (a check: the
dataset's image is reproduced, else it stops), coronal or sagittal axis
(:func:`phyjax.data.synthetic.acquire` ``slice_axis``), and harmonizes each with every
``--run``'s network (mirror TTA, no data consistency).  Reports SSIM / PSNR against the subject's
target-protocol scan, and Dice and volume error of the benchmark's fixed segmenter against the
same segmenter on the target -- as ``refine_sweep.py``.

Usage::

    python benchmarks/views_orientation.py --run axial=runs/b800_phy \
        --run views=runs/views_s0 --method phycharm --data-seed 1 \
        --out benchmarks/results/views_orientation.md
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import sys

import jax
import numpy as np

from phyjax import methods
from phyjax.data import synthetic
from phyjax.data.dataset import load_dataset
from phyjax.data.slices import VIEWS
from phyjax.data.volumes import Volume, normalize
from phyjax.evaluate.metrics import image_metrics
from phyjax.evaluate.overlap import TISSUES, tissue_overlap, tissue_volumes
from phyjax.experiments.common import read_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_philips import benchmark_segmenter


@functools.lru_cache(maxsize=2)
def _anatomies(voxel_size: int, test_anatomy: str):
    probs, _, _ = synthetic.load_anatomy(voxel_size)
    real = (synthetic.load_real_anatomy(voxel_size, probs.shape[1:], test_anatomy)
            if test_anatomy != "mni152" else None)
    return probs, real


def reacquire(data_cfg, subject: str, site: str, axes) -> tuple[dict, np.ndarray]:
    """``({axis: image}, mask)``: ``subject``'s scan at ``site`` as the default dataset of
    ``data_cfg`` makes it (:func:`phyjax.data.synthetic._write_subject`: same anatomy, maps,
    effects and key), its slice profile along each voxel axis of ``axes`` (the maps made once);
    images not normalized."""
    cfg = synthetic._to_plain(data_cfg)
    probs, real = _anatomies(int(cfg["voxel_size"]), cfg.get("test_anatomy", "mni152"))
    i = int(subject) - 1
    s_probs, factors, texture = synthetic.dataset_subject(cfg, i, probs, real)
    mask = s_probs.sum(0) > 0.5
    j = sorted(cfg["sites"]).index(site)
    site_cfg = cfg["sites"][site]
    maps = synthetic.quantitative_maps(s_probs, factors, texture,
                                       float(site_cfg["field_strength"]), cfg["partial_volume"])
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg["seed"]), i), j)
    protocol, effects = synthetic.site_protocol(site_cfg), synthetic.site_effects(site_cfg)
    return {axis: synthetic.acquire(maps, mask, protocol, effects, key, slice_axis=axis)
            for axis in axes}, mask


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True,
                    help="label=run folder (a benchmark or phycharm run); repeatable")
    ap.add_argument("--method", default="phycharm", help="the method folder inside each run")
    ap.add_argument("--data-seed", type=int, required=True,
                    help="validation heads: the dataset built with this data.seed")
    ap.add_argument("--sites", default="",
                    help="comma-separated sites (default: every site with thick slices)")
    ap.add_argument("--orientations", default="axial,coronal,sagittal")
    ap.add_argument("--max-subjects", type=int, default=0)
    ap.add_argument("--out", required=True, help="markdown report (a .csv is written beside)")
    args = ap.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.run)
    first = next(iter(runs.values()))
    cfg, _ = read_run(first, split=False)
    if args.data_seed == int(cfg.data.seed):
        raise SystemExit(f"--data-seed {args.data_seed} is the run's own data.seed.")
    cfg.data.seed = args.data_seed
    harms = {}
    for label, run in runs.items():
        h = methods.load(os.path.join(run, args.method, "harmonizer"))
        h.cfg = dict(h.cfg, tta="flip", refine=dict(h.cfg.get("refine") or {}, enabled=False),
                     calibrate="none")
        harms[label] = h
    data = load_dataset(cfg.data, progress=False, paired=True)
    sites = (args.sites.split(",") if args.sites else
             sorted(s for s, c in cfg.data.sites.items() if float(c.get("slice_fwhm", 0)) > 0))
    orientations = args.orientations.split(",")
    seg = benchmark_segmenter()
    subjects = sorted(data.volumes)[:args.max_subjects or None]
    rows = []
    for subject in subjects:
        tgt = data.volumes[subject][data.target_site]
        t_lab = seg(tgt.image, tgt.mask)
        t_vol = tissue_volumes(t_lab[tgt.mask], 1.0)
        for site in sites:
            vol = data.volumes[subject][site]
            raws, mask = reacquire(cfg.data, subject, site, [VIEWS[o] for o in orientations])
            if not np.array_equal(mask, vol.mask):
                raise SystemExit(f"sub-{subject}: the re-made brain mask differs from the "
                                 "dataset's.")
            for orientation in orientations:
                image = normalize(raws[VIEWS[orientation]], vol.mask)
                if orientation == "axial" and not np.allclose(image, vol.image, atol=1e-4):
                    raise SystemExit(f"sub-{subject} {site}: the re-acquired axial scan differs "
                                     "from the dataset's (max |diff| "
                                     f"{np.abs(image - vol.image).max():.2e}).")
                scan = Volume(subject, site, vol.protocol, image, vol.mask, vol.path)
                for label, h in harms.items():
                    out = np.where(tgt.mask, h.harmonize(scan), 0.0)
                    lab = seg(out, tgt.mask)
                    row = {"subject": subject, "site": site, "orientation": orientation,
                           "network": label, **image_metrics(out, tgt.image, tgt.mask),
                           **{k: v for k, v in tissue_overlap(lab, t_lab, tgt.mask).items()
                              if k.startswith("dice")}}
                    v = tissue_volumes(lab[tgt.mask], 1.0)
                    for t in TISSUES:
                        row[f"dv_{t}"] = 100.0 * (v[t] - t_vol[t]) / t_vol[t]
                    rows.append(row)
                    print(f"{subject} {site} {orientation} {label}: SSIM {row['ssim']:.4f} "
                          f"PSNR {row['psnr']:.2f} Dice {row['dice_csf']:.3f}/"
                          f"{row['dice_gm']:.3f}/{row['dice_wm']:.3f}", flush=True)
    keys = [k for k in rows[0] if k not in ("subject", "site", "orientation", "network")]
    with open(os.path.splitext(args.out)[0] + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["subject", "site", "orientation", "network"] + keys)
        w.writeheader()
        w.writerows(rows)
    lines = [f"Thick slices re-oriented, validation heads of data.seed {args.data_seed} "
             f"({len(subjects)} subjects): `python benchmarks/views_orientation.py "
             + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             "|dV|: absolute volume error (%) against the target scan's segmentation.", "",
             ("| site | slices | network | SSIM | PSNR | Dice CSF | Dice GM | Dice WM | "
              "|dV| CSF | |dV| GM | |dV| WM |"), "|---" * 11 + "|"]
    for site in sites:
        for orientation in orientations:
            for label in harms:
                sel = [r for r in rows if r["site"] == site and r["orientation"] == orientation
                       and r["network"] == label]
                m = {c: np.mean([r[c] for r in sel]) for c in
                     ("ssim", "psnr", "dice_csf", "dice_gm", "dice_wm")}
                a = {t: np.mean([abs(r[f"dv_{t}"]) for r in sel]) for t in TISSUES}
                lines.append(f"| {site} | {orientation} | {label} | {m['ssim']:.4f} | "
                             f"{m['psnr']:.2f} | {m['dice_csf']:.3f} | {m['dice_gm']:.3f} | "
                             f"{m['dice_wm']:.3f} | {a['csf']:.1f} | {a['gm']:.1f} | "
                             f"{a['wm']:.1f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
