"""PhyCHarm ablation: which part of the model buys what, per site, on the embedded benchmark.

Each variant is one run of the benchmark (``configs/benchmark.py``) with PhyCHarm and a set of
config overrides; this script runs the variants that have no ``benchmark.csv`` yet (or only
collects, with ``--collect``) and writes one table per metric group: every variant's PhyCHarm
row next to the best baseline of the reference run, per source site and overall, and whether
PhyCHarm beats every baseline on each metric at every site, with the independent re-scan's
ceiling (the ``rescan`` row of the reference run) where there is one.

Usage::

    python benchmarks/ablation_phycharm.py --reference runs/benchmark_v3 \\
        --variant "no anatomy terms=runs/abl/no_anatomy:--config.train.w_grad=0 \\
                   --config.train.w_tissue=0 --config.train.w_edge=0" \\
        --variant "static MPRAGE=runs/abl/static:--config.model.readout=static" \\
        [--collect] [--out benchmarks/results/ablation_phycharm.md]

Below the table: how many site cells each variant wins; ``--agree "NAME,NAME"`` (e.g. two
training seeds of one configuration; the reference's own row is ``full (default config)``) adds
the cells every one of them wins, some and none -- a cell only some seeds win is within seed
noise.

``--reference``: a full benchmark run (every baseline and PhyCHarm with the default config), or
a table this script wrote (``.md``): its "best baseline" and re-scan rows stand in for the
reference run's baselines when that run's folder is gone (they are all ``table`` compares with).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time

from phyjax.evaluate import report

#: (column of benchmark.csv, label, higher is better)
METRICS = (("ssim", "SSIM", True), ("psnr", "PSNR (dB)", True),
           ("dice_csf", "Dice CSF", True), ("dice_gm", "Dice GM", True),
           ("dice_wm", "Dice WM", True), ("vol_reldiff_csf", "|ΔV| CSF (%)", False),
           ("vol_reldiff_gm", "|ΔV| GM (%)", False), ("vol_reldiff_wm", "|ΔV| WM (%)", False))
BASELINES = ("none", "zscore", "histmatch", "nyul", "whitestripe", "combat", "unet")


def read_rows(run: str) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, site): {metric: mean}}`` of a benchmark run folder's ``benchmark.csv``
    (:func:`phyjax.evaluate.report.read_summary`), the :data:`METRICS` that apply."""
    return {key: {k: row[f"{k}_mean"] for k, _, _ in METRICS
                  if math.isfinite(row.get(f"{k}_mean", math.nan))}   # vol_reldiff: already %
            for key, row in report.read_summary(os.path.join(run, "benchmark.csv")).items()}


