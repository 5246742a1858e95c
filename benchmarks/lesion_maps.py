"""Does PhyCHarm's generator see white-matter lesions?  Its T1 in each lesion against the truth.

On a benchmark (or ``phycharm``) run whose default data has lesions (``data.lesions`` > 0), the
run's PhyCHarm predicts T1 for every held-out scan; per source site this reports, over the
held-out subjects' lesions, the ground-truth lesion-to-surrounding-WM T1 ratio, the predicted
one, and the relative T1 error in the lesion cores and in their rings of normal-appearing WM
(:func:`phyjax.evaluate.measures.lesion_regions`).  A generator that reads lesions
as WM gives a ratio near 1 and re-synthesizes them as WM in the target contrast, whatever the
harmonizer network does afterwards.

Usage::

    python benchmarks/lesion_maps.py --run runs/les/phy --method phycharm \
        --out benchmarks/results/lesion_maps.md
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np

from phyjax import methods
from phyjax.data import synthetic
from phyjax.data.dataset import load_dataset
from phyjax.data.nifti import load_volume
from phyjax.evaluate.measures import lesion_regions
from phyjax.experiments.common import read_run


def lesion_figure(panels, path: str) -> str:
    """One row per source site: source | harmonized | target | T1 predicted | T1 true, on the
    axial slice through the largest lesion, lesion cores outlined in red on the true T1."""
    from phyjax.evaluate.figures import _plt, _save, _show

    plt = _plt()
    lesion = panels[0]["lesion"]
    z = int(np.argmax((lesion >= 0.5).sum((0, 1))))
    fig, axes = plt.subplots(len(panels), 5, figsize=(10, 2.2 * len(panels)), squeeze=False)
    names = ("source", "harmonized", "target", "T1 predicted (s)", "T1 true (s)")
    for i, p in enumerate(panels):
        m = p["mask"]
        for j, key in enumerate(("source", "harmonized", "truth", "t1", "t1_true")):
            img = p[key]
            vmax = 2.5 if j >= 3 else float(np.percentile(img[m], 99.5))
            _show(axes[i, j], img[..., z] * m[..., z], vmax, names[j] if i == 0 else None)
            if j == 4:   # outlined in one panel only, so the others show the lesion itself
                axes[i, j].contour((lesion[..., z] >= 0.5).T, levels=[0.5], colors="r",
                                   linewidths=0.6, origin="lower")
        axes[i, 0].set_ylabel(p["site"], fontsize=8)
    fig.tight_layout()
    return _save(fig, path, f"held-out subject {panels[0]['subject']}, white-matter lesions "
                            "(outlined in red on the true T1)", dpi=110)


def _row(name: str, r) -> str:
    """A table row: lesion count, mean true / predicted T1 ratio, mean relative errors."""
    return (f"| {name} | {len(r['ratio_true'])} | {np.mean(r['ratio_true']):.3f} | "
            f"{np.mean(r['ratio_pred']):.3f} | {100 * np.mean(r['err_core']):.1f} % | "
            f"{100 * np.mean(r['err_ring']):.1f} % |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--method", default="phycharm",
                    help="benchmark run: the method folder (phycharm | phycharm_unpaired); "
                         "'' for a phycharm run's harmonizer/")
    ap.add_argument("--out", required=True, help="markdown report")
    ap.add_argument("--figure", default="",
                    help="PNG: the first held-out subject's slice through its largest lesion, "
                         "per source site: source, harmonized, target, predicted and true T1")
    args = ap.parse_args(argv)
    cfg, split = read_run(args.run)
    test = split["test"]
    harm = methods.load(os.path.join(args.run, args.method, "harmonizer"))
    data = load_dataset(cfg.data, progress=False, paired=True)
    per_site = defaultdict(lambda: defaultdict(list))
    panels = []
    for subject in test:
        paths = synthetic.lesion_paths(data.root, subject)
        if not os.path.exists(paths["lesion"]):
            continue
        lesion, wm = load_volume(paths["lesion"])[0], load_volume(paths["wm"])[0]
        target = data.volumes[subject][data.target_site]
        # the regions LesionMeasure scores, once per subject (within the target scan's mask)
        regions = lesion_regions(lesion, wm, target.mask,
                                 voxel_mm=float(target.voxel_mm3) ** (1.0 / 3.0))
        for site in data.source_sites:
            v = data.volumes[subject][site]
            out = harm.predict(v)
            t1 = out["t1"]
            if args.figure and (not panels or panels[0]["subject"] == subject):
                panels.append({"subject": subject, "site": site, "source": v.image,
                               "harmonized": out["harmonized"], "lesion": lesion,
                               "truth": target.image,
                               "t1": t1, "t1_true": v.t1, "mask": v.mask})
            for core, ring in regions:
                true_l, true_r = v.t1[core].mean(), v.t1[ring].mean()
                pred_l, pred_r = t1[core].mean(), t1[ring].mean()
                r = per_site[site]
                r["ratio_true"].append(true_l / true_r)
                r["ratio_pred"].append(pred_l / pred_r)
                r["err_core"].append(abs(pred_l - true_l) / true_l)
                r["err_ring"].append(abs(pred_r - true_r) / true_r)
        print(f"subject {subject} done", flush=True)
    if not per_site:
        raise SystemExit(f"{args.run}: no held-out subject has lesion maps (data.lesions = 0?).")
    lines = [f"PhyCHarm's T1 in white-matter lesions (`{args.run}`, held-out subjects; mean "
             "over lesions): lesion / surrounding-WM T1 ratio, true and predicted, and the "
             "relative T1 error in the lesion cores and the rings.", "",
             f"`python benchmarks/lesion_maps.py --run {args.run} --method {args.method} "
             f"--out {args.out}" + (f" --figure {args.figure}" if args.figure else "") + "`",
             "",
             "| source site | lesions | T1 ratio true | T1 ratio predicted | "
             "T1 error lesion | T1 error ring |", "|---|---|---|---|---|---|"]
    everything = defaultdict(list)
    for site in sorted(per_site):
        for k, v in per_site[site].items():
            everything[k] += v
        lines.append(_row(site, per_site[site]))
    lines.append(_row("overall", everything))
    if panels:
        lesion_figure(panels, args.figure)
        lines += ["", f"Figure: `{args.figure}`."]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
