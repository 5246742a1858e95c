"""Can a head's own tissue T1s be read off its mean-T1 map?  (A negative finding.)

The two-tissue re-synthesis (``phyjax.physics.partial_volume``) reads each voxel's mean T1 as a
mixture of two tissues whose T1s come from the tissue table, while every head of the embedded
data has its own (the table times a per-head factor, 5 % SD, ``synthetic.make_subject``).  This
script tries the obvious estimator of a head's own CSF, GM and WM T1 from its *exact* mean-T1
map -- each tissue's mode, by a mean shift started at the table value with narrowing windows
(Comaniciu & Meer, IEEE TPAMI 24:603, 2002) -- and compares it with the head's true values,
over the whole brain and slice by slice (as a 2-D network would see it).

Usage::

    python benchmarks/tissue_anchors.py [--out benchmarks/results/tissue_anchors.md]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from phyjax.config_files import load_config
from phyjax.data import synthetic
from phyjax.physics.tissues import TISSUES, tissue_array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mode_anchors(t1, mask, table, windows=(0.15, 0.10, 0.06, 0.06), min_voxels=20):
    """Mean-shift mode of ``t1`` (s) in ``mask`` near each of ``table`` ``(3,)`` (s)."""
    values = t1[mask]
    anchors = np.asarray(table, float).copy()
    for width in windows:
        for k in range(len(anchors)):
            near = values[np.abs(values / anchors[k] - 1.0) < width]
            if near.size >= min_voxels:
                anchors[k] = near.mean()
    return anchors


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "tissue_anchors.md"))
    args = ap.parse_args(argv)
    d = load_config("benchmark").data
    template = synthetic.load_anatomy(int(d.voxel_size))[0]
    lines = ["Own tissue T1s estimated from each held-out head's exact mean-T1 map at 3 T "
             "(`python benchmarks/tissue_anchors.py`), as a ratio to the head's true value "
             "(1.000 = exact); the table's own error is the per-head factor (true / table).",
             "", "| subject | tissue | true / table | whole brain / true "
             "| per slice / true: median | 10th pct | 90th pct |", "|---|---|---|---|---|---|---|"]
    for label in synthetic.held_out_labels(d):
        probs, factors, texture = synthetic.dataset_subject(d, int(label) - 1, template, None)
        mask = probs.sum(0) > 0.5
        table = tissue_array(3.0)[:, 0]
        maps = synthetic.quantitative_maps(probs, factors, texture, 3.0, "signal")
        true = table * factors[:, 0]
        whole = mode_anchors(maps["t1"], mask, table) / true
        per_slice = np.array([mode_anchors(maps["t1"][..., z], mask[..., z], table) / true
                              for z in range(mask.shape[-1]) if mask[..., z].sum() > 500])
        for k, tissue in enumerate(TISSUES):
            q = np.percentile(per_slice[:, k], [50, 10, 90])
            lines.append(f"| {label} | {tissue} | {factors[k, 0]:.3f} | {whole[k]:.3f} | "
                         + " | ".join(f"{v:.3f}" for v in q) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