def read_table(path: str) -> dict[tuple[str, str], dict[str, float]]:
    """The reference rows a table of this script holds: ``{(method, site): {metric: mean}}`` with,
    per site and metric, the best baseline (the method named beside its value) and ``rescan``.

    Raises ValueError if ``path`` has no "best baseline" row (not a table of this script)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 2 + len(METRICS) or cells[1] not in ("best baseline",
                                                                 "*re-scan (ceiling)*"):
                continue
            site = cells[0]
            for (key, _, _), cell in zip(METRICS, cells[2:]):
                if cell == "–":
                    continue
                value, _, method = cell.partition(" (")
                method = method.rstrip(")") if cells[1] == "best baseline" else "rescan"
                out.setdefault((method, site), {})[key] = float(value)
    if not any(m != "rescan" for m, _ in out):
        raise ValueError(f"{path}: no 'best baseline' rows (not a table of ablation_phycharm.py)")
    return out


def run_variant(folder: str, overrides: str, methods: str) -> float:
    """Run the benchmark into ``folder`` with ``overrides``; returns its wall time (s)."""
    cmd = [sys.executable, "-m", "phyjax.main", "--config=configs/benchmark.py",
           f"--workdir={folder}", f"--config.methods={methods}", *shlex.split(overrides)]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def best_baselines(reference, site, baselines=BASELINES) -> dict[str, tuple[float, str]]:
    """``{metric: (value, method)}``: the best baseline of ``reference`` per metric at ``site``."""
    best = {}
    for key, _, higher in METRICS:
        vals = [(reference[(m, site)][key], m) for m in baselines
                if key in reference.get((m, site), {})]
        if vals:
            best[key] = (max if higher else min)(vals)
    return best


def wins(reference, rows, sites, baselines=BASELINES) -> set[tuple[str, str]]:
    """The ``(site, metric)`` cells where ``rows``' PhyCHarm beats every baseline of
    ``reference`` (strictly; a tie is not a win)."""
    won = set()
    for site in sites:
        best, row = best_baselines(reference, site, baselines), rows.get(("phycharm", site), {})
        for key, _, higher in METRICS:
            if key in row and key in best and (
                    row[key] > best[key][0] if higher else row[key] < best[key][0]):
                won.add((site, key))
    return won


def table(reference, variants, sites, baselines=BASELINES) -> list[str]:
    lines = ["| site | variant | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    won = {name: wins(reference, rows, sites, baselines) for name, rows in variants}
    for site in sites:
        best = best_baselines(reference, site, baselines)
        lines.append(f"| {site} | best baseline | " + " | ".join(
            f"{best[k][0]:.3f} ({best[k][1]})" if k in best else "–" for k, _, _ in METRICS)
            + " |")
        ceiling = reference.get(("rescan", site))
        if ceiling:   # the independent re-scan: what no method can be expected to beat
            lines.append(f"| {site} | *re-scan (ceiling)* | " + " | ".join(
                f"{ceiling[k]:.3f}" if k in ceiling else "–" for k, _, _ in METRICS) + " |")
        for name, rows in variants:
            row = rows.get(("phycharm", site), {})
            lines.append(f"| {site} | {name} | " + " | ".join(
                "–" if key not in row else
                f"**{row[key]:.3f}**" if (site, key) in won[name] else f"{row[key]:.3f}"
                for key, _, _ in METRICS) + " |")
    return lines


def summary(reference, variants, sites, baselines=BASELINES, agree=()) -> list[str]:
    """Cells won per variant over the source sites (the overall row excluded), and with
    ``agree`` (variant names, e.g. training seeds of one configuration) the cells every one of
    them wins, some of them, and none."""
    per_site = [s for s in sites if s != "overall"]
    n = len(per_site) * len(METRICS)
    won = {name: wins(reference, rows, per_site, baselines) for name, rows in variants}
    lines = [f"Site cells won (of {n}; bold above, overall row excluded): " + ", ".join(
        f"{name} {len(cells)}" for name, cells in won.items())]
    if agree:
        missing = [a for a in agree if a not in won]
        if missing:
            raise SystemExit(f"--agree: no variant named {missing}; have {list(won)}")
        sets = [won[a] for a in agree]
        every, some = set.intersection(*sets), set.union(*sets)
        labels = {key: label for key, label, _ in METRICS}
        lines.append(f"Won by every one of {', '.join(agree)}: {len(every)}; by some: "
                     f"{len(some - every)}; by none: {n - len(some)}. Split: " + (", ".join(
                         f"{site} {labels[key]}" for site, key in sorted(some - every)) or "none"))
    return lines


def merge_baselines(reference: dict, replace=(), add=(), read=read_rows,
                    baselines=BASELINES) -> tuple[dict, tuple[str, ...]]:
    """``reference`` rows (``{(method, site): ...}``) with ``--replace METHOD=FOLDER`` (that
    method's rows taken from FOLDER instead) and ``--add NAME=FOLDER:METHOD`` (FOLDER's METHOD
    rows as one more baseline, NAME) applied, each FOLDER read by ``read``; returns the rows and
    the baselines' names.  Raises SystemExit naming the spec when FOLDER lacks the rows."""
    reference = dict(reference)
    for spec in replace:
        method, _, folder = spec.partition("=")
        other = read(folder)
        if not any(m == method for m, _ in other):
            raise SystemExit(f"--replace {spec}: {folder} has no {method!r} rows.")
        reference = {k: v for k, v in reference.items() if k[0] != method}
        reference.update({k: v for k, v in other.items() if k[0] == method})
    for spec in add:
        name, _, rest = spec.partition("=")
        folder, _, method = rest.rpartition(":")
        other = read(folder)
        if not name or not any(m == method for m, _ in other):
            raise SystemExit(f"--add {spec}: expected NAME=FOLDER:METHOD with METHOD rows in "
                             f"{folder}.")
        reference.update({(name, site): v for (m, site), v in other.items() if m == method})
        baselines += (name,)
    return reference, tuple(baselines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="full benchmark run folder, or a "
                    "table this script wrote (.md) whose baseline rows stand in for it")
    ap.add_argument("--variant", action="append", default=[],
                    help="'name=folder:overrides' (overrides: --config.* flags)")
    ap.add_argument("--methods", default="('phycharm',)")
    ap.add_argument("--collect", action="store_true", help="only collect existing runs")
    ap.add_argument("--replace", action="append", default=[], metavar="METHOD=FOLDER",
                    help="take the reference's METHOD rows from FOLDER's benchmark.csv (e.g. "
                         "unet=runs/b800c4_base: a baseline retrained with a variant's setting)")
    ap.add_argument("--add", action="append", default=[], metavar="NAME=FOLDER:METHOD",
                    help="one more baseline: FOLDER's METHOD rows under NAME (e.g. "
                         "unet_wide=runs/wide_unet:unet, a baseline retrained with a variant's "
                         "setting, when the reference's own rows must stay: a table reference "
                         "keeps only each cell's best, so --replace cannot take them out)")
    ap.add_argument("--agree", default="", metavar="NAME,NAME",
                    help="variant names (e.g. two training seeds of one configuration; the "
                         "reference's own row is 'full (default config)'): report the cells "
                         "every one of them wins, some and none")
    ap.add_argument("--out", default="benchmarks/results/ablation_phycharm.md")
    args = ap.parse_args(argv)
    reference = (read_table(args.reference) if args.reference.endswith(".md")
                 else read_rows(args.reference))
    reference, baselines = merge_baselines(reference, args.replace, args.add, read_rows)
    variants, seconds = [("full (default config)", reference)], {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        folder, _, overrides = rest.partition(":")
        if not os.path.exists(os.path.join(folder, "benchmark.csv")):
            if args.collect:
                print(f"skipping {name!r}: no {folder}/benchmark.csv")
                continue
            seconds[name] = run_variant(folder, overrides, args.methods)
        variants.append((name, read_rows(folder)))
    reference = variants[0][1]
    # the source sites: every site a method of the reference run was scored on
    sites = sorted({s for (m, s) in reference if s != "overall"}) + ["overall"]
    if not any(m == "phycharm" for m, _ in reference):   # a reference of baselines only
        variants = variants[1:]
    lines = [("PhyCHarm ablation on the embedded benchmark (held-out subjects, mean over subjects; "
              "|ΔV| = absolute relative tissue-volume error vs the ground-truth target image's "
              "segmentation). Bold: better than every baseline of the reference run "
              f"({', '.join(baselines)}) on that metric and site."), "",
             "`python benchmarks/ablation_phycharm.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])) + "`", ""]
    lines += table(reference, variants, sites, baselines)
    agree = tuple(a.strip() for a in args.agree.split(",") if a.strip())
    lines += [""] + summary(reference, variants, sites, baselines, agree)
    if seconds:
        lines += ["", "Wall time per variant run: " + ", ".join(
            f"{k} {v / 60:.1f} min" for k, v in seconds.items())]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
