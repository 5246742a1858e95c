"""How firmly is each site cell of the issue-14 bar won or lost, given only a few test heads?

``benchmarks/ablation_phycharm.py`` counts a (site, metric) cell as won when PhyCHarm's mean over
the held-out heads beats every baseline's mean.  With four heads, a cell can turn on one head.
This reads the per-subject rows (``benchmark_per_subject.csv``) of the same runs and reports,
per variant and cell:

* **heads**: in how many held-out heads PhyCHarm beats every baseline on that head;
* **P(win)**: the share of 2000 bootstrap resamples of the heads (drawn with replacement, the
  same heads for every method: the comparison stays paired) in which PhyCHarm's mean beats
  every baseline's mean.

Below, per variant: the cells won on the mean, and how many of the 40 are firm (P(win) >= 0.9),
lost (P(win) <= 0.1) or undecided on these heads.

Usage::

    python benchmarks/cell_robustness.py --reference runs/base34 --replace unet=runs/abl/sites_unet \\
        --add unet_b8=runs/abl/unet_b8_s0:unet --variant 'detail s0=runs/abl/detail_s0' \\
        --out benchmarks/results/cell_robustness.md
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_phycharm import BASELINES, METRICS, merge_baselines  # noqa: E402


def read_subjects(run: str) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(method, site): {subject: {metric: value}}}`` of a run's ``benchmark_per_subject.csv``
    (the :data:`METRICS`; ``vol_reldiff_*`` are absolute % errors).  Raises SystemExit naming the
    file if it is missing."""
    path = os.path.join(run, "benchmark_per_subject.csv")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: not found (a benchmark run folder has one).")
    out: dict = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault((row["method"], row["site"]), {})[row["subject"]] = {
                k: float(row[k]) for k, _, _ in METRICS if row.get(k) not in (None, "")}
    return out


def cell_matrix(rows, methods, site, key, subjects) -> np.ndarray:
    """``(len(methods), len(subjects))`` values of ``key`` at ``site`` (NaN where missing)."""
    return np.array([[rows.get((m, site), {}).get(s, {}).get(key, np.nan) for s in subjects]
                     for m in methods], float)


def robustness(rows, variant: str, baselines, sites, n_boot: int = 2000, seed: int = 0):
    """Per (site, metric): (mean won, heads won, number of heads, P(win)) of ``variant``'s
    PhyCHarm rows against every baseline present at that site."""
    rng = np.random.default_rng(seed)
    out = {}
    for site in sites:
        subjects = sorted(rows.get((variant, site), {}))
        if not subjects:
            continue
        draws = rng.integers(0, len(subjects), (n_boot, len(subjects)))
        for key, _, higher in METRICS:
            x = cell_matrix(rows, [variant] + list(baselines), site, key, subjects)
            # a baseline without this metric (ComBat harmonizes features, not images) is not
            # compared on it, as in ablation_phycharm.py
            x = x[[0] + [1 + i for i in range(len(baselines)) if not np.isnan(x[1 + i]).all()]]
            if np.isnan(x).any() or len(x) < 2:
                continue
            sign = 1.0 if higher else -1.0
            margin = sign * (x[0] - x[1:])            # > 0: better than that baseline
            heads = int((margin > 0).all(axis=0).sum())
            mean_won = bool((sign * (x[0].mean() - x[1:].mean(axis=1)) > 0).all())
            boot = x[:, draws].mean(axis=2)            # (methods, n_boot)
            p = float((sign * (boot[0] - boot[1:]) > 0).all(axis=0).mean())
            out[(site, key)] = (mean_won, heads, len(subjects), p)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="full benchmark run folder (baselines)")
    ap.add_argument("--replace", action="append", default=[], metavar="METHOD=FOLDER")
    ap.add_argument("--add", action="append", default=[], metavar="NAME=FOLDER:METHOD")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FOLDER",
                    help="a run folder whose phycharm rows are scored")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = {k: v for k, v in read_subjects(args.reference).items() if k[0] in BASELINES}
    rows, baselines = merge_baselines(rows, args.replace, args.add, read_subjects,
                                      tuple(m for m in BASELINES if any(k[0] == m for k in rows)))
    if not args.variant:
        raise SystemExit("give at least one --variant NAME=FOLDER")
    sites = sorted({s for (_, s) in rows if s != "overall"})
    labels = {k: label for k, label, _ in METRICS}
    lines = ["Site cells of the issue-14 bar, per held-out head and bootstrapped over heads "
             f"(baselines: {', '.join(baselines)}). Cell: `heads won / heads, P(win)`; bold: "
             "won on the mean (as ablation_phycharm.py counts it).", "",
             "`python benchmarks/cell_robustness.py "
             + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])) + "`", ""]
    summary = []
    for spec in args.variant:
        name, _, folder = spec.partition("=")
        own = read_subjects(folder)
        if not any(m == "phycharm" for m, _ in own):
            raise SystemExit(f"--variant {spec}: {folder} has no phycharm rows.")
        data = {**rows, **{(name, s): v for (m, s), v in own.items() if m == "phycharm"}}
        res = robustness(data, name, baselines, sites, args.boot)
        lines += [f"**{name}** (`{folder}`)", "",
                  "| site | " + " | ".join(labels[k] for k, _, _ in METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for site in sites:
            cells = []
            for key, _, _ in METRICS:
                if (site, key) not in res:
                    cells.append("–")
                    continue
                won, heads, n, p = res[(site, key)]
                text = f"{heads}/{n}, {p:.2f}"
                cells.append(f"**{text}**" if won else text)
            lines.append(f"| {site} | " + " | ".join(cells) + " |")
        n_won = sum(r[0] for r in res.values())
        firm = sum(r[3] >= 0.9 for r in res.values())
        lost = sum(r[3] <= 0.1 for r in res.values())
        summary.append(f"{name}: {n_won} of {len(res)} won on the mean; firm (P >= 0.9) "
                       f"{firm}, lost (P <= 0.1) {lost}, undecided {len(res) - firm - lost}")
        lines.append("")
    lines += summary
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
