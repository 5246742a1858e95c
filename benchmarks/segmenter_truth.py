"""How right is the benchmark's fixed tissue segmenter, on template heads and on a real head?

The benchmark scores every method by segmenting its output and the held-out subject's re-scan
with one fixed segmenter (DIPY's HMRF, ``phyjax.evaluate.segmentation``) and comparing the two.
This script compares the segmenter's labels of the re-scan (the target protocol, the best image
there is) with the ground truth the default dataset was built from: each voxel's tissue
fractions (recomputed with :func:`phyjax.data.synthetic.dataset_subject`, as the builder did), as the
argmax label (Dice) and as soft volumes (mL).  It says how much of a Dice or volume error is the
segmenter's own, per anatomy.  Beside the benchmark's segmenter (the run's ``segmentation``
settings): the same HMRF with a stronger MRF prior (``--beta``), and an oracle -- thresholds
midway between the true pure-tissue means of the image (voxels > 90 % one tissue) -- which says
whether the image itself can be segmented.

Usage::

    python benchmarks/segmenter_truth.py --run runs/benchmark_v6 --run runs/bench_real \\
        --out benchmarks/results/segmenter_truth.md
"""

from __future__ import annotations

import argparse
import json
import os

import nibabel as nib
import numpy as np

from phyjax.data import synthetic
from phyjax.evaluate.segmentation import TissueSegmenter, rescale_for_segmentation

TISSUES = ("CSF", "GM", "WM")


def truth_fractions(data_cfg: dict, subject: str) -> np.ndarray:
    """Ground-truth tissue fractions ``(3, X, Y, Z)`` of ``subject`` in the default dataset of
    ``data_cfg`` (:func:`phyjax.data.synthetic.dataset_subject`, as the builder made them)."""
    vs = int(data_cfg["voxel_size"])
    template, _, _ = synthetic.load_anatomy(vs)
    real = (synthetic.load_real_anatomy(vs, template.shape[1:], data_cfg["test_anatomy"])
            if data_cfg.get("test_anatomy", "mni152") != "mni152" else None)
    return synthetic.dataset_subject(data_cfg, int(subject) - 1, template, real)[0]


def oracle_thresholds(image, mask, probs, truth) -> np.ndarray:
    """Labels from two thresholds midway between the true pure-tissue means (an oracle)."""
    scaled = rescale_for_segmentation(image, mask)
    pure = probs.max(0) > 0.9 * np.maximum(probs.sum(0), 1e-6)
    mu = [scaled[(truth == k) & pure].mean() for k in (1, 2, 3)]
    labels = 1 + (scaled > (mu[0] + mu[1]) / 2) + (scaled > (mu[1] + mu[2]) / 2)
    return np.where(mask, labels, 0)


def score(run: str, beta: float) -> list[dict]:
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    data_cfg, seg_cfg = config["data"], config["segmentation"]
    with open(os.path.join(run, "split.json")) as f:
        split = json.load(f)
    root = split["dataset"]
    segmenters = {
        f"benchmark HMRF (beta {seg_cfg['beta']:g})": TissueSegmenter(**seg_cfg),
        f"HMRF, beta {beta:g}": TissueSegmenter(**dict(seg_cfg, beta=beta))}
    rows = []
    for subject in split["test"]:
        anat = os.path.join(root, synthetic.DERIVATIVES, f"sub-{subject}", "anat")
        mask = nib.load(os.path.join(anat, f"sub-{subject}_desc-brain_mask.nii.gz")).get_fdata() > 0
        image = nib.load(synthetic.rescan_path(root, subject)).get_fdata()
        voxel_ml = float(data_cfg["voxel_size"]) ** 3 / 1000.0
        probs = truth_fractions(data_cfg, subject) * mask
        truth = np.where(mask, np.argmax(probs, 0) + 1, 0)
        results = {name: seg(image, mask) for name, seg in segmenters.items()}
        results["oracle: midpoint thresholds"] = oracle_thresholds(image, mask, probs, truth)
        for name, labels in results.items():
            row = {"run": run, "segmenter": name, "subject": subject}
            for k, tissue in enumerate(TISSUES, start=1):
                a, b = labels == k, truth == k
                row[f"dice_{tissue}"] = 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
                row[f"true_ml_{tissue}"] = probs[k - 1].sum() * voxel_ml
                row[f"seg_ml_{tissue}"] = a.sum() * voxel_ml
            rows.append(row)
            print(run, subject, name, {k: round(v, 3) for k, v in row.items()
                                       if k.startswith("dice")}, flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="benchmark run folder")
    ap.add_argument("--out", default="benchmarks/results/segmenter_truth.md")
    ap.add_argument("--beta", type=float, default=0.5, help="the stronger MRF prior tried")
    args = ap.parse_args(argv)
    title = ("# The fixed segmenter on each held-out subject's re-scan vs the ground truth")
    intro = ("Dice against the argmax of the true tissue fractions; volumes: the segmenter's "
             "label count vs the true soft volume (mL), signed error in %; mean over the "
             "held-out subjects.")
    header = ("| run | segmenter | Dice CSF | Dice GM | Dice WM | CSF mL true → seg | "
              "GM mL true → seg | WM mL true → seg |")
    lines = [title, "", intro, "", header, "|---|---|---|---|---|---|---|---|"]
    for run in args.run:
        rows = score(run, args.beta)
        for name in dict.fromkeys(r["segmenter"] for r in rows):
            mine = [r for r in rows if r["segmenter"] == name]
            mean = {k: float(np.mean([r[k] for r in mine])) for k in mine[0]
                    if k not in ("run", "segmenter", "subject")}
            vols = " | ".join(
                f"{mean[f'true_ml_{t}']:.0f} → {mean[f'seg_ml_{t}']:.0f} "
                f"({100 * (mean[f'seg_ml_{t}'] / mean[f'true_ml_{t}'] - 1):+.0f} %)"
                for t in TISSUES)
            lines.append(f"| `{run}` | {name} | " + " | ".join(
                f"{mean[f'dice_{t}']:.3f}" for t in TISSUES) + f" | {vols} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
