"""Why a harmonized image's tissue volumes are off: contrast, bias field, or voxel-level spread?

For each chosen (subject, site) of a benchmark run's dataset, the run's PhyCHarm network
harmonizes the scan (mirror TTA, no data consistency) and the benchmark's fixed segmenter
(Atropos) labels it and the subject's target-protocol scan.  Reported against the target's
labels, for

* ``harmonized``: the network's output;
* ``resynth``: its physics-only path (the target's signal equation on the predicted T1 / M0);
* ``oracle tissue levels``: the output mapped piecewise-linearly so that its median in each of
  the target's CSF / GM / WM labels equals the target's (a perfect per-tissue contrast fix);
* ``oracle bias``: the output divided by its smooth gain against the target
  (:func:`phyjax.physics.consistency.local_gain`, Gaussian sigma ``--bias-sigma-mm``; a perfect
  smooth-gain fix);

the CSF / GM / WM volume error (%), Dice, and each tissue's coefficient of variation (sd /
median of the image inside the target's label).  If the oracles leave the volume errors in
place, the error is in the voxel-level spread of the tissues (blur, partial volume), which
no intensity remap can undo.

Usage::

    python benchmarks/volume_diagnosis.py --run runs/b800_phy_tta --subjects 03,05,10 \
        --sites se1p5T2D,geIRSPGR3T --out benchmarks/results/volume_diagnosis.md
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.evaluate.overlap import TISSUE_LABELS, tissue_overlap, tissue_volumes
from phyjax.experiments.common import read_run
from phyjax.physics.consistency import local_gain

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_philips import benchmark_segmenter


def oracle_levels(image, target, labels, mask):
    """``image`` mapped piecewise-linearly (through 0 and the per-label medians, extrapolated
    above WM with the GM-WM slope) onto ``target``'s per-label medians."""
    xo = [0.0] + [float(np.median(image[(labels == k) & mask])) for k in TISSUE_LABELS.values()]
    xt = [0.0] + [float(np.median(target[(labels == k) & mask])) for k in TISSUE_LABELS.values()]
    if not np.all(np.diff(xo) > 0):
        raise ValueError(f"tissue medians of the image are not increasing: {xo}")
    slope = (xt[-1] - xt[-2]) / (xo[-1] - xo[-2])
    mapped = np.where(image > xo[-1], xt[-1] + (image - xo[-1]) * slope, np.interp(image, xo, xt))
    return np.where(mask, mapped, 0.0)


def oracle_bias(image, target, mask, sigma_vox):
    """``image`` divided by its smooth gain against ``target`` (:func:`local_gain`)."""
    gain = local_gain(image, target, mask, sigma_vox)
    return np.where(mask & (gain > 0), image / np.where(gain > 0, gain, 1.0), 0.0)


def measure(image, labels_ref, mask, seg) -> dict[str, float]:
    lab = seg(image, mask)
    got, ref = tissue_volumes(lab[mask], 1.0), tissue_volumes(labels_ref[mask], 1.0)
    overlap = tissue_overlap(lab, labels_ref, mask)
    row = {}
    for t, k in TISSUE_LABELS.items():
        row[f"dv_{t}"] = 100.0 * (got[t] - ref[t]) / ref[t]
        row[f"dice_{t}"] = overlap[f"dice_{t}"]
        inside = image[(labels_ref == k) & mask]
        row[f"cv_{t}"] = float(np.std(inside) / np.median(inside))
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder with a phycharm network")
    ap.add_argument("--method", default="phycharm")
    ap.add_argument("--subjects", required=True, help="comma-separated subject labels")
    ap.add_argument("--sites", required=True, help="comma-separated source sites")
    ap.add_argument("--bias-sigma-mm", type=float, default=10.0)
    ap.add_argument("--out", required=True, help="markdown report")
    args = ap.parse_args(argv)
    cfg, _ = read_run(args.run, split=False)
    h = methods.load(os.path.join(args.run, args.method, "harmonizer"))
    h.cfg = dict(h.cfg, tta="flip", refine=dict(h.cfg.get("refine") or {}, enabled=False),
                 calibrate="none")
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = benchmark_segmenter()
    sigma = args.bias_sigma_mm / float(cfg.data.voxel_size)
    lines = ["Tissue-volume diagnosis: `python benchmarks/volume_diagnosis.py "
             + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             ("dV: volume error (%) of the fixed segmenter against its labels on the target "
             "scan; CV: sd / median inside the target's label."), "",
             ("| subject | site | image | dV CSF | dV GM | dV WM | Dice CSF | Dice GM | Dice WM | "
             "CV CSF | CV GM | CV WM |"), "|---" * 12 + "|"]

    def add(subject, site, name, row):
        lines.append(f"| {subject} | {site} | {name} | " + " | ".join(
            [f"{row[f'dv_{t}']:+.1f}" for t in TISSUE_LABELS] + [f"{row[f'dice_{t}']:.3f}" for t in TISSUE_LABELS]
            + [f"{row[f'cv_{t}']:.3f}" for t in TISSUE_LABELS]) + " |")
        print(lines[-1], flush=True)

    for subject in args.subjects.split(","):
        tgt = data.volumes[subject][data.target_site]
        mask = tgt.mask
        t_lab = seg(tgt.image, mask)
        add(subject, "-", "target", measure(tgt.image, t_lab, mask, seg))
        for site in args.sites.split(","):
            out = h.predict(data.volumes[subject][site])
            harm = np.where(mask, out["harmonized"], 0.0)
            for name, image in (("harmonized", harm),
                                ("resynth", np.where(mask, out["resynth"], 0.0)),
                                ("oracle tissue levels", oracle_levels(harm, tgt.image, t_lab,
                                                                       mask)),
                                ("oracle bias", oracle_bias(harm, tgt.image, mask, sigma))):
                add(subject, site, name, measure(image, t_lab, mask, seg))
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
