"""The physics-aware segmentation tables (docs/physics_seg_experiments.md): GM/WM volume CoV
across protocols, physics U-Net vs the same U-Net without the branch, over several seeds.

Runs ``python -m phyjax.main --config=configs/physics_seg.py`` once per seed (each seed draws
other anatomies, protocols and initialisations; ``--config.seed=<s>``) with the given overrides,
then tabulates per family and method the mean over seeds of the CoV (each seed's CoV is the mean
over its held-out subjects), the per-seed values, and whether the branch lowers the CoV in every
seed.  Writes ``<out>.md`` and ``<out>.csv`` with the command line, wall time and the CPU time
of the runs (user + system of the child processes).

Usage::

    taskset -c 1 python benchmarks/physics_seg.py --seeds 0,1 \\
        --root runs/physics_seg_bench --out benchmarks/results/physics_seg \\
        [--set train.steps=2400 --set data.reconstruction=signed ...] [--reuse]

Its tables: ``--set data.reconstruction=signed --set model.conditioning=add``
(the paper's branch inputs) and ``--set data.reconstruction=signed --set
model.conditioning=add+contrast`` (the branch fed the protocol's tissue contrast;
``benchmarks/results/physics_seg_contrast``), both with the static MPRAGE of the code before
issue 16, and ``--set model.conditioning=add+contrast`` (the defaults: magnitude images;
``physics_seg_magnitude`` before issue 16, ``physics_seg_readout`` with the readout-train MPRAGE
training since).

``--models-from ROOT`` evaluates the U-Nets trained under ``ROOT`` (each seed's run resumes
from their final checkpoints, so nothing trains): the decomposition of
docs/physics_seg_experiments.md with ``--set eval.b1_plus=nominal``.

``--baseline ROOT`` takes the methods a run did not evaluate (e.g. the no-branch U-Net, when
only a variant of the physics U-Net was trained: ``--set 'eval.methods=("physics",
"physics_b1map","hmrf")'``) from ``ROOT/seed<s>`` -- after checking that both runs' HMRF rows,
which train nothing, agree to the digit, i.e. that the held-out images are the same.

``--reuse`` tabulates finished runs under ``--root`` (``seed<s>/summary.csv``) without
rerunning them; a run is resumed (``phyjax.main``'s checkpoints) when its folder exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from phyjax.segment.report import LABELS, PAPER_COV

FAMILIES = ("mprage", "spgr")
METHODS = ("physics", "physics_b1map", "no_branch", "hmrf")
#: The methods compared with the no-branch U-Net (those a run has).
BRANCHES = ("physics", "physics_b1map")


def run_seed(seed: int, workdir: str, overrides: list[str]) -> float:
    """One ``phyjax.main`` run; returns its wall time (s).  Raises on a non-zero exit."""
    cmd = [sys.executable, "-m", "phyjax.main", "--config=configs/physics_seg.py",
           f"--workdir={workdir}", f"--config.seed={seed}", "--config.progress=False"]
    cmd += [f"--config.{o}" for o in overrides]
    t0 = time.time()
    with open(workdir + ".log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.time() - t0


def read_rows(workdir: str, name: str, key: tuple[str, ...]) -> dict:
    """``{tuple of the key columns: row}`` of the run's CSV ``name`` (``summary.csv``:
    family, method; ``cov_per_subject.csv``: family, method, subject)."""
    with open(os.path.join(workdir, name)) as f:
        return {tuple(r[k] for k in key): r for r in csv.DictReader(f)}


def tabulate(per_seed: dict[int, dict]) -> list[dict]:
    """Rows per (family, method): CoV GM / WM per seed, mean and sd over seeds, mean Dice."""
    rows = []
    seeds = sorted(per_seed)
    for family in FAMILIES:
        for method in METHODS:
            if not all((family, method) in per_seed[s] for s in seeds):
                continue
            row = {"family": family, "method": method, "seeds": " ".join(map(str, seeds))}
            for key in ("cov_gm", "cov_wm", "dice_gm", "dice_wm"):
                v = np.array([float(per_seed[s][(family, method)][key]) for s in seeds])
                row[key] = float(v.mean())
                row[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
                row[f"{key}_per_seed"] = " ".join(f"{x:.4f}" for x in v)
            rows.append(row)
    return rows


def branch_wins(per_seed: dict[int, dict]) -> dict[str, str]:
    """Per family and tissue: in how many seeds the physics U-Net's CoV (and that of the
    physics U-Net told B1+, where a run has it: keys ending in "told B1+") is below the
    no-branch U-Net's."""
    out = {}
    for method in BRANCHES:
        for family in FAMILIES:
            for t in ("gm", "wm"):
                wins = [float(per_seed[s][(family, method)][f"cov_{t}"])
                        < float(per_seed[s][(family, "no_branch")][f"cov_{t}"])
                        for s in sorted(per_seed) if (family, method) in per_seed[s]
                        and (family, "no_branch") in per_seed[s]]
                if wins:
                    key = f"{family} {t.upper()}" + (", told B1+" if method != "physics" else "")
                    out[key] = f"{sum(wins)}/{len(wins)}"
    return out


