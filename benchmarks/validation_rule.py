"""Pooled validation comparison of two PhyCHarm settings, and the decision rule the issue-14
experiments declare before their runs (``runs/<experiment>/RULE.md``).

Reads ``refine_sweep.py`` CSVs (one row per subject, site and setting) and pairs the baseline's
rows with the candidate's on the same (subject, site) of the same validation heads, seed by
seed (a seed is a ``CSV:setting`` for each side, given in the same order).  Prints the pooled
means of SSIM, PSNR, CSF/GM/WM Dice and absolute volume error, in how many images GM Dice rose,
and whether the rule holds: mean GM Dice rises AND mean PSNR falls by no more than
``--max-psnr-drop`` dB AND the mean of the CSF/GM/WM |dV| rises by no more than
``--max-dv-rise`` percentage points.

Usage::

    python benchmarks/validation_rule.py \
        --baseline benchmarks/results/ensemble_validation_train.csv:s0 \
        --baseline benchmarks/results/ensemble_validation_test.csv:s0 \
        --candidate benchmarks/results/nophys_s0_validation_train.csv:nophys \
        --candidate benchmarks/results/nophys_s0_validation_test.csv:nophys
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from phyjax.evaluate.overlap import TISSUES

COLUMNS = ("ssim", "psnr", "dice_csf", "dice_gm", "dice_wm")


def read(spec: str) -> dict[tuple[str, str], dict[str, float]]:
    """``CSV:setting`` -> {(subject, site): row} of that setting's rows (ValueError if none)."""
    path, _, setting = spec.rpartition(":")
    if not path:
        raise ValueError(f"{spec!r}: expected CSV:setting")
    with open(path, newline="") as f:
        rows = {(r["subject"], r["site"]): {k: float(v) for k, v in r.items()
                                            if k not in ("subject", "site", "setting") and v}
                for r in csv.DictReader(f) if r["setting"] == setting}
    if not rows:
        raise ValueError(f"{path}: no rows of setting {setting!r}")
    return rows


def paired_images(baseline: list[str], candidate: list[str]):
    """``[((subject, site), baseline row, candidate row)]``: both sides on the same (spec index,
    subject, site); ValueError if the image sets differ."""
    if len(baseline) != len(candidate):
        raise ValueError("give as many --candidate as --baseline specs (one pair per seed/split)")
    out = []
    for b_spec, c_spec in zip(baseline, candidate):
        b, c = read(b_spec), read(c_spec)
        if set(b) != set(c):
            raise ValueError(f"{b_spec} and {c_spec} hold different images: "
                             f"{sorted(set(b) ^ set(c))[:5]}")
        out += [(key, b[key], c[key]) for key in sorted(b)]
    return out


def paired(baseline: list[str], candidate: list[str]):
    """Rows of both sides on the same (spec index, subject, site) (:func:`paired_images`)."""
    images = paired_images(baseline, candidate)
    return [b for _, b, _ in images], [c for _, _, c in images]


def summary(rows) -> dict[str, float]:
    out = {k: float(np.mean([r[k] for r in rows])) for k in COLUMNS}
    for t in TISSUES:
        out[f"adv_{t}"] = float(np.mean([abs(r[f"dv_{t}"]) for r in rows]))
    out["adv_mean"] = float(np.mean([out[f"adv_{t}"] for t in TISSUES]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", action="append", required=True, help="CSV:setting; repeatable")
    ap.add_argument("--candidate", action="append", required=True, help="CSV:setting; repeatable")
    ap.add_argument("--max-psnr-drop", type=float, default=0.3)
    ap.add_argument("--max-dv-rise", type=float, default=0.2)
    args = ap.parse_args(argv)
    base, cand = paired(args.baseline, args.candidate)
    b, c = summary(base), summary(cand)
    up = sum(y["dice_gm"] > x["dice_gm"] for x, y in zip(base, cand))
    print(f"{len(base)} images")
    for k in COLUMNS + tuple(f"adv_{t}" for t in TISSUES) + ("adv_mean",):
        print(f"  {k:9s} {b[k]:8.4f} -> {c[k]:8.4f}  ({c[k] - b[k]:+.4f})")
    print(f"  GM Dice up in {up} of {len(base)} images")
    checks = {"GM Dice rises": c["dice_gm"] > b["dice_gm"],
              f"PSNR falls <= {args.max_psnr_drop} dB": b["psnr"] - c["psnr"] <= args.max_psnr_drop,
              f"mean |dV| rises <= {args.max_dv_rise} pp":
                  c["adv_mean"] - b["adv_mean"] <= args.max_dv_rise}
    for name, ok in checks.items():
        print(f"  {'pass' if ok else 'FAIL'}: {name}")
    print("rule:", "passes" if all(checks.values()) else "fails")


if __name__ == "__main__":
    main()
