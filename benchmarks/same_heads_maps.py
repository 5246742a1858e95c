"""Is the physics' site maps' error the heads' anatomy or the scans' making?  (A diagnosis,
docs/phycharm_ablation.md item 73's open question: the 1.5 T MPRAGE's CSF over-count.)

The site maps of a run's PhyCHarm are learned on heads made by the physics (other heads than
the data's).  Here they are learned instead on the *scored heads themselves*: the ground truth
of the first ``--subjects`` validation heads (:func:`phyjax.data.synthetic.dataset_subject`,
``--data-seed``) imaged by :func:`phyjax.data.simulated.calibration_volumes` with each source
site's true scanner effects (the site table) and slice profile, and the clean target -- the
way the physics' heads are imaged in training.  If the over-count stays, it comes from how
the calibration scans are made (their target, effects or noise draws), not from which heads
they show; if it goes, from the heads.  Scored like ``refine_sweep.py`` against the data's own
target scans: the run's saved maps (``saved``), the maps on the same heads (``same_heads``)
and histogram matching to each scan's own target (``oracle``, a bound).  Printed first: the
tissue fractions of the scored heads and of the run's physics heads.

Usage::

    python benchmarks/same_heads_maps.py --run runs/abl/cfit8_s0 --data-seed 1 --subjects 6
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from skimage.exposure import match_histograms

from phyjax import methods
from phyjax.data import simulated, synthetic
from phyjax.data.dataset import load_dataset
from phyjax.evaluate.overlap import TISSUES, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run
from phyjax.methods.calibration import CalibrationHeads, calibrate_output, fit_site_maps
from refine_sweep import score


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder with a phycharm/")
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--subjects", type=int, default=6)
    args = ap.parse_args(argv)
    cfg, _ = read_run(args.run)
    from phyjax.methods.phycharm import heads_settings, physics_heads

    settings = heads_settings(cfg)      # the run's own physics heads, as training made them
    with cfg.unlocked():
        cfg.data.seed = args.data_seed
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = make_segmenter(cfg.segmentation)
    harm = methods.load(os.path.join(args.run, "phycharm", "harmonizer"))
    saved = harm.cfg["site_maps"]
    harm.cfg = dict(harm.cfg, refine=dict(harm.cfg.get("refine") or {}, enabled=False),
                    calibrate="none")
    subjects = sorted(data.volumes)[:args.subjects]
    voxel = int(cfg.data.voxel_size)
    template, _, affine = synthetic.load_anatomy(voxel)
    heads = [simulated.Anatomy(*synthetic.dataset_subject(cfg.data, int(s) - 1, template),
                               partial_volume=str(cfg.data.partial_volume)) for s in subjects]
    made = physics_heads(settings, int(settings["n"]), voxel, simulated.CALIBRATION_HEADS_FIRST)
    for name, group in (("the scored heads", heads), ("the run's physics heads", made)):
        f = np.array([a.probs[:, a.mask].sum(1) / a.mask.sum() for a in group])
        print(f"{name} ({len(group)}): CSF / GM / WM fraction of the mask "
              + " / ".join(f"{m:.3f} (sd {sd:.3f})" for m, sd in zip(f.mean(0), f.std(0))),
              flush=True)
    sites = [s for s in sorted(data.volumes[subjects[0]]) if s != data.target_site]
    sources = [data.volumes[subjects[0]][s].protocol for s in sites]
    scans = [data.volumes[s][site] for s in subjects for site in sites]
    volumes = simulated.calibration_volumes(
        sources, sites, data.volumes[subjects[0]][data.target_site].protocol, data.target_site,
        heads, affine, int(cfg.seed), simulated.slice_profiles(sources, scans, voxel),
        effects=[synthetic.site_effects(cfg.data.sites[s]) for s in sites])
    same = fit_site_maps(harm, CalibrationHeads(volumes, data.target_site),
                         int(cfg.model.get("calibrate_knots", 256)), progress=False,
                         slice_step=int(cfg.model.get("calibrate_slice_step", 1)))
    rows = []
    for subject in subjects:
        tgt = data.volumes[subject][data.target_site]
        mask = np.asarray(tgt.mask, bool)
        t_lab = seg(tgt.image, mask)
        t_vol = tissue_volumes(t_lab[mask], 1.0)
        for site in sites:
            vol = data.volumes[subject][site]
            raw = harm.predict(vol)
            out = np.asarray(raw["harmonized"], np.float32)
            oracle = np.zeros_like(out)
            oracle[mask] = match_histograms(out[mask], np.asarray(tgt.image)[mask])
            images = {name: calibrate_output(raw, mask, "sites", site_maps=m,
                                             protocol=vol.protocol)["harmonized"]
                      for name, m in (("saved", saved), ("same_heads", same))}
            images["oracle"] = oracle
            for name, img in images.items():
                row = {"subject": subject, "site": site, "map": name,
                       **score(np.where(mask, img, 0.0), tgt, t_lab, t_vol, seg)}
                rows.append(row)
                print(f"{subject} {site} {name}: PSNR {row['psnr']:.2f} dV "
                      + "/".join(f"{row[f'dv_{q}']:+.1f}" for q in TISSUES), flush=True)
    print("\n| site | map | PSNR | dV CSF | dV GM | dV WM |\n|---|---|---|---|---|---|")
    for site in sites + ["overall"]:
        for name in ("saved", "same_heads", "oracle"):
            sel = [r for r in rows if r["map"] == name and site in (r["site"], "overall")]
            print(f"| {site} | {name} | {np.mean([r['psnr'] for r in sel]):.2f} | "
                  + " | ".join(f"{np.mean([r[f'dv_{q}'] for r in sel]):+.2f}" for q in TISSUES)
                  + " |")


if __name__ == "__main__":
    main()