def paired(per_subject: dict[int, dict]) -> list[dict]:
    """Per branch method (:data:`BRANCHES`), family and tissue, that U-Net against the no-branch
    U-Net on the same held-out subjects (every seed x subject pair): how many pairs its CoV is
    the lower, the median CoV ratio (method / no branch), and the two-sided Wilcoxon
    signed-rank p-value of the paired differences (SciPy).  Seeds share nothing but the code, so
    the pairs are independent across seeds; within a seed the subjects share the trained
    models."""
    from scipy.stats import wilcoxon

    out = []
    for method, family, t in ((m, f, t) for m in BRANCHES for f in FAMILIES
                              for t in ("gm", "wm")):
        a, b = [], []
        for _, rows in sorted(per_subject.items()):
            for (f, m, subj), r in rows.items():
                if f == family and m == method and (f, "no_branch", subj) in rows:
                    a.append(float(r[f"cov_{t}"]))
                    b.append(float(rows[(f, "no_branch", subj)][f"cov_{t}"]))
        if not a:
            continue
        a, b = np.array(a), np.array(b)
        out.append({"method": method, "family": family, "tissue": t.upper(), "pairs": len(a),
                    "physics_lower": int((a < b).sum()),
                    "median_ratio": float(np.median(a / b)),
                    "wilcoxon_p": float(wilcoxon(a, b).pvalue) if len(a) > 1 else
                    float("nan")})
    return out


def borrow(run: str, baseline: str) -> tuple[dict, dict, list[dict]]:
    """``(summary, per-subject CoV, evaluation rows)`` of ``run`` (:func:`read_rows`,
    :func:`evaluation_rows`) completed with the methods only ``baseline`` (another run of the
    same seed) evaluated.  Raises SystemExit unless both runs' HMRF rows agree to the digit
    (the HMRF trains nothing: equal rows mean the same held-out images)."""
    summary = read_rows(run, "summary.csv", ("family", "method"))
    subjects = read_rows(run, "cov_per_subject.csv", ("family", "method", "subject"))
    rows = evaluation_rows(run)
    if not baseline:
        return summary, subjects, rows
    base_rows = evaluation_rows(baseline)
    key = lambda r: (r["subject"], r["family"], r["protocol"], r["draw"])
    hmrf = lambda rs: {key(r): {k: v for k, v in r.items() if k.startswith(("vol_", "dice_"))}
                       for r in rs if r["method"] == "hmrf"}
    mine, theirs = hmrf(rows), hmrf(base_rows)
    if not mine or mine != theirs:
        raise SystemExit(f"{run} and {baseline}: the HMRF rows differ or are missing, so the "
                         "held-out images cannot be shown to be the same; not combining them.")
    have = {r["method"] for r in rows}
    rows = rows + [r for r in base_rows if r["method"] not in have]
    for k, r in read_rows(baseline, "summary.csv", ("family", "method")).items():
        summary.setdefault(k, r)
    for k, r in read_rows(baseline, "cov_per_subject.csv", ("family", "method", "subject")
                          ).items():
        subjects.setdefault(k, r)
    return summary, subjects, rows


