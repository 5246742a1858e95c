"""How much of the image the U-Net sees, and whether the physics branch then matters.

Compares finished ``benchmarks/physics_seg.py`` runs that differ only in ``model.patch`` (whole
slices, or windows of P x P voxels for training and sliding-window inference) on the same seeds
and held-out subjects: per family, tissue and method the mean over seeds of the volume CoV
across protocols, and, paired by held-out subject (seed x subject), (a) the physics U-Net
against the no-branch U-Net of the same run and (b) each U-Net against itself trained on whole
slices (Wilcoxon signed-rank, two-sided).  Runs on the same seed image the same held-out
subjects with the same protocols (the evaluation does not depend on the training); the
script checks that both runs list the same subjects and protocol counts.

Usage::

    python benchmarks/physics_seg_window.py --seeds 0,1,2,3 \\
        --run whole=runs/ps_bench12 --run 32=runs/ps_patch32 --run 16=runs/ps_patch16 \\
        --out benchmarks/results/physics_seg_window

Writes ``<out>.md`` and ``<out>.csv``.  A seed missing from a run is left out of that run's
rows (and of the pairs that need it), and the rows say how many pairs they hold.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np
from scipy.stats import wilcoxon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.physics_seg import FAMILIES, paired, read_rows

TISSUES = ("gm", "wm")
METHODS = {"physics": "U-Net + physics branch", "no_branch": "U-Net, no branch"}


def read_run(root: str, seeds: list[int]) -> dict[int, dict]:
    """``{seed: {(family, method, subject): row}}`` of ``<root>/seed<s>/cov_per_subject.csv``
    (:func:`benchmarks.physics_seg.read_rows`) for the seeds that have one."""
    return {s: read_rows(os.path.join(root, f"seed{s}"), "cov_per_subject.csv",
                         ("family", "method", "subject"))
            for s in seeds if os.path.exists(os.path.join(root, f"seed{s}",
                                                          "cov_per_subject.csv"))}


def across_runs(a: dict, b: dict, method: str, family: str, tissue: str):
    """``(values a, values b)``: the CoV of ``method`` in two runs (:func:`read_run`) on the
    subjects both hold (same seed and subject).  Raises ValueError when a shared subject was
    imaged with another number of protocols."""
    xa, xb = [], []
    for s, rows in sorted(a.items()):
        for key, row in sorted(rows.items()):
            other = b.get(s, {}).get(key)
            if key[:2] != (family, method) or other is None:
                continue
            if row["n_protocols"] != other["n_protocols"]:
                raise ValueError(f"seed {s} {key[2]} {family}: {row['n_protocols']} vs "
                                 f"{other['n_protocols']} protocols -- not the same "
                                 "evaluation.")
            xa.append(float(row[f"cov_{tissue}"]))
            xb.append(float(other[f"cov_{tissue}"]))
    return np.asarray(xa), np.asarray(xb)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--run", action="append", required=True,
                    help="label=root; the first is the whole-slice reference")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = dict(r.split("=", 1) for r in args.run)
    data = {label: read_run(root, seeds) for label, root in runs.items()}
    ref = next(iter(runs))

    rows = []
    for label in runs:
        # branch vs no branch within the run: benchmarks/physics_seg.py's paired comparison
        within = {(p["family"], p["tissue"].lower()): p for p in paired(data[label])
                  if p["method"] == "physics"}
        for family in FAMILIES:
            for method in METHODS:
                row = {"run": label, "family": family, "method": method}
                mine = [r for rows_s in data[label].values()
                        for (fam, m, _), r in rows_s.items() if m == method and fam == family]
                for tissue in TISSUES:
                    vals = [float(r[f"cov_{tissue}"]) for r in mine]
                    row[f"cov_{tissue}"] = float(np.mean(vals)) if vals else float("nan")
                    dice = [float(r[f"dice_{tissue}"]) for r in mine]
                    row[f"dice_{tissue}"] = float(np.mean(dice)) if dice else float("nan")
                    row["n"] = len(vals)
                    pair = within.get((family, tissue), {})
                    row[f"branch_lower_{tissue}"] = (pair.get("physics_lower", 0)
                                                     if method == "physics" else 0)
                    row[f"p_branch_{tissue}"] = (pair.get("wilcoxon_p", float("nan"))
                                                 if method == "physics" else float("nan"))
                    w, whole = across_runs(data[label], data[ref], method, family, tissue)
                    row[f"ratio_to_{ref}_{tissue}"] = (float(np.median(w / whole)) if len(w)
                                                       else float("nan"))
                    row[f"p_vs_{ref}_{tissue}"] = (float(wilcoxon(w, whole).pvalue)
                                                   if label != ref and len(w) > 1
                                                   else float("nan"))
                rows.append(row)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def fmt_p(p):
        return "–" if np.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")

    lines = ["# Physics-aware segmentation: how much of the slice the U-Net sees", "",
             f"Seeds {args.seeds}; runs: " + ", ".join(f"`{k}` = `{v}`" for k, v in runs.items())
             + ". CoV: mean over seeds and held-out subjects of each subject's volume CoV "
             "across the family's protocols; Dice: mean over subjects and protocols. Branch vs "
             f"no branch: paired by subject within a run. Against `{ref}`: the same U-Net's subject CoV, median ratio and paired "
             "p (Wilcoxon signed-rank, two-sided).", "",
             ("| run | family | method | subjects | CoV GM | CoV WM | Dice GM / WM | branch lower "
              f"GM / WM | p branch vs no branch GM / WM | ratio to {ref} GM / WM | p vs {ref} "
              "GM / WM |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        is_branch = r["method"] == "physics"
        lower = (f"{r['branch_lower_gm']} / {r['branch_lower_wm']}" if is_branch else "")
        pb = (f"{fmt_p(r['p_branch_gm'])} / {fmt_p(r['p_branch_wm'])}" if is_branch else "")
        ratio = ("" if r["run"] == ref else
                 f"{r[f'ratio_to_{ref}_gm']:.2f} / {r[f'ratio_to_{ref}_wm']:.2f}")
        pw = ("" if r["run"] == ref else
              f"{fmt_p(r[f'p_vs_{ref}_gm'])} / {fmt_p(r[f'p_vs_{ref}_wm'])}")
        lines.append(f"| {r['run']} | {r['family']} | {METHODS[r['method']]} | {r['n']} | "
                     f"{r['cov_gm']:.4f} | {r['cov_wm']:.4f} | {r['dice_gm']:.3f} / {r['dice_wm']:.3f} | {lower} | {pb} | {ratio} | {pw} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
