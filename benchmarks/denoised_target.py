"""Is a harmonizer's systematic tissue-volume bias the fixed segmenter's response to a cleaner image?

A network's output is smoother than a noisy target scan.  If the benchmark's fixed segmenter
(Atropos, :func:`real_philips.benchmark_segmenter`) itself labelled more WM on a denoised image,
an output's WM over-count would say nothing about its contrast.  This segments each test head's
*target* scan as it is and denoised -- a Gaussian of ``--sigma-vox`` voxels and scikit-image's
non-local means at its own noise estimate (Buades et al., CVPR 2005) -- and reports each
tissue's volume change against the scan as it is.  No network is involved.

Usage::

    python benchmarks/denoised_target.py --run runs/large34/phy \
        --out benchmarks/results/denoised_target.md
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means, estimate_sigma

from phyjax.data.dataset import load_dataset
from phyjax.evaluate.overlap import TISSUE_LABELS, tissue_volumes
from phyjax.experiments.common import read_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_philips import benchmark_segmenter


def denoised(image: np.ndarray, mask: np.ndarray, sigma_vox: float) -> dict[str, np.ndarray]:
    """``{name: image}``: as it is, Gaussian-smoothed, non-local-means denoised (inside ``mask``)."""
    noise = float(np.mean(estimate_sigma(image)))
    nlm = denoise_nl_means(image, h=0.8 * noise, sigma=noise, patch_size=3, patch_distance=3,
                           fast_mode=True)
    return {"as scanned": image,
            f"Gaussian {sigma_vox:g} voxel": np.where(mask, ndimage.gaussian_filter(image,
                                                                                    sigma_vox), 0),
            "non-local means": np.where(mask, nlm, 0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder (its data and split)")
    ap.add_argument("--sigma-vox", type=float, default=0.5)
    ap.add_argument("--out", required=True, help="markdown report")
    args = ap.parse_args(argv)
    cfg, split = read_run(args.run)
    subjects = split["test"]
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = benchmark_segmenter()
    lines = ["Fixed segmenter on denoised target scans: `python benchmarks/denoised_target.py "
             + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             "Volume change (%) against the scan as it is; no network involved.", "",
             "| subject | image | CSF | GM | WM |", "|---|---|---|---|---|"]
    for subject in subjects:
        tgt = data.volumes[subject][data.target_site]
        mask = tgt.mask
        vols = {name: tissue_volumes(seg(image, mask)[mask], tgt.voxel_mm3)
                for name, image in denoised(np.where(mask, tgt.image, 0), mask,
                                            args.sigma_vox).items()}
        ref = vols["as scanned"]
        for name, vol in vols.items():
            lines.append(f"| {subject} | {name} | " + " | ".join(
                f"{100 * (vol[t] - ref[t]) / ref[t]:+.1f}" for t in TISSUE_LABELS) + " |")
            print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
