"""What two training seeds can resolve on the validation heads (docs/phycharm_ablation.md,
"What two seeds can resolve").

Every ablation arm was trained twice, seeds 0 and 1, and scored on the same 60 validation
images each (``benchmarks/results/<name>_s{0,1}_validation_{train,test}.csv``).  Model: arm
``c``'s pooled quantity at seed ``s`` is ``mu_c + a_s + e_cs`` -- ``a_s`` what a seed's draws do
to every arm alike (the arms share them: initialization aside, the batch order), ``e_cs`` the
arm-and-seed noise of sd ``sigma``.  Then ``d_c = x_c0 - x_c1 = (a_0 - a_1) + e_c0 - e_c1``, so
over arms ``mean(d)`` estimates the shared seed offset and ``sd(d) / sqrt(2)`` estimates
``sigma``; the rule's effect (mean over both seeds of candidate minus default, both arms at
the same seeds) has standard error ``sigma``: the shared offset cancels, ``e`` does not.

usage: python benchmarks/seed_noise.py [--results benchmarks/results] [--arms a,b,c]
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import pandas as pd

#: the arms of the current training setup (800 steps of 8 slices, gated base with the detail
#: gate: items 48 onward)
RECENT = ("detail", "def51", "st1000", "ema", "nohist", "smooth10", "nh1000", "mix10", "calh2",
          "sim4", "wide10")


def pooled(frame: pd.DataFrame) -> dict:
    """The rule's pooled quantities of one network's validation images."""
    adv = frame[["dv_csf", "dv_gm", "dv_wm"]].abs().mean().mean()
    return {"psnr": frame.psnr.mean(), "dice_gm": frame.dice_gm.mean(), "adv_mean": adv}


def seed_differences(results: str, arms=None) -> pd.DataFrame:
    """Seed 0 minus seed 1 of each arm with both seeds' train and test halves (60 images each)."""
    suffix = "_s0_validation_train.csv"
    names = sorted(os.path.basename(f)[:-len(suffix)]
                   for f in glob.glob(os.path.join(results, "*" + suffix)))
    rows = []
    for name in names:
        if arms and name not in arms:
            continue
        try:
            seeds = [pd.concat([pd.read_csv(os.path.join(
                results, f"{name}_s{s}_validation_{half}.csv")) for half in ("train", "test")])
                for s in (0, 1)]
        except FileNotFoundError:
            continue
        a, b = (pooled(x) for x in seeds)
        rows.append({"arm": name, "images": len(seeds[0]),
                     **{k: a[k] - b[k] for k in a}})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--arms", default=",".join(RECENT),
                    help="comma-separated arm names; empty: every arm with two seeds")
    args = ap.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    diffs = seed_differences(args.results, arms)
    if diffs.empty:
        raise SystemExit(f"no arm with both seeds' validation CSVs in {args.results}")
    print(diffs.round(4).to_string(index=False))
    cols = ["psnr", "dice_gm", "adv_mean"]
    offset, sigma = diffs[cols].mean(), diffs[cols].std(ddof=1) / np.sqrt(2)
    print(f"\n{len(diffs)} arms; seed 0 - seed 1 shared by every arm (mean), and sigma = "
          "sd / sqrt(2), the standard error of a rule's two-seed effect:")
    for key, unit in (("psnr", "dB"), ("dice_gm", ""), ("adv_mean", "points")):
        print(f"  {key:9s} offset {offset[key]:+.4f}  sigma {sigma[key]:.4f} {unit}  "
              f"(2 sigma: {2 * sigma[key]:.4f})")

if __name__ == "__main__":
    main()
