"""How right is the benchmark's fixed tissue segmenter, on template heads and on a real head?

The benchmark scores every method by segmenting its output and the held-out subject's re-scan
with one fixed segmenter (``phyjax.evaluate.segmentation``: ANTs Atropos, before 2026-11-30
DIPY's HMRF) and comparing the two.
This script compares the segmenter's labels of the re-scan (the target protocol, the best image
there is) with the ground truth the default dataset was built from: each voxel's tissue
fractions (recomputed with :func:`phyjax.data.synthetic.dataset_subject`, as the builder did), as the
argmax label (Dice) and as soft volumes (mL).  It says how much of a Dice or volume error is the
segmenter's own, per anatomy.  Segmenters: DIPY's HMRF with the run's settings (or the default
config's, for a run made with Atropos) and with a stronger MRF prior (``--beta``), ANTs Atropos
with the default config's settings, and an oracle -- thresholds midway between the true
pure-tissue means of the image (voxels > 90 % one tissue) -- which says whether the image itself
can be segmented.  With ``--real-philips``, the same segmenters (not the oracle) on the real 1 mm
Philips T1w against the FSL FAST maps shipped with it (argmax of CSF = 1 - GM - WM, GM, WM inside
the largest connected component of ``bet > 0``; the script ``benchmarks/physics_seg_real.py``'s
mask).

Usage::

    python benchmarks/segmenter_truth.py --run runs/benchmark_v6 --run runs/bench_real \\
        --real-philips ../shared/data/real_subject_philips \\
        --out benchmarks/results/segmenter_truth.md
"""

from __future__ import annotations

import argparse
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

from phyjax.config_files import load_config
from phyjax.data import synthetic
from phyjax.evaluate.segmentation import (
    AtroposSegmenter,
    TissueSegmenter,
    make_segmenter,
    rescale_for_segmentation,
)
from phyjax.experiments.common import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def segmenters(beta: float) -> dict:
    """The segmenters compared: the default config's HMRF and Atropos, and HMRF at ``beta``."""
    seg = load_config("benchmark").segmentation
    hmrf = TissueSegmenter(beta=seg.beta, max_iter=seg.max_iter, tolerance=seg.tolerance)
    seg.method = "atropos"
    atropos = make_segmenter(seg)
    assert isinstance(atropos, AtroposSegmenter)
    return {f"HMRF (DIPY, beta {hmrf.beta:g})": hmrf,
            f"HMRF (DIPY, beta {beta:g})": TissueSegmenter(beta=beta, max_iter=hmrf.max_iter,
                                                           tolerance=hmrf.tolerance),
            f"Atropos (ANTs, MRF {atropos.mrf_smoothing:g}, {atropos.iterations} iterations)":
                atropos}


def score(run: str, beta: float) -> list[dict]:
    config, split = read_run(run)
    config = config.to_dict()
    data_cfg = config["data"]
    root = split["dataset"]
    rows = []
    for subject in split["test"]:
        anat = os.path.join(root, synthetic.DERIVATIVES, f"sub-{subject}", "anat")
        mask = nib.load(os.path.join(anat, f"sub-{subject}_desc-brain_mask.nii.gz")).get_fdata() > 0
        image = nib.load(synthetic.rescan_path(root, subject)).get_fdata()
        voxel_ml = float(data_cfg["voxel_size"]) ** 3 / 1000.0
        probs = truth_fractions(data_cfg, subject) * mask
        truth = np.where(mask, np.argmax(probs, 0) + 1, 0)
        results = {name: seg(image, mask) for name, seg in segmenters(beta).items()}
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


def score_real(data: str, beta: float) -> list[dict]:
    """Each segmenter on the real 1 mm Philips T1w vs its FSL FAST maps (argmax labels)."""
    img = nib.load(os.path.join(data, "bet.nii.gz"))
    image = img.get_fdata()
    gm = nib.load(os.path.join(data, "pve_1.nii.gz")).get_fdata()
    wm = nib.load(os.path.join(data, "pve_2.nii.gz")).get_fdata()
    lab, _ = ndimage.label(image > 0)  # the largest component: drops the two added spheres
    mask = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    probs = np.stack([np.clip(1.0 - gm - wm, 0, 1), gm, wm]) * mask
    truth = np.where(mask, np.argmax(probs, 0) + 1, 0)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    rows = []
    for name, seg in segmenters(beta).items():
        labels = seg(image, mask)
        row = {"run": "real Philips T1w vs FAST", "segmenter": name, "subject": "real"}
        for k, tissue in enumerate(TISSUES, start=1):
            a, b = labels == k, truth == k
            row[f"dice_{tissue}"] = 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
            row[f"true_ml_{tissue}"] = probs[k - 1].sum() * voxel_ml
            row[f"seg_ml_{tissue}"] = a.sum() * voxel_ml
        rows.append(row)
        print("real", name, {k: round(v, 3) for k, v in row.items() if k.startswith("dice")},
              flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="benchmark run folder")
    ap.add_argument("--out", default="benchmarks/results/segmenter_truth.md")
    ap.add_argument("--beta", type=float, default=0.5, help="the stronger MRF prior tried")
    ap.add_argument("--real-philips", default="",
                    help="folder of the real Philips T1w with its FAST maps (bet.nii.gz, pve_1, "
                         "pve_2); '' skips it")
    args = ap.parse_args(argv)
    title = ("# The fixed segmenter on each held-out subject's re-scan vs the ground truth")
    intro = ("Dice against the argmax of the true tissue fractions (real scan: of FSL FAST's "
             "partial-volume maps); volumes: the segmenter's label count vs the true (FAST's) "
             "soft volume (mL), signed error in %; mean over the held-out subjects.")
    header = ("| run | segmenter | Dice CSF | Dice GM | Dice WM | CSF mL true → seg | "
              "GM mL true → seg | WM mL true → seg |")
    lines = [title, "", intro, "", header, "|---|---|---|---|---|---|---|---|"]
    scored = [score(run, args.beta) for run in args.run]
    if args.real_philips:
        scored.append(score_real(args.real_philips, args.beta))
    for rows in scored:
        run = rows[0]["run"]
        for name in dict.fromkeys(r["segmenter"] for r in rows):
            mine = [r for r in rows if r["segmenter"] == name]
            mean = {k: float(np.mean([r[k] for r in mine])) for k in mine[0]
                    if k not in ("run", "segmenter", "subject")}
            vols = " | ".join(
                f"{mean[f'true_ml_{t}']:.0f} → {mean[f'seg_ml_{t}']:.0f} "
                f"({100 * (mean[f'seg_ml_{t}'] / mean[f'true_ml_{t}'] - 1):+.0f} %)"
                for t in TISSUES)
            lines.append(f"| {run} | {name} | " + " | ".join(
                f"{mean[f'dice_{t}']:.3f}" for t in TISSUES) + f" | {vols} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
