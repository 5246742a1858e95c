"""One benchmark metric per source site and method, gathered from one or more benchmark runs.

Reads each run's ``benchmark.csv`` (:func:`phyjax.evaluate.report.aggregate` rows) and writes a
markdown table: a row per site (and ``overall``), a column per method, the mean over held-out
subjects (± sd with ``--sd``), the best method per row in bold where the metric has a direction
(:data:`phyjax.evaluate.report.METRICS`; ceilings such as ``rescan`` never bold).  Runs split by
method (``--config.methods``) on the same data are joined; a method in two runs is an error.

Usage::

    python benchmarks/metric_table.py --run runs/les/base --run runs/les/phy \
        --metric lesion_contrast_err --metric lesion_contrast --out benchmarks/results/lesions.md
"""

from __future__ import annotations

import argparse
import math
import os

from phyjax.evaluate import report


def read_summary(runs) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, site): row}`` of every run's ``benchmark.csv``
    (:func:`phyjax.evaluate.report.read_summary`); raises SystemExit when a method appears in
    two runs or a run has no ``benchmark.csv``."""
    out, where = {}, {}
    for run in runs:
        path = os.path.join(run, "benchmark.csv")
        if not os.path.exists(path):
            raise SystemExit(f"{run}: no benchmark.csv (not a finished benchmark run).")
        for (m, site), row in report.read_summary(path).items():
            if where.setdefault(m, run) != run:
                raise SystemExit(f"method {m!r} is in both {where[m]} and {run}.")
            out[(m, site)] = row
    return out


def table(summary, metric: str, sd: bool = False) -> list[str]:
    """Markdown lines: sites × methods for ``metric`` (a :data:`report.METRICS` key)."""
    info = {k: (label, hi, fmt) for k, label, hi, fmt in report.ALL_METRICS}
    if metric not in info:
        raise SystemExit(f"unknown metric {metric!r}; expected one of {sorted(info)}.")
    label, higher, fmt = info[metric]
    methods = list(dict.fromkeys(m for m, _ in summary))
    sites = sorted({s for _, s in summary if s != report.OVERALL}) + [report.OVERALL]

    def value(m, s):
        row = summary.get((m, s), {})
        return row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_sd", math.nan)

    lines = [f"{label}" + (" (higher is better)" if higher else " (lower is better)"
                           if higher is False else ""), "",
             "| site | " + " | ".join(m + (" *(ceiling)*" if m in report.CEILINGS else "")
                                    for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for s in sites:
        vals = {m: value(m, s) for m in methods}
        ranked = [m for m in methods if m not in report.CEILINGS and math.isfinite(vals[m][0])]
        best = (max if higher else min)(ranked, key=lambda m: vals[m][0]) if (
            ranked and higher is not None) else None
        cells = []
        for m in methods:
            mean, spread = vals[m]
            if not math.isfinite(mean):
                cells.append("–")
                continue
            text = fmt.format(mean) + (f" ± {fmt.format(spread)}" if sd and math.isfinite(spread)
                                       else "")
            cells.append(f"**{text}**" if m == best else text)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="benchmark run folder(s)")
    ap.add_argument("--metric", action="append", required=True)
    ap.add_argument("--sd", action="store_true", help="mean ± sd over subjects")
    ap.add_argument("--out", default="", help="markdown file (default: print only)")
    args = ap.parse_args(argv)
    summary = read_summary(args.run)
    command = ("`python benchmarks/metric_table.py " + " ".join(f"--run {r}" for r in args.run)
               + " " + " ".join(f"--metric {m}" for m in args.metric)
               + (" --sd" if args.sd else "") + (f" --out {args.out}" if args.out else "") + "`")
    lines = [command, ""]
    for metric in args.metric:
        lines += table(summary, metric, args.sd) + [""]
    text = "\n".join(lines)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
