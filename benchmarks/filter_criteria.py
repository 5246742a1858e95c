"""Which in-plane filter would each criterion choose for a site's map, and what does each
filter do to the fixed segmenter's volumes?  (docs/phycharm_ablation.md item 80.)

The site maps choose their filter (``config.model.calibrate_denoise``) on the heads the physics
makes for them, by least squares against the heads' target scans
(:func:`phyjax.methods.calibration.choose_denoise`).  This script remakes those heads as the
run's training did (:func:`phyjax.methods.calibration.plan_site_maps`,
:func:`phyjax.methods.phycharm.calibration_heads`), harmonizes the first ``--heads`` of them
*whole* (not every k-th slice) at each ``--sites`` site with the run's network, passes each
output through the site's saved map without its filter, then through every candidate filter,
and reports per site and candidate: SSIM / PSNR, the fixed segmenter's Dice and signed volume
errors (%) against the same segmenter on the head's target scan -- everything on the maps'
own heads, none of the validation or test heads.

Usage::

    python benchmarks/filter_criteria.py --run runs/abl/sl79_s0 --sites mprage1p5T,spgr3T \
        --heads 8 --out benchmarks/results/filter_criteria_s0.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.data.split import Split
from phyjax.evaluate.overlap import TISSUES, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run
from phyjax.methods import calibration, phycharm

sys.path.insert(0, os.path.dirname(__file__))
from refine_sweep import score  # noqa: E402


def maps_heads(run: str, method: str = "phycharm"):
    """``(cfg, harm, maps, heads)`` of a benchmark run folder's ``method``: the run's config,
    its harmonizer with the site maps and the data-consistency step off (the network's own
    output), the site maps it saved, and the heads the physics makes for them, made again as
    the run's training made them (:func:`phyjax.methods.calibration.plan_site_maps`,
    :func:`phyjax.methods.phycharm.calibration_heads`).  Raises SystemExit where the run's maps
    were not learned on heads made by the physics."""
    cfg, split = read_run(run)
    run_cfg = cfg.copy_and_resolve_references()
    harm = methods.load(os.path.join(run, method, "harmonizer"))
    maps = harm.cfg["site_maps"]
    harm.cfg = dict(harm.cfg, calibrate="none",
                    refine=dict(harm.cfg.get("refine") or {}, enabled=False))
    data = load_dataset(cfg.data, progress=False, paired=True)
    train = data.training_set(Split(train=tuple(split["train"]), test=tuple(split["test"])))
    pairs = phycharm.resolve_pairs(phycharm.pairs_mode(cfg.train, method), train)
    plan = calibration.plan_site_maps(train, cfg.model, int(run_cfg.seed), "model",
                                      pairs == "paired")
    if plan.source != "physics":
        raise SystemExit(f"{run}: its maps were learned on {plan.source} heads, not the "
                         "physics'.")
    t0 = time.perf_counter()
    heads = phycharm.calibration_heads(run_cfg, train, plan.n_physics,
                                       target_scans=pairs == "paired")
    print(f"{len(heads.subjects)} heads made by the physics: {time.perf_counter() - t0:.0f} s",
          flush=True)
    return cfg, harm, maps, heads


def site_map(maps: list, vol) -> dict:
    """The saved map learned for ``vol``'s protocol
    (:func:`phyjax.methods.calibration.site_map_for`); SystemExit if there is none."""
    entry = calibration.site_map_for(maps, vol.protocol)
    if entry is None:
        raise SystemExit(f"{vol.site}: no saved site map for its protocol.")
    return entry


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a benchmark run folder with phycharm/")
    ap.add_argument("--method", default="phycharm")
    ap.add_argument("--sites", default="", help="comma-separated source sites (default: all)")
    ap.add_argument("--heads", type=int, default=8, help="the maps' first N heads, scored whole")
    ap.add_argument("--candidates", default="",
                    help="S:R filters (default: the run's config.model.calibrate_denoise)")
    ap.add_argument("--mrf-smoothing", type=float, default=-1.0,
                    help="the segmenter's MRF smoothing instead of the run's (0: intensity alone)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    cfg, harm, maps, heads = maps_heads(args.run, args.method)
    candidates = calibration.parse_denoise(args.candidates or
                                           cfg.model.get("calibrate_denoise", ""))
    if args.mrf_smoothing >= 0:     # a diagnosis: how much of a volume error is the MRF's
        with cfg.unlocked():
            cfg.segmentation.mrf_smoothing = args.mrf_smoothing
    seg = make_segmenter(cfg.segmentation)
    subjects = sorted(heads.subjects)[:args.heads]
    sites = [s for s in args.sites.split(",") if s] or sorted(
        {s for v in heads.volumes.values() for s in v if s != heads.target_site})
    rows = []
    for site in sites:
        for subject in subjects:
            vol = heads.volumes[subject][site]
            tgt = heads.volumes[subject][heads.target_site]
            entry = site_map(maps, vol)
            chosen = entry.get("denoise")
            if np.shape(vol.mask) != np.shape(tgt.mask):
                raise SystemExit(f"{site}: its heads' grid is not the target's; not scored.")
            out = harm.harmonize(vol)
            mapped = calibration.apply_site_map(out, vol.mask, dict(entry, denoise=None))
            t_lab = seg(tgt.image, tgt.mask)
            t_vol = tissue_volumes(t_lab[tgt.mask], 1.0)
            for f in [None] + list(candidates):
                img = mapped if f is None else calibration.denoise_in_plane(
                    mapped, tgt.mask, *f)
                row = score(img, tgt, t_lab, t_vol, seg)
                row["sse"] = float(np.sum((img[tgt.mask] - tgt.image[tgt.mask]) ** 2))
                rows.append(dict(row, site=site, subject=subject,
                                 filter="none" if f is None else f"{f[0]:g}:{f[1]:g}",
                                 chosen=bool(chosen) and f is not None
                                 and (chosen["sigma"], chosen["range"]) == f))
            print(f"{site} {subject} scored", flush=True)
    lines = [f"# In-plane filters on the maps' own heads: {args.run}", "",
             f"First {len(subjects)} of the {len(heads.subjects)} heads made by the physics for "
             "the run's site maps, harmonized whole, the saved map applied without its filter, "
             "then each filter. Volumes: the run's segmenter on the output against it on the "
             "head's target scan (signed, %). `*`: the filter the saved map chose. Segmenter: "
             f"{seg.describe() if hasattr(seg, 'describe') else type(seg).__name__}.", "",
             "| site | filter | SSIM | PSNR (dB) | LS gain (dB) | Dice CSF / GM / WM | "
             "dV CSF / GM / WM (%) | mean abs dV |", "|---|---|---|---|---|---|---|---|"]
    for site in sites:
        base = sum(r["sse"] for r in rows if r["site"] == site and r["filter"] == "none")
        for name in dict.fromkeys(r["filter"] for r in rows if r["site"] == site):
            rs = [r for r in rows if r["site"] == site and r["filter"] == name]
            m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]
                 if isinstance(rs[0][k], float)}
            gain = 10 * np.log10(base / sum(r["sse"] for r in rs))
            mad = np.mean([np.mean([abs(r[f"dv_{t}"]) for t in TISSUES]) for r in rs])
            lines.append(
                f"| {site} | {name}{' *' if rs[0]['chosen'] else ''} | {m['ssim']:.4f} | "
                f"{m['psnr']:.2f} | {gain:+.2f} | " + " / ".join(
                    f"{m[f'dice_{t}']:.4f}" for t in TISSUES) + " | " + " / ".join(
                    f"{m[f'dv_{t}']:+.2f}" for t in TISSUES) + f" | {mad:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
