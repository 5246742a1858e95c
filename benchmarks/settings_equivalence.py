"""Are two settings of one network equivalent on the validation images? (an equivalence rule,
docs/phycharm_ablation.md item 51: a change that should not move the outputs' scores.)

Reads ``refine_sweep.py`` CSVs holding both settings for the same images, one ``--group
NAME=CSV[,CSV]`` per network (e.g. the train and test halves of its validation split); pairs
the two settings' rows image by image and takes their means as ``validation_rule.py`` does
(its ``paired_images`` and ``summary``: an error if the settings cover different images), and
per group reports the mean difference B − A overall and per source site of SSIM, PSNR, the
three Dice and the three absolute volume errors (``adv_*``, percentage points), and whether
each is within its tolerance.  Exit status 0 iff every difference is.

Usage::

    python benchmarks/settings_equivalence.py --a step1 --b step2 \
        --group s0=runs/val/step_s0_train.csv,runs/val/step_s0_test.csv \
        --group s1=runs/val/step_s1_train.csv,runs/val/step_s1_test.csv \
        [--tol-psnr 0.02 --tol-ssim 0.0005 --tol-dice 0.001 --tol-dv 0.1 \
         --tol-site-psnr 0.05 --tol-site-dice 0.002]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from validation_rule import TISSUES, paired_images, summary  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--group", action="append", required=True, help="NAME=CSV[,CSV...]")
    ap.add_argument("--tol-psnr", type=float, default=0.02)
    ap.add_argument("--tol-ssim", type=float, default=0.0005)
    ap.add_argument("--tol-dice", type=float, default=0.001)
    ap.add_argument("--tol-dv", type=float, default=0.1)
    ap.add_argument("--tol-site-psnr", type=float, default=0.05)
    ap.add_argument("--tol-site-dice", type=float, default=0.002)
    args = ap.parse_args(argv)
    overall_tol = {"ssim": args.tol_ssim, "psnr": args.tol_psnr,
                   **{f"dice_{t}": args.tol_dice for t in TISSUES},
                   **{f"adv_{t}": args.tol_dv for t in TISSUES}}
    site_tol = {"psnr": args.tol_site_psnr, **{f"dice_{t}": args.tol_site_dice for t in TISSUES}}
    ok = True
    print("| group | site | images | " + " | ".join(f"Δ {k}" for k in overall_tol) + " |")
    print("|---" * (3 + len(overall_tol)) + "|")
    for spec in args.group:
        name, _, paths = spec.partition("=")
        # both settings' rows of the same images (ValueError otherwise)
        images = paired_images([f"{p}:{args.a}" for p in paths.split(",")],
                               [f"{p}:{args.b}" for p in paths.split(",")])
        for site in [None] + sorted({key[1] for key, _, _ in images}):
            sel = [(ra, rb) for key, ra, rb in images if site in (None, key[1])]
            a, b = summary([ra for ra, _ in sel]), summary([rb for _, rb in sel])
            tol = overall_tol if site is None else site_tol
            cells = []
            for k in overall_tol:
                d = b[k] - a[k]
                bad = k in tol and abs(d) > tol[k]
                ok &= not bad
                cells.append(f"{d:+.4f}" + (" **out**" if bad else ""))
            print(f"| {name} | {site or 'overall'} | {len(sel)} | " + " | ".join(cells) + " |")
    print(f"\nequivalent within the tolerances: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
