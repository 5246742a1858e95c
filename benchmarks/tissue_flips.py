"""Where a harmonizer's tissue volumes go wrong: voxels whose tissue class changes.

For one held-out subject of a benchmark run, segments the ground-truth target-protocol image
and each method's output with the benchmark's fixed segmenter (DIPY HMRF), and reports per
source site: the tissue volumes, the mean and sd of each method's output inside each of the
target's tissue classes (against the target's own), and the voxels the target calls GM that
the output's segmentation calls CSF (count, and their mean intensity in the target and in the
output).  This is what the volume errors of the benchmark table are made of.  The last column
segments each output once more after giving it the target's own in-mask histogram (an oracle:
every voxel keeps its rank in the output and takes the target's value of that rank): volume
errors that vanish there come from the shape of the output's histogram (e.g. a regression to
the mean that narrows it), not from where its voxels lie.

Usage::

    python benchmarks/tissue_flips.py --run runs/benchmark [--subject 03]
        [--methods phycharm,histmatch] [--out benchmarks/results/tissue_flips.md]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.evaluate.overlap import TISSUE_LABELS
from phyjax.evaluate.segmentation import TissueSegmenter
from phyjax.experiments.common import read_run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder")
    ap.add_argument("--subject", default="", help="held-out subject (default: the first)")
    ap.add_argument("--methods", default="phycharm,histmatch,nyul")
    ap.add_argument("--out", default="benchmarks/results/tissue_flips.md")
    args = ap.parse_args(argv)
    cfg, split = read_run(args.run)
    subject = args.subject or split["test"][0]
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = TissueSegmenter(cfg.segmentation.beta, cfg.segmentation.max_iter,
                          cfg.segmentation.tolerance)
    target = data.volumes[subject][data.target_site]
    t_img, mask = target.image, target.mask
    t_lab = seg(t_img, mask)
    names = ("csf", "gm", "wm")
    lines = [f"Tissue classes of held-out subject {subject} ({args.run}): "
             "`python benchmarks/tissue_flips.py " + " ".join(sys.argv[1:] if argv is None else argv)
             + "`", "",
             "| site | image | V CSF | V GM | V WM | mean±sd in target's CSF | in GM | in WM | "
             "target-GM → CSF voxels | their target mean | their output mean | "
             "ΔV CSF / GM / WM (%) | same with the target's histogram (%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    t_vols = np.array([(t_lab == TISSUE_LABELS[t]).sum() for t in names], float)

    def change(lab):
        v = np.array([(lab == TISSUE_LABELS[t]).sum() for t in names], float)
        return " / ".join(f"{x:+.1f}" for x in 100 * (v - t_vols) / t_vols)

    def row(site, name, img, lab):
        vols = [int((lab == TISSUE_LABELS[t]).sum()) for t in names]
        stats = [f"{img[mask & (t_lab == TISSUE_LABELS[t])].mean():.3f}±"
                 f"{img[mask & (t_lab == TISSUE_LABELS[t])].std():.3f}" for t in names]
        flips = mask & (t_lab == TISSUE_LABELS["gm"]) & (lab == TISSUE_LABELS["csf"])
        f_t = f"{t_img[flips].mean():.3f}" if flips.any() else "–"
        f_o = f"{img[flips].mean():.3f}" if flips.any() else "–"
        oracle = change(seg(with_histogram(img, t_img, mask), mask)) if name != "target" else "–"
        return (f"| {site} | {name} | " + " | ".join(map(str, vols)) + " | "
                + " | ".join(stats) + f" | {int(flips.sum())} | {f_t} | {f_o} | {change(lab)} "
                + f"| {oracle} |")

    lines.append(row("–", "target", t_img, t_lab))
    fitted = {m: methods.load(os.path.join(args.run, m, "harmonizer"))
              for m in args.methods.split(",")}
    for site in sorted(data.source_sites):
        vol = data.volumes[subject][site]
        for m, h in fitted.items():
            out = h.harmonize(vol)
            lines.append(row(site, m, out, seg(out, vol.mask)))
            print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def with_histogram(image, reference, mask):
    """``image`` with ``reference``'s in-mask histogram: the voxel of rank k inside the mask
    takes the k-th smallest in-mask value of ``reference`` (same mask, so equal counts)."""
    out = np.array(image, np.float32, copy=True)
    order = np.argsort(out[mask], kind="stable")
    values = np.empty(order.size, np.float32)
    values[order] = np.sort(reference[mask])
    out[mask] = values
    return out


if __name__ == "__main__":
    main()
