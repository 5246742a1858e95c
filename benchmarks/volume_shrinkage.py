"""Does a method's tissue-volume error follow the head's own anatomy?  (docs/phycharm_ablation.md
item 80.)

For each ``--run NAME=FOLDER:METHOD`` (a benchmark run's ``benchmark_per_subject.csv``) and each
source site, the signed volume error of the fixed segmenter on the method's output against
the same segmenter on the subject's independent re-scan with the target protocol (the
``rescan`` rows of ``--reference``: the target's own volumes within 0.4 %), regressed on the
tissue's fraction of the head (that re-scan's CSF / (CSF + GM + WM), likewise GM and WM).  A
negative slope is shrinkage: heads with more of the tissue than most get too little, heads
with less too much -- the output pulls every head toward the population's anatomy (histogram
matching to one template is the extreme case).  Printed per method, site and tissue:
Pearson's r, Spearman's ρ and r without the head with the most of the tissue (one atrophic
head can carry a slope on its own), the slope (% error per percentage point of fraction),
and the mean and sd of the signed error.

Usage::

    python benchmarks/volume_shrinkage.py --reference runs/h16/s0 \\
        --run "PhyCHarm s0=runs/abl/sl79_s0:phycharm" --run "none=runs/h16/s0:none" \\
        --tissue csf --out benchmarks/results/volume_shrinkage_h16.md
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np

TISSUES = ("csf", "gm", "wm")


def read(folder: str, method: str) -> dict[tuple[str, str], dict]:
    """``{(site, subject): row}`` of ``method`` in ``folder``'s per-subject benchmark CSV."""
    path = os.path.join(folder, "benchmark_per_subject.csv")
    with open(path) as fh:
        rows = {(r["site"], r["subject"]): r for r in csv.DictReader(fh)
                if r["method"] == method}
    if not rows:
        raise SystemExit(f"{path}: no rows of method {method!r}.")
    return rows


def shrinkage(rows: dict, rescan: dict, site: str, tissue: str) -> dict:
    """r, slope, mean and sd of the signed % volume error of ``tissue`` at ``site`` against the
    re-scan's, over the heads both have, and the re-scan's fraction of that tissue."""
    frac, err = points(rows, rescan, site, tissue)
    rest = frac < frac.max()        # without the head with the most of the tissue (leverage)
    from scipy.stats import spearmanr

    return {"n": len(err), "r": float(np.corrcoef(frac, err)[0, 1]),
            "rho": float(spearmanr(frac, err)[0]),
            "r_rest": float(np.corrcoef(frac[rest], err[rest])[0, 1]),
            "slope": float(np.polyfit(frac, err, 1)[0]), "mean": float(err.mean()),
            "sd": float(err.std(ddof=1)), "range": (float(frac.min()), float(frac.max()))}


def points(rows: dict, rescan: dict, site: str, tissue: str) -> tuple[np.ndarray, np.ndarray]:
    """(tissue fraction of the re-scan, %; signed % volume error) per head at ``site``."""
    frac, err = [], []
    for (s, subject), r in sorted(rows.items()):
        if s == site and (s, subject) in rescan:
            t = rescan[(s, subject)]
            target = float(t[f"volume_{tissue}"])
            frac.append(100.0 * target / sum(float(t[f"volume_{k}"]) for k in TISSUES))
            err.append(100.0 * (float(r[f"volume_{tissue}"]) / target - 1.0))
    return np.asarray(frac), np.asarray(err)


def figure(runs: list[str], rescan: dict, site: str, tissue: str, path: str) -> None:
    """A scatter per run of :func:`points` with its least-squares line, written to ``path``."""
    from phyjax.evaluate.figures import _plt

    plt = _plt()          # matplotlib with the Agg backend, as phyjax's own figures
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for spec in runs:
        name, rest = spec.split("=", 1)
        folder, method = rest.rsplit(":", 1)
        x, y = points(read(folder, method), rescan, site, tissue)
        a, b = np.polyfit(x, y, 1)
        dots = ax.scatter(x, y, s=18, label=f"{name} (slope {a:+.2f} %/pt, "
                                            f"r {np.corrcoef(x, y)[0, 1]:+.2f})")
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, a * xs + b, color=dots.get_facecolor()[0], lw=1)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel(f"{tissue.upper()} fraction of the head, re-scan (%)")
    ax.set_ylabel(f"{tissue.upper()} volume error against the re-scan (%)")
    ax.set_title(f"{site}: a negative slope pulls heads toward the population's anatomy",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="benchmark run with the rescan rows")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER:METHOD")
    ap.add_argument("--tissue", action="append", default=[], choices=TISSUES)
    ap.add_argument("--out", default="")
    ap.add_argument("--figure", default="", metavar="SITE:TISSUE:PATH",
                    help="a scatter of each run's signed error against the tissue fraction at "
                         "one site, with its regression line (e.g. mprage1p5T:csf:docs/x.png)")
    args = ap.parse_args(argv)
    rescan = read(args.reference, "rescan")
    sites = sorted({s for s, _ in rescan})
    lines = ["| tissue | site | method | heads | r | Spearman ρ | r without the top head | "
             "slope (%/pt) | mean (%) | sd (%) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for tissue in args.tissue or ["csf"]:
        for site in sites:
            for spec in args.run:
                name, rest = spec.split("=", 1)
                folder, method = rest.rsplit(":", 1)
                st = shrinkage(read(folder, method), rescan, site, tissue)
                lines.append(f"| {tissue} | {site} | {name} | {st['n']} | {st['r']:+.2f} | "
                             f"{st['rho']:+.2f} | {st['r_rest']:+.2f} | "
                             f"{st['slope']:+.2f} | {st['mean']:+.2f} | {st['sd']:.2f} |")
    if args.figure:
        site, tissue, path = args.figure.split(":", 2)
        figure(args.run, rescan, site, tissue, path)
    text = (f"Signed volume error against the re-scan, regressed on the re-scan's tissue fraction "
            f"(reference `{args.reference}`).\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
