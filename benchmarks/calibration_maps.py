"""Which intensity map after the network: is the held-out heads' volume error one a map can fix?

Loads a benchmark run's trained PhyCHarm, harmonizes each scan of its held-out (or training)
subjects once (its saved test-time augmentation, no data consistency) and scores the network's
output through each of these monotone intensity maps against the subject's target scan (SSIM,
PSNR, Dice and signed volume error of the run's fixed segmenter, as
``benchmarks/refine_sweep.py``):

* ``raw``: no map (``config.model.calibrate=none``);
* ``sites``: the run's saved per-protocol maps (``calibrate=sites``, quantile matching of the
  network's outputs on the training pairs onto their target scans,
  :func:`phyjax.methods.calibration.fit_site_maps`);
* ``isotonic``: per protocol, the monotone conditional mean E[target | output] on the same
  training pairs (isotonic regression, :class:`sklearn.isotonic.IsotonicRegression`): the
  least-squares monotone map, where quantile matching transports one histogram onto the other;
* ``renoise``: per image, the output quantile-matched onto a predicted target histogram, that of
  ``isotonic(output) + r`` with ``r`` drawn from the training pairs' residuals at the voxel's
  output level (64 bins): a map that follows each head's own tissue mixture;
* ``heldK``: ``sites`` maps learned on K heads the network never saw (the first K subjects of
  the dataset built with ``--data-seed``): what the maps would be without the network having
  memorized its calibration heads;
* ``physK``: ``sites`` maps learned on K heads made by the physics
  (``config.model.calibrate_simulated``, :func:`phyjax.methods.phycharm.calibration_heads`:
  each site's protocol, its sidecar's slice profile, drawn scanner effects);
  ``physK_site``: the same heads imaged with each site's own scanner effects as the dataset's
  site table gives them (B1+, bias, noise, slice profile, gain: known only for the default
  data, so a diagnosis of how much the drawn effects cost, not a method); ``physK_clean``:
  with none but each site's slice profile (B1+ 1, no bias, no noise, gain 1); ``physK_b1``:
  with each site's own B1+ and slice profile only; ``physK_fit``: with each site's effects
  fitted to its training scans (``config.model.calibrate_effects="fitted"``, a method);
* ``oracle``: each output quantile-matched onto its own subject's target scan -- not a method
  (it reads the answer), the bound of what any monotone map could do.

Usage::

    python benchmarks/calibration_maps.py --run runs/abl/detail_s0 --subjects test \\
        --held 2,6 --out benchmarks/results/calibration_maps_detail_s0.md
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys

import numpy as np
from skimage.exposure import match_histograms
from sklearn.isotonic import IsotonicRegression

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.data.split import Split, protocols_match
from phyjax.evaluate.overlap import TISSUES, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run
from phyjax.data import synthetic
from phyjax.methods.calibration import calibrate_output, fit_site_maps, pooled_outputs
from phyjax.methods.phycharm import calibration_heads
from phyjax.physics import scanner

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refine_sweep import score  # noqa: E402

BINS, QUANTILES = 64, 65


def fit_isotonic(groups):
    """Per protocol of ``groups`` (:func:`phyjax.methods.calibration.pooled_outputs`): the
    isotonic map (on a 512-point grid) and the residual quantiles per output bin (for
    ``renoise``)."""
    fits = []
    for g in groups:
        protocol, o, t = g["p"], g["out"], g["tgt"]
        iso = IsotonicRegression(out_of_bounds="clip").fit(o, t)
        grid = np.linspace(o.min(), o.max(), 512)
        edges = np.quantile(o, np.linspace(0.0, 1.0, BINS + 1))
        b = np.clip(np.searchsorted(edges, o, side="right") - 1, 0, BINS - 1)
        r = t - iso.predict(o)
        rq = np.stack([np.quantile(r[b == k], np.linspace(0, 1, QUANTILES))
                       if (b == k).sum() > 10 else np.zeros(QUANTILES) for k in range(BINS)])
        fits.append(dict(protocol=protocol, grid=grid, g=iso.predict(grid), edges=edges, rq=rq))
    return fits


def apply_isotonic(out, mask, fit, renoise=False, seed=0):
    """``out`` (in ``mask``) through the isotonic map, or (``renoise``) quantile-matched onto
    the predicted target histogram of ``isotonic(out) + residual``."""
    o = out[mask]
    g = np.interp(o, fit["grid"], fit["g"])
    res = np.zeros_like(out)
    if not renoise:
        res[mask] = g
        return res
    b = np.clip(np.searchsorted(fit["edges"], o, side="right") - 1, 0, BINS - 1)
    u = np.random.default_rng(seed).uniform(0, QUANTILES - 1, o.size)
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, QUANTILES - 1)
    r = fit["rq"][b, lo] * (1 - (u - lo)) + fit["rq"][b, hi] * (u - lo)
    q = np.linspace(0.0, 1.0, 1024)
    res[mask] = np.interp(o, np.quantile(o, q), np.quantile(g + r, q))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder with a phycharm/")
    ap.add_argument("--subjects", choices=("train", "test"), default="test")
    ap.add_argument("--held", default="2,6", help="K,K,...: maps learned on K unseen heads")
    ap.add_argument("--data-seed", type=int, default=1, help="dataset of the unseen heads")
    ap.add_argument("--physics", default="", help="K,K,...: maps learned on K heads made "
                    "by the physics (drawn, the sites' own and no scanner effects)")
    ap.add_argument("--physics-effects", default="drawn,site,clean,b1,fit",
                    help="which of the physics-made heads' effects --physics makes maps with")
    ap.add_argument("--score-seed", type=int, default=None,
                    help="score the subjects of the dataset built with this data.seed (every "
                    "one of them, up to --max-subjects) instead of the run's --subjects")
    ap.add_argument("--max-subjects", type=int, default=0)
    ap.add_argument("--out", required=True, help="markdown report (a .csv is written beside)")
    args = ap.parse_args(argv)
    cfg, split = read_run(args.run)
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = make_segmenter(cfg.segmentation)
    harm = methods.load(os.path.join(args.run, "phycharm", "harmonizer"))
    saved = harm.cfg.get("site_maps")
    if not saved:
        raise SystemExit(f"{args.run}: its PhyCHarm has no site maps (calibrate=sites).")
    harm.cfg = dict(harm.cfg, refine=dict(harm.cfg.get("refine") or {}, enabled=False),
                    calibrate="none")
    train = data.training_set(Split(train=tuple(split["train"]), test=tuple(split["test"])))
    iso = fit_isotonic(pooled_outputs(harm, train))
    held = {}
    if args.held:
        other = copy.deepcopy(cfg)
        with other.unlocked():
            other.data.seed = args.data_seed
        if args.data_seed == int(cfg.data.seed):
            raise SystemExit(f"--data-seed {args.data_seed} is the run's own data.seed.")
        unseen = load_dataset(other.data, progress=False, paired=True)
        names = sorted(unseen.volumes)
        for k in (int(x) for x in args.held.split(",")):
            ts = unseen.training_set(Split(train=tuple(names[:k]), test=(names[-1],)))
            held[f"held{k}"] = fit_site_maps(harm, ts, progress=False)
    for k in (int(x) for x in args.physics.split(",") if x):
        own = {site: synthetic.site_effects(cfg.data.sites[site]) for site in data.source_sites
               if site in cfg.data.get("sites", {})}
        wanted = set(args.physics_effects.split(","))
        for tag, fx in (("", None), ("_site", own),
                        ("_clean", {site: scanner.ScannerEffects(slice_fwhm=e.slice_fwhm)
                                    for site, e in own.items()}),
                        ("_b1", {site: scanner.ScannerEffects(
                            b1_scale=e.b1_scale, b1_curvature=e.b1_curvature,
                            slice_fwhm=e.slice_fwhm) for site, e in own.items()})):
            if tag and len(own) < len(data.source_sites):
                continue            # not the default data: no site table to read effects from
            if (tag[1:] or "drawn") not in wanted:
                continue
            heads = calibration_heads(cfg, train, k, site_effects=fx)
            held[f"phys{k}{tag}"] = fit_site_maps(harm, heads, progress=False)
        if "fit" in wanted:
            fitted = copy.deepcopy(cfg)
            with fitted.unlocked():
                fitted.model.calibrate_effects = "fitted"
            held[f"phys{k}_fit"] = fit_site_maps(harm, calibration_heads(fitted, train, k,
                                                                         progress=True),
                                                 progress=False)
    if args.score_seed is not None:
        other = copy.deepcopy(cfg)
        with other.unlocked():
            other.data.seed = args.score_seed
        data = load_dataset(other.data, progress=False, paired=True)
        subjects = sorted(data.volumes)[:args.max_subjects or None]
    else:
        subjects = split[args.subjects][:args.max_subjects or None]
    rows = []
    for subject in subjects:
        tgt = data.volumes[subject][data.target_site]
        mask = np.asarray(tgt.mask, bool)
        t = np.asarray(tgt.image, np.float32)
        t_lab = seg(t, mask)
        t_vol = tissue_volumes(t_lab[mask], 1.0)
        for site, vol in sorted(data.volumes[subject].items()):
            if site == data.target_site or vol.protocol is None:
                continue
            raw = harm.predict(vol)
            out = np.asarray(raw["harmonized"], np.float32)
            fit = next(f for f in iso if protocols_match(f["protocol"], vol.protocol))
            images = {"raw": out}
            for name, maps in [("sites", saved)] + sorted(held.items()):
                images[name] = calibrate_output(raw, mask, "sites", site_maps=maps,
                                                protocol=vol.protocol)["harmonized"]
            images["isotonic"] = apply_isotonic(out, mask, fit)
            images["renoise"] = apply_isotonic(out, mask, fit, renoise=True)
            oracle = np.zeros_like(out)
            oracle[mask] = match_histograms(out[mask], t[mask])
            images["oracle"] = oracle
            for name, img in images.items():
                img = np.where(mask, img, 0.0).astype(np.float32)
                row = {"subject": subject, "site": site, "map": name,
                       **score(img, tgt, t_lab, t_vol, seg)}
                rows.append(row)
                print(f"{subject} {site} {name}: PSNR {row['psnr']:.2f} dV "
                      + "/".join(f"{row[f'dv_{q}']:+.1f}" for q in TISSUES), flush=True)
    keys = list(rows[0])
    with open(os.path.splitext(args.out)[0] + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    names = list(dict.fromkeys(r["map"] for r in rows))
    lines = [f"Intensity maps after the network, {args.subjects} subjects of `{args.run}` "
             f"({len(subjects)}): `python benchmarks/calibration_maps.py "
             + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             "dV: signed volume error (%) of the fixed segmenter against its labels of the "
             "target scan; |dV| its absolute mean. `oracle` reads the target (a bound, not a "
             "method).", "",
             "| site | map | SSIM | PSNR | Dice CSF | Dice GM | Dice WM | |dV| CSF | |dV| GM | "
             "|dV| WM | dV CSF | dV GM | dV WM |", "|---" * 13 + "|"]
    for site in sorted({r["site"] for r in rows}) + ["overall"]:
        for name in names:
            sel = [r for r in rows if r["map"] == name and site in (r["site"], "overall")]
            m = {k: np.mean([r[k] for r in sel]) for k in keys[3:]}
            a = {q: np.mean([abs(r[f"dv_{q}"]) for r in sel]) for q in TISSUES}
            lines.append(f"| {site} | {name} | {m['ssim']:.4f} | {m['psnr']:.2f} | "
                         f"{m['dice_csf']:.3f} | {m['dice_gm']:.3f} | {m['dice_wm']:.3f} | "
                         + " | ".join(f"{a[q]:.2f}" for q in TISSUES) + " | "
                         + " | ".join(f"{m[f'dv_{q}']:+.2f}" for q in TISSUES) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
