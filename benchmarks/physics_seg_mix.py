"""The physics and no-branch U-Nets averaged: their two-network mixture's volume CoV.

Soft volumes (the sum of each class's probabilities, ``phyjax.segment.evaluate.volumes_ml``)
are linear in the probabilities, so the volume of the mean of two U-Nets' probabilities is the
mean of their volumes: this script needs no inference.  For every run folder given (a
multi-seed ``benchmarks/physics_seg.py`` root with ``seed<s>/evaluation.csv`` holding both the
``physics`` and the ``no_branch`` rows), it forms per subject x protocol x draw the mixture's
GM / WM volume, its per-subject CoV across each family's protocols (the noise draws of a
protocol averaged first, as ``phyjax.segment.evaluate`` does), and compares it, paired by
subject, with each single U-Net (how many subjects lower, two-sided Wilcoxon signed-rank p).
It is what motivated ``train.branch_dropout`` (one U-Net that is both;
docs/physics_seg_experiments.md).

Usage::

    python benchmarks/physics_seg_mix.py --run runs/ps_bench12 --run runs/ps_ntrain16 \\
        --out benchmarks/results/physics_seg_mix.md
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings

import numpy as np
from scipy.stats import wilcoxon

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from physics_seg import evaluation_rows

from phyjax.segment.evaluate import cov_table
from phyjax.segment.gold import CLASSES

ARMS = ("physics", "no_branch", "mix")


def subject_covs(rows: list[dict]) -> dict:
    """``{(family, subject, arm): (CoV GM, CoV WM)}`` of one seed's evaluation rows, the arm
    ``mix`` being the mean of the ``physics`` and ``no_branch`` volumes; the CoVs are
    :func:`phyjax.segment.evaluate.cov_table`'s (noise draws of a protocol averaged first)."""
    pairs: dict = {}
    for r in rows:
        if r["method"] in ARMS[:2]:
            key = (r["family"], r["subject"], r["protocol"], r["draw"])
            pairs.setdefault(key, {})[r["method"]] = r
    table = []
    for (family, subject, protocol, _), pair in pairs.items():
        if set(pair) != set(ARMS[:2]):
            raise SystemExit(f"subject {subject}, {family} protocol {protocol}: needs both the "
                             "physics and the no-branch U-Net's rows.")
        for arm in ARMS:
            src = [pair[m] for m in (ARMS[:2] if arm == "mix" else (arm,))]
            table.append({"method": arm, "family": family, "subject": subject,
                          "protocol": protocol,
                          **{f"vol_{t}": float(np.mean([float(r[f"vol_{t}"]) for r in src]))
                             for t in ("gm", "wm")},
                          **{f"dice_{t}": np.nan for t in CLASSES}})   # Dice is not linear
    with warnings.catch_warnings():   # the all-NaN Dice means, not used here
        warnings.simplefilter("ignore", RuntimeWarning)
        covs = cov_table(table)
    return {(r["family"], r["subject"], r["method"]): (r["cov_gm"], r["cov_wm"]) for r in covs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="multi-seed run root")
    ap.add_argument("--out", required=True, help="markdown report")
    args = ap.parse_args(argv)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [("Two-network mixture of the physics and no-branch U-Nets (mean soft volumes): "
              f"`python benchmarks/physics_seg_mix.py {command}`"), "",
             ("| run | family | subjects | CoV GM / WM: branch | no branch | mixture | mixture "
              "lower than no branch (GM, WM) | paired p vs no branch | mixture lower than "
              "branch | paired p vs branch |"), "|---|" + "---|" * 9]
    for run in args.run:
        covs: dict = {}
        for path in sorted(glob.glob(os.path.join(run, "seed*", "evaluation.csv"))):
            seed = os.path.basename(os.path.dirname(path))
            for (family, subject, arm), c in subject_covs(
                    evaluation_rows(os.path.dirname(path))).items():
                covs.setdefault((family, arm), {})[(seed, subject)] = c
        for family in ("mprage", "spgr"):
            keys = sorted(covs[(family, "mix")])
            a = {arm: np.array([covs[(family, arm)][k] for k in keys]) for arm in ARMS}
            cells = [f"{a[arm][:, 0].mean():.4f} / {a[arm][:, 1].mean():.4f}" for arm in ARMS]
            out = []
            for ref in ("no_branch", "physics"):
                lower = [int((a["mix"][:, i] < a[ref][:, i]).sum()) for i in range(2)]
                p = [wilcoxon(a["mix"][:, i], a[ref][:, i]).pvalue for i in range(2)]
                out += [f"{lower[0]}, {lower[1]}", f"{p[0]:.3g}, {p[1]:.3g}"]
            lines.append(f"| `{run}` | {family} | {len(keys)} | " + " | ".join(cells + out)
                         + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