def cov_figure(per_subject: dict[int, dict], path: str) -> str:
    """Per family and tissue, the per-subject volume CoV of each U-Net (every seed x held-out
    subject; box: quartiles, whiskers 1.5 IQR, points: the subjects), log scale; writes
    ``path`` (PNG) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("no_branch", *BRANCHES)
               if any(k[1] == m for rows in per_subject.values() for k in rows)]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.6), sharey=True)
    rng = np.random.default_rng(0)
    cells = [(f, t) for f in FAMILIES for t in ("gm", "wm")]
    for ax, (family, t) in zip(axes, cells):
        data = [[float(r[f"cov_{t}"]) for rows in per_subject.values()
                 for (f, m, _), r in sorted(rows.items()) if f == family and m == method]
                for method in methods]
        ax.boxplot(data, showfliers=False, widths=0.5)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=6, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xticks(range(1, len(methods) + 1),
                      [LABELS.get(m, m).replace("U-Net + physics branch", "branch")
                       .replace("U-Net, ", "") for m in methods], rotation=20, fontsize=7)
        ax.set_title(f"{family.upper()} {t.upper()}: CoV per subject", fontsize=9)
    axes[0].set_ylabel("volume CoV across protocols")
    n = len(next(iter(data)))
    fig.suptitle(f"Held-out subjects ({n} per method: seeds x subjects)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluation_rows(workdir: str) -> list[dict]:
    """The rows of a run's ``evaluation.csv`` (one per subject x protocol x noise draw x
    method), as read (strings)."""
    with open(os.path.join(workdir, "evaluation.csv")) as f:
        return list(csv.DictReader(f))


def volume_error(rows: list[dict]) -> dict:
    """``{(family, method): (|dV| GM, |dV| WM)}``: the mean over ``rows`` (:func:`evaluation_rows`;
    held-out subjects, protocols and noise draws) of |volume / gold-standard volume - 1|, in %."""
    acc: dict = {}
    for r in rows:
        e = [abs(float(r[f"vol_{t}"]) / float(r[f"gold_vol_{t}"]) - 1.0) * 100
             for t in ("gm", "wm")]
        acc.setdefault((r["family"], r["method"]), []).append(e)
    return {k: tuple(np.mean(v, axis=0)) for k, v in acc.items()}


def deviations(rows: list[dict]) -> dict:
    """``{(family, method, tissue): array (subjects, protocols)}``: each held-out subject's
    volume deviation from its own mean over the family's protocols, in %, the noise draws of a
    protocol averaged first (as for the CoV); subjects and protocols in sorted order."""
    vols: dict = {}
    for r in rows:
        for t in ("gm", "wm"):
            key = (r["family"], r["method"], t.upper())
            vols.setdefault(key, {}).setdefault(r["subject"], {}).setdefault(
                int(r["protocol"]), []).append(float(r[f"vol_{t}"]))
    out = {}
    for key, subjects in vols.items():
        dev = []
        for _, by_protocol in sorted(subjects.items()):
            v = np.array([np.mean(by_protocol[j]) for j in sorted(by_protocol)])
            dev.append(100.0 * (v / v.mean() - 1.0))
        out[key] = np.array(dev)
    return out


def decomposition(rows: list[dict]) -> dict:
    """``{(family, method, tissue): (pattern, remainder)}``, in %: the :func:`deviations` split
    into the **protocol pattern** (their mean over subjects at each protocol: a
    protocol-dependent bias, what knowing the parameters can remove) and the **subject x
    protocol remainder**; each reported as its root mean square over protocols (and
    subjects)."""
    out = {}
    for key, dev in deviations(rows).items():
        pattern = dev.mean(0)
        out[key] = (float(np.sqrt(np.mean(pattern ** 2))),
                    float(np.sqrt(np.mean((dev - pattern) ** 2))))
    return out


#: SPGR's weak-contrast corner (nearly PD-weighted: flip <= 25 deg with TR >= 60 ms), where
#: the GM/WM signal ratio is 0.85-0.90 instead of ~0.75 (docs/physics_seg_experiments.md).
WEAK_SPGR = {"max_flip_deg": 25.0, "min_tr_s": 0.060}


def spgr_split(per_seed_rows: list[list[dict]]) -> dict:
    """``{(method, tissue, weak): (pattern, remainder, n protocols)}``: the :func:`deviations` of
    every seed's SPGR protocols pooled, split into the weak-contrast ones (:data:`WEAK_SPGR`)
    and the rest; pattern = rms over protocols of the mean deviation over subjects, remainder =
    rms over subjects and protocols of the rest (%)."""
    acc: dict = {}
    for rows in per_seed_rows:
        weak = {int(r["protocol"]): float(r["flip_angle_deg"]) <= WEAK_SPGR["max_flip_deg"]
                and float(r["tr"]) >= WEAK_SPGR["min_tr_s"] for r in rows
                if r["family"] == "spgr"}
        for (family, method, tissue), dev in deviations(rows).items():
            if family != "spgr":
                continue
            for j, w in weak.items():
                a = acc.setdefault((method, tissue, w), ([], []))
                a[0].append(dev[:, j].mean() ** 2)
                a[1].extend((dev[:, j] - dev[:, j].mean()) ** 2)
    return {k: (float(np.sqrt(np.mean(p))), float(np.sqrt(np.mean(r))), len(p))
            for k, (p, r) in acc.items()}


def markdown(rows, wins, command: str, wall: float, cpu: float, overrides,
             pairs=(), errors=None, parts=None, split=None) -> str:
    def fmt(r, k):
        sd = r[k + "_sd"]
        return f"{r[k]:.4f}" + (f" ± {sd:.4f}" if np.isfinite(sd) else "")
    lines = ["# Physics-aware segmentation: volume CoV across protocols", "",
             f"Command: `{command}`", "",
             (f"Overrides: `{' '.join(overrides) or '(defaults)'}`. Wall {wall / 60:.1f} min, "
             f"CPU (user + system of the runs) {cpu / 60:.1f} min."), "",
             ("CoV per seed = mean over held-out subjects of sample sd / mean of the subject's "
             "volume across the family's protocols; table: mean ± sd over seeds (per-seed "
             "values in brackets)."), "",
             ("| family | method | CoV GM | CoV WM | per seed GM | per seed WM | Dice GM | "
              "Dice WM |"
             " paper CoV GM / WM |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = PAPER_COV.get(r["family"], {}).get(r["method"])
        lines.append(f"| {r['family']} | {LABELS.get(r['method'], r['method'])} | "
                     f"{fmt(r, 'cov_gm')} | {fmt(r, 'cov_wm')} | [{r['cov_gm_per_seed']}] | "
                     f"[{r['cov_wm_per_seed']}] | {r['dice_gm']:.3f} | {r['dice_wm']:.3f} | "
                     + (f"{paper[0]:.5f} / {paper[1]:.5f}" if paper else "–") + " |")
    lines += ["", "Seeds in which the physics U-Net's CoV is lower than the no-branch U-Net's: "
              + ", ".join(f"{k} {v}" for k, v in wins.items()) + "."]
    if pairs:
        lines += ["", ("Paired by held-out subject (every seed x subject; the CoV of one subject "
                       "across the family's protocols, physics U-Net vs no-branch U-Net):"), "",
                  ("| method | family | tissue | pairs | lower than no branch | median CoV ratio "
                   "method / no branch | Wilcoxon signed-rank p (two-sided) |"),
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {LABELS.get(p['method'], p['method'])} | {p['family']} | {p['tissue']} | "
                  f"{p['pairs']} | {p['physics_lower']} | {p['median_ratio']:.2f} | "
                  f"{p['wilcoxon_p']:.3f} |" for p in pairs]
    if errors:
        lines += ["", ("Volume error against the physics gold standard, mean over seeds, held-out "
                       "subjects and protocols of |V / V_gold - 1| (%):"), "",
                  "| family | method | GM | WM |", "|---|---|---|---|"]
        for (family, method), (gm, wm) in sorted(errors.items()):
            lines.append(f"| {family} | {LABELS.get(method, method)} | {gm:.2f} | {wm:.2f} |")
    if parts:
        lines += ["", ("Each subject's volume deviation from its own mean over the protocols, "
                       "split into the protocol pattern (mean over subjects per protocol) and "
                       "the subject x protocol remainder; root mean square (%), mean over seeds:"),
                  "", "| family | method | pattern GM / WM | remainder GM / WM |",
                  "|---|---|---|---|"]
        for family, method in sorted({k[:2] for k in parts}):
            gm, wm = parts[(family, method, "GM")], parts[(family, method, "WM")]
            lines.append(f"| {family} | {LABELS.get(method, method)} | {gm[0]:.2f} / "
                         f"{wm[0]:.2f} | {gm[1]:.2f} / {wm[1]:.2f} |")
    if split:
        lines += ["", (f"SPGR, every seed's protocols pooled: the weak-contrast ones (flip <= "
                       f"{WEAK_SPGR['max_flip_deg']:g} deg with TR >= "
                       f"{1e3 * WEAK_SPGR['min_tr_s']:g} ms) and the rest; pattern and "
                       "remainder as above (rms %):"), "",
                  "| method | protocols | n | pattern GM / WM | remainder GM / WM |",
                  "|---|---|---|---|---|"]
        for method in sorted({k[0] for k in split}):
            for w in (True, False):
                if (method, "GM", w) not in split:
                    continue
                gm, wm = split[(method, "GM", w)], split[(method, "WM", w)]
                lines.append(f"| {LABELS.get(method, method)} | "
                             f"{'weak contrast' if w else 'the rest'} | {gm[2]} | {gm[0]:.2f} / "
                             f"{wm[0]:.2f} | {gm[1]:.2f} / {wm[1]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--root", default="runs/physics_seg_bench")
    ap.add_argument("--out", default="benchmarks/results/physics_seg")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override without the --config. prefix (repeatable)")
    ap.add_argument("--reuse", action="store_true", help="tabulate existing runs only")
    ap.add_argument("--models-from", default="", metavar="ROOT",
                    help="evaluate the trained U-Nets of ROOT/seed<s> instead of training: their "
                         "folders are copied into a run folder that does not exist yet (e.g. "
                         "with --set eval.b1_plus=nominal)")
    ap.add_argument("--figure", action="store_true",
                    help="also write <out>.png: the per-subject CoV of each U-Net")
    ap.add_argument("--baseline", default="", metavar="ROOT",
                    help="take the methods a run lacks from ROOT/seed<s> (same seed, checked "
                         "to have the same held-out images)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {s: os.path.join(args.root, f"seed{s}") for s in seeds}
    os.makedirs(args.root, exist_ok=True)
    t0 = time.time()
    for s in seeds:
        if args.models_from and not args.reuse and not os.path.exists(runs[s]):
            for model in ("physics_unet", "no_branch_unet"):
                src = os.path.join(args.models_from, f"seed{s}", model)
                if os.path.isdir(src):
                    shutil.copytree(src, os.path.join(runs[s], model))
        if not args.reuse:
            print(f"seed {s}: {run_seed(s, runs[s], args.set):.0f} s", flush=True)
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    loaded = {s: borrow(runs[s], os.path.join(args.baseline, f"seed{s}") if args.baseline
                        else "") for s in seeds}
    per_seed = {s: loaded[s][0] for s in seeds}
    rows, wins = tabulate(per_seed), branch_wins(per_seed)
    pairs = paired({s: loaded[s][1] for s in seeds})
    evaluations = [loaded[s][2] for s in seeds]
    per_seed_err = [volume_error(rows) for rows in evaluations]
    errors = {k: tuple(np.mean([e[k] for e in per_seed_err], axis=0))
              for k in per_seed_err[0] if all(k in e for e in per_seed_err)}
    command = "python benchmarks/physics_seg.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv)
    per_seed_parts = [decomposition(rows) for rows in evaluations]
    parts = {k: tuple(np.mean([p[k] for p in per_seed_parts], axis=0))
             for k in per_seed_parts[0] if all(k in p for p in per_seed_parts)}
    split = spgr_split(evaluations)
    text = markdown(rows, wins, command, wall, cpu, args.set, pairs, errors, parts, split)
    if args.reuse:
        text += "\n(Tabulated from existing runs: the times above are not the runs' own.)\n"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(args.out + ".json", "w") as f:
        json.dump({"command": command, "overrides": args.set, "seeds": seeds, "wall_s": wall,
                   "cpu_s": cpu, "reuse": args.reuse, "branch_wins": wins,
                   "paired_by_subject": pairs,
                   "volume_error_pct": {f"{f} {m}": list(v) for (f, m), v in errors.items()},
                   "pattern_remainder_pct": {" ".join(k): list(v) for k, v in parts.items()},
                   "spgr_weak_contrast_split_pct": {
                       f"{m} {t} {'weak' if w else 'rest'}": list(v)
                       for (m, t, w), v in split.items()}},
                  f, indent=2)
    if args.figure:
        cov_figure({s: loaded[s][1] for s in seeds}, args.out + ".png")
    print(text)


if __name__ == "__main__":
    main()
