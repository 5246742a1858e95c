"""The network's output alone against the same output through its site maps, on validation
heads: per site, the intensity and Dice means and, per tissue, the signed volume error's mean
and its slope against the head's own fraction of the tissue (docs/phycharm_ablation.md item
80: on the maps' own heads the map, not the network, made the volume error follow the head's
anatomy).

Reads the CSVs of ``benchmarks/refine_sweep.py`` runs with two settings (``--a``, ``--b``; e.g.
``saved`` = ``calibrate=sites`` and ``raw`` = ``calibrate=none`` on the same network outputs)
and, for the slopes, segments the target scans of the validation split (``--run``,
``--data-seed``) with the run's segmenter to get each head's tissue fractions.

Usage::

    python benchmarks/raw_vs_maps.py --run runs/abl/sl79_s0 --data-seed 1 --a saved --b raw \\
        --csv benchmarks/results/raw_vs_maps_s0_validation.csv \\
        --csv benchmarks/results/raw_vs_maps_s1_validation.csv --out F.md
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from phyjax.data.dataset import load_dataset
from phyjax.evaluate.overlap import TISSUES, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run


def target_fractions(run: str, data_seed: int) -> pd.DataFrame:
    """``subject, frac_csf, frac_gm, frac_wm`` (%): the run's segmenter on each subject's
    target-site scan of the run's dataset built with ``data.seed = data_seed``."""
    cfg, _ = read_run(run)
    cfg.data.seed = data_seed
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = make_segmenter(cfg.segmentation)
    rows = []
    for subject, scans in sorted(data.volumes.items()):
        t = scans[data.target_site]
        v = tissue_volumes(seg(t.image, t.mask)[t.mask], 1.0)
        total = sum(v[k] for k in TISSUES)
        rows.append({"subject": subject, **{f"frac_{k}": 100.0 * v[k] / total for k in TISSUES}})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", action="append", required=True)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--run", default="", help="for the slopes: the run whose dataset was scored")
    ap.add_argument("--data-seed", type=int, default=-1)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    df = pd.concat([pd.read_csv(p, dtype={"subject": str}).assign(group=k)
                    for k, p in enumerate(args.csv)])
    df = df[df.setting.isin([args.a, args.b])]
    frac = target_fractions(args.run, args.data_seed) if args.run else None
    if frac is not None:
        df = df.merge(frac, on="subject", how="left")
    lines = [f"`{args.a}` against `{args.b}`, {df.group.nunique()} CSV(s), "
             f"{len(df[df.setting == args.a])} images each.", "",
             "| site | setting | SSIM | PSNR (dB) | Dice CSF / GM / WM | dV CSF / GM / WM (%) | "
             "mean abs dV | slope CSF / GM / WM (%/pt; Spearman) |", "|---|---|---|---|---|---|---|---|"]
    for site in sorted(df.site.unique()) + ["overall"]:
        for name in (args.a, args.b):
            d = df[(df.setting == name) & ((df.site == site) | (site == "overall"))]
            slopes = ""
            if frac is not None and site != "overall":
                parts = []
                for t in TISSUES:
                    x, y = d[f"frac_{t}"].to_numpy(), d[f"dv_{t}"].to_numpy()
                    parts.append(f"{np.polyfit(x, y, 1)[0]:+.2f} ({spearmanr(x, y)[0]:+.2f})")
                slopes = " / ".join(parts)
            mad = float(np.mean([d[f"dv_{t}"].abs().mean() for t in TISSUES]))
            lines.append(
                f"| {site} | {name} | {d.ssim.mean():.4f} | {d.psnr.mean():.2f} | "
                + " / ".join(f"{d[f'dice_{t}'].mean():.4f}" for t in TISSUES) + " | "
                + " / ".join(f"{d[f'dv_{t}'].mean():+.2f}" for t in TISSUES)
                + f" | {mad:.2f} | {slopes} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
