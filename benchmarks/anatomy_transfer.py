"""Does what the methods learned on one anatomy carry over to another head?

Two benchmark runs (``configs/benchmark.py``) that differ only in the held-out subjects'
anatomy: ``--template`` holds out deformations of the MNI152 template every method is trained
on (the default), ``--real`` deformations of a real head no method saw
(``--config.data.test_anatomy=real_philips``; the training subjects and so every fitted model
are identical).  Writes, per method, the overall metrics on both and the change, the methods'
ranks on each, and per site whether PhyCHarm beats every baseline.

Usage::

    python -m phyjax.main --config=configs/benchmark.py --workdir=runs/bench_real \\
        --config.data.test_anatomy=real_philips
    python benchmarks/anatomy_transfer.py --template runs/benchmark_v6 --real runs/bench_real \\
        --out benchmarks/results/anatomy_transfer.md
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation_phycharm import BASELINES, METRICS, read_rows

METHODS = BASELINES + ("phycharm", "phycharm_unpaired")


def _fmt(key, v):
    return "–" if v is None else (f"{v:.2f}" if key == "psnr" or key.startswith("vol") else
                                  f"{v:.3f}")


def overall_table(template, real) -> list[str]:
    lines = ["| method | " + " | ".join(f"{label} template → real" for _, label, _ in METRICS)
             + " |", "|---|" + "---|" * len(METRICS)]
    for m in METHODS + ("rescan",):
        t, r = template.get((m, "overall")), real.get((m, "overall"))
        if not t or not r:
            continue
        cells = [f"{_fmt(k, t.get(k))} → {_fmt(k, r.get(k))}" for k, _, _ in METRICS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def ranks(rows, site="overall") -> dict[str, dict[str, int]]:
    """``{metric: {method: rank}}`` over :data:`METHODS` (1 = best)."""
    out = {}
    for key, _, higher in METRICS:
        vals = [(rows[(m, site)][key], m) for m in METHODS if key in rows.get((m, site), {})]
        vals.sort(reverse=higher)
        out[key] = {m: i + 1 for i, (_, m) in enumerate(vals)}
    return out


def wins(rows, sites, method="phycharm") -> list[str]:
    """Per site and metric: ✓ where ``method`` beats every baseline, else the best one."""
    lines = ["| site | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for site in sites:
        cells = []
        for key, _, higher in METRICS:
            mine = rows.get((method, site), {}).get(key)
            vals = [(rows[(b, site)][key], b) for b in BASELINES if key in rows.get((b, site), {})]
            if mine is None or not vals:
                cells.append("–")
                continue
            best = (max if higher else min)(vals)
            ok = mine > best[0] if higher else mine < best[0]
            cells.append("✓" if ok else f"{best[1]} ({_fmt(key, best[0])} vs {_fmt(key, mine)})")
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--template", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--out", default="benchmarks/results/anatomy_transfer.md")
    args = ap.parse_args(argv)
    template, real = read_rows(args.template), read_rows(args.real)
    sites = sorted({s for (_, s) in real if s != "overall"}) + ["overall"]
    rt, rr = ranks(template), ranks(real)
    title = (f"# Anatomy transfer: held-out template heads (`{args.template}`) vs a real head "
             f"(`{args.real}`)")
    intro = ("Overall means over the 4 held-out subjects x 5 source sites; |ΔV| in % of the "
             "re-scan's volume. Same training subjects and fitted models in both runs.")
    lines = [title, "", intro, ""]
    lines += overall_table(template, real)
    lines += ["", "Rank among the methods (1 = best), template → real:", "",
              "| method | " + " | ".join(label for _, label, _ in METRICS) + " |",
              "|---|" + "---|" * len(METRICS)]
    for m in METHODS:
        if m in rr.get("ssim", {}):
            lines.append(f"| {m} | " + " | ".join(
                f"{rt[k].get(m, '–')} → {rr[k].get(m, '–')}" for k, _, _ in METRICS) + " |")
    for name, rows in (("template", template), ("real", real)):
        head = (f"PhyCHarm against every baseline, held-out {name} heads (✓ = beats all; "
                "else the best baseline, its value vs PhyCHarm's):")
        lines += ["", head, ""]
        lines += wins(rows, sites)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
