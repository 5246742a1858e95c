"""Are two settings of one network equivalent on the validation images? (an equivalence rule,
docs/phycharm_ablation.md item 51: a change that should not move the outputs' scores.)

Reads ``refine_sweep.py`` CSVs holding both settings for the same images (``--csv``, one or
more: e.g. the train and test halves of a validation split; several networks' CSVs are kept
apart by ``--group NAME=CSV[,CSV]``), and per group reports the mean difference B − A overall
and per source site of SSIM, PSNR, the three Dice and the three absolute volume errors, and
whether each is within its tolerance.  Exit status 0 iff every difference is.

Usage::

    python benchmarks/settings_equivalence.py --a step1 --b step2 \
        --group s0=runs/val/step_s0_train.csv,runs/val/step_s0_test.csv \
        --group s1=runs/val/step_s1_train.csv,runs/val/step_s1_test.csv \
        [--tol-psnr 0.02 --tol-ssim 0.0005 --tol-dice 0.001 --tol-dv 0.1 \
         --tol-site-psnr 0.05 --tol-site-dice 0.002]
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

TISSUES = ("csf", "gm", "wm")


def read(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def scores(rows: list[dict], setting: str, site: str | None) -> dict[str, float]:
    """Mean SSIM, PSNR, Dice and |ΔV| (%) of ``setting``'s rows (of ``site``; None: all)."""
    sel = [r for r in rows if r["setting"] == setting and site in (None, r["site"])]
    if not sel:
        raise SystemExit(f"no rows of setting {setting!r}" + (f" at {site}" if site else ""))
    out = {k: float(np.mean([float(r[k]) for r in sel])) for k in ("ssim", "psnr")}
    for t in TISSUES:
        out[f"dice_{t}"] = float(np.mean([float(r[f"dice_{t}"]) for r in sel]))
        out[f"absdv_{t}"] = float(np.mean([abs(float(r[f"dv_{t}"])) for r in sel]))
    return out


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
                   **{f"absdv_{t}": args.tol_dv for t in TISSUES}}
    site_tol = {"psnr": args.tol_site_psnr, **{f"dice_{t}": args.tol_site_dice for t in TISSUES}}
    ok = True
    print("| group | site | images | " + " | ".join(f"Δ {k}" for k in overall_tol) + " |")
    print("|---" * (3 + len(overall_tol)) + "|")
    for spec in args.group:
        name, _, paths = spec.partition("=")
        rows = read(paths.split(","))
        sites = sorted({r["site"] for r in rows})
        for site in [None] + sites:
            a, b = scores(rows, args.a, site), scores(rows, args.b, site)
            tol = overall_tol if site is None else site_tol
            cells = []
            for k in overall_tol:
                d = b[k] - a[k]
                bad = k in tol and abs(d) > tol[k]
                ok &= not bad
                cells.append(f"{d:+.4f}" + (" **out**" if bad else ""))
            n = sum(r["setting"] == args.a and site in (None, r["site"]) for r in rows)
            print(f"| {name} | {site or 'overall'} | {n} | " + " | ".join(cells) + " |")
    print(f"\nequivalent within the tolerances: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
