"""Expected networks instead of single trainings: the volume CoV of ensembles of trained U-Nets,
physics branch vs no branch, on the held-out subjects of a multi-seed physics_seg run.

Why: the no-branch and branch U-Nets' CoVs change more from one training run to the next
(seed) than between the two arms (``benchmarks/results/physics_seg_window16.md``: the
no-branch SPGR WM CoV spans 0.010-0.060 over six seeds).  A comparison of two single trainings
measures the two runs as much as the two designs.  Averaging the probabilities of K U-Nets of an
arm, each trained on other anatomies and initialisations, estimates the arm's *expected*
network; if the branch's extra subject x protocol error is run-to-run idiosyncrasy, it averages
out, and if it is what the design does, it stays.

Nothing trains.  For every evaluation seed s of ``--runs`` (``<runs>/seed<s>``, the finished
runs of ``benchmarks/physics_seg.py``), the held-out images are rebuilt exactly as that run built
them (``phyjax.experiments.physics_seg.evaluate_across_protocols`` with its ``config.json``:
anatomies, scanner effects, noise keys, protocols), and each arm is evaluated as an ensemble of
the first k of its U-Nets in the order s, s+1, ... (mod the number of seeds), k in ``--sizes``.
Each seed's anatomies are its own (``ANATOMY_SEED + 1000 seed + k``), so no U-Net has seen
another seed's held-out heads.  k = 1 is the run's own U-Net: its rows must equal the run's
``evaluation.csv`` (checked; the script stops if they differ beyond float noise).

Writes ``<out>.md`` and ``<out>.csv`` (per ensemble size: mean CoV per family, tissue and arm,
and the branch-vs-no-branch paired Wilcoxon over all held-out subjects), and
``<runs>/ensemble/seed<s>/evaluation.csv`` (resumable: a seed whose file exists is reused).

Usage::

    taskset -c 0 python benchmarks/physics_seg_ensemble.py --runs runs/ps_bench12 \\
        --seeds 0,1,2,3,4,5 --eval-seeds 0,2,4 --sizes 1,3,6 --tabulate-none
    taskset -c 1 python benchmarks/physics_seg_ensemble.py --runs runs/ps_bench12 \\
        --seeds 0,1,2,3,4,5 --eval-seeds 1,3,5 --sizes 1,3,6 --tabulate-none
    python benchmarks/physics_seg_ensemble.py --runs runs/ps_bench12 --seeds 0,1,2,3,4,5 \\
        --eval-seeds 0,1,2,3,4,5 --sizes 1,3,6 --out benchmarks/results/physics_seg_ensemble
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from ml_collections import ConfigDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.physics_seg import decomposition, evaluation_rows, paired
from phyjax.evaluate import report as tables
from phyjax.experiments.common import read_run
from phyjax.experiments.physics_seg import _heads, evaluate_across_protocols
from phyjax.segment import evaluate
from phyjax.segment.model import physics_vector
from phyjax.segment.train import Segmenter

#: Arm -> (the method name in a run's evaluation.csv, the model's folder in a run).
ARMS = {"physics": "physics_unet", "no_branch": "no_branch_unet"}
#: Relative tolerance of the k = 1 check against the run's own evaluation.csv.
RTOL = 1e-4


def load_config(run: str) -> ConfigDict:
    return read_run(run, split=False)[0]


class Member:
    """One trained U-Net whose probabilities of the last image are kept, so that every ensemble
    that contains it runs it once per image."""

    def __init__(self, seg: Segmenter):
        self.seg, self._last, self._probs = seg, (None, None), None

    def __call__(self, img, mask, p):
        # the objects themselves are kept (not their ids, which Python reuses once freed)
        if not (img is self._last[0] and p is self._last[1]):
            self._probs = self.seg.predict(img, mask, physics_vector(p) if self.seg.physics
                                           else None)
            self._last = (img, p)
        return self._probs


def ensemble_methods(members: dict[str, list[Member]], own: int, sizes) -> dict:
    """``{"<arm>_x<k>": (img, mask, protocol, b1) -> mean probabilities of k members}``, the
    members taken in the order ``own, own + 1, ...`` (mod their number)."""
    methods = {}
    for arm, ms in members.items():
        order = [ms[(own + j) % len(ms)] for j in range(len(ms))]
        for k in sizes:
            chosen = order[:k]
            methods[f"{arm}_x{k}"] = (lambda img, mask, p, b1, chosen=chosen:
                                      np.mean([m(img, mask, p) for m in chosen], axis=0))
    return methods


def check_single(rows: list[dict], run: str) -> float:
    """Largest relative difference between the k = 1 rows and the run's own evaluation.csv;
    raises SystemExit beyond :data:`RTOL`."""
    own = {(r["subject"], r["family"], r["protocol"], r["method"]): r
           for r in evaluation_rows(run)}
    worst = 0.0
    for r in rows:
        arm, _, k = r["method"].rpartition("_x")
        if k != "1":
            continue
        ref = own[(r["subject"], r["family"], str(r["protocol"]), arm)]
        for t in ("csf", "gm", "wm"):
            a, b = float(r[f"vol_{t}"]), float(ref[f"vol_{t}"])
            worst = max(worst, abs(a - b) / abs(b))
    if worst > RTOL:
        raise SystemExit(f"{run}: the single U-Nets' volumes differ from its evaluation.csv by "
                         f"up to {worst:.2e} (relative): not the run's images or models.")
    return worst


def evaluate_seed(runs: str, seed: int, seeds: list[int], sizes: list[int], out_root: str,
                  subjects: int = 0) -> str:
    """Evaluate seed ``seed``'s held-out subjects (the first ``subjects`` when > 0) with the
    ensembles; writes ``<out_root>/seed<seed>/evaluation.csv`` and returns its path (an
    existing one is reused)."""
    out_dir = os.path.join(out_root, f"seed{seed}")
    path = os.path.join(out_dir, "evaluation.csv")
    if os.path.exists(path):
        return path
    run = os.path.join(runs, f"seed{seed}")
    config = load_config(run)
    config.progress = True
    members = {arm: [Member(Segmenter.load(os.path.join(runs, f"seed{s}", folder, "model")))
                     for s in seeds] for arm, folder in ARMS.items()}
    heads = _heads(config)[config.data.n_train:]
    heads = heads[:subjects] if subjects > 0 else heads
    t0 = time.time()
    rows = evaluate_across_protocols(config, heads,
                                     ensemble_methods(members, seeds.index(seed), sizes))
    worst = check_single(rows, run) if 1 in sizes else float("nan")
    os.makedirs(out_dir, exist_ok=True)
    tables.write_rows(rows, path)
    with open(os.path.join(out_dir, "timing.json"), "w") as f:
        json.dump({"seconds": time.time() - t0, "single_max_rel_diff": worst}, f)
    print(f"seed {seed}: {time.time() - t0:.0f} s; k = 1 against the run's evaluation.csv: "
          f"max relative volume difference {worst:.1e}", flush=True)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/ps_bench12")
    ap.add_argument("--seeds", default="0,1,2,3,4,5", help="the seeds whose U-Nets are members")
    ap.add_argument("--eval-seeds", default=None,
                    help="the seeds whose held-out subjects are evaluated (default: --seeds)")
    ap.add_argument("--sizes", default="1,3,6")
    ap.add_argument("--out", default="benchmarks/results/physics_seg_ensemble")
    ap.add_argument("--subjects", type=int, default=0,
                    help="> 0: only the first N held-out subjects of each seed (a quick check)")
    ap.add_argument("--root", default="",
                    help="where the ensembles' evaluation.csv go (default <runs>/ensemble)")
    ap.add_argument("--tabulate-none", action="store_true",
                    help="only evaluate (for running the seeds on two cores)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_seeds = [int(s) for s in (args.eval_seeds or args.seeds).split(",")]
    sizes = [int(k) for k in args.sizes.split(",")]
    if max(sizes) > len(seeds):
        raise SystemExit(f"ensembles of up to {max(sizes)} need as many seeds; got {seeds}.")
    root = args.root or os.path.join(args.runs, "ensemble")
    t0 = time.time()
    for s in eval_seeds:
        evaluate_seed(args.runs, s, seeds, sizes, root, args.subjects)
    wall = time.time() - t0
    if args.tabulate_none:
        return
    per_seed = {s: [{**r, **{k: float(v) for k, v in r.items()
                             if k.startswith(("vol_", "dice_"))}}
                    for r in evaluation_rows(os.path.join(root, f"seed{s}"))]
                for s in eval_seeds}
    for s, rows in per_seed.items():
        missing = {f"{a}_x{k}" for a in ARMS for k in sizes} - {r["method"] for r in rows}
        if missing:
            raise SystemExit(f"seed {s}: its saved ensembles lack {sorted(missing)}; evaluate "
                             "it again with these --sizes (move its folder away first).")
    table, lines = summarize(per_seed, sizes)
    timing = []
    for s in eval_seeds:
        path = os.path.join(root, f"seed{s}", "timing.json")
        if os.path.exists(path):
            with open(path) as f:
                t = json.load(f)
            timing.append(f"seed {s} {t['seconds']:.0f} s (k = 1 vs the run: max relative "
                          f"volume difference {t['single_max_rel_diff']:.1e})")
    command = "python benchmarks/physics_seg_ensemble.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    header = [f"# Ensembles of trained U-Nets: branch vs no branch ({args.runs})", "",
              f"Command: `{command}`", "",
              (f"Held-out subjects of seeds {eval_seeds}; members: the U-Nets of seeds {seeds}; "
               f"wall {wall / 60:.1f} min (0 when every seed was reused)."), "",
              "Evaluation per seed (one core): " + ("; ".join(timing) or "not recorded") + ".",
              ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(header + lines) + "\n")
    tables.write_rows(table, args.out + ".csv")
    print("\n".join(header + lines))


def by_size(rows: list[dict], k: int) -> list[dict]:
    """The rows of ensembles of ``k`` U-Nets, renamed to their arm (``physics``,
    ``no_branch``)."""
    out = []
    for r in rows:
        arm, _, size = r["method"].rpartition("_x")
        if int(size) == k:
            out.append({**r, "method": arm})
    return out


def summarize(per_seed_rows: dict[int, list[dict]], sizes: list[int]
              ) -> tuple[list[dict], list[str]]:
    """Per ensemble size, family and tissue: mean CoV of both arms over all held-out subjects,
    the paired comparison (:func:`benchmarks.physics_seg.paired`: subjects where the branch's
    CoV is the lower, median ratio, Wilcoxon p), the protocol pattern and subject x protocol
    remainder (:func:`benchmarks.physics_seg.decomposition`, mean over seeds, %) and mean
    Dice."""
    table = []
    for k in sizes:
        subjects, parts = {}, {}
        for s, rows in per_seed_rows.items():
            mine = by_size(rows, k)
            for r in evaluate.cov_table(mine):
                subjects.setdefault(s, {})[(r["family"], r["method"], r["subject"])] = r
            for key, v in decomposition(mine).items():
                parts.setdefault(key, []).append(v)
        for pair in paired(subjects):
            family, t = pair["family"], pair["tissue"].lower()
            arm_rows = {a: [r for rs in subjects.values() for (f, m, _), r in rs.items()
                            if f == family and m == a] for a in ARMS}
            row = {"k": k, "family": family, "tissue": pair["tissue"], "pairs": pair["pairs"],
                   "branch_lower": pair["physics_lower"],
                   "median_ratio": pair["median_ratio"], "p": pair["wilcoxon_p"]}
            for a, rs in arm_rows.items():
                row[f"cov_{a}"] = float(np.mean([r[f"cov_{t}"] for r in rs]))
                row[f"dice_{a}"] = float(np.mean([r[f"dice_{t}"] for r in rs]))
                pat, rem = np.mean(parts[(family, a, pair["tissue"])], axis=0)
                row[f"pattern_{a}"], row[f"remainder_{a}"] = float(pat), float(rem)
            table.append(row)
    lines = [("| U-Nets per arm | family, tissue | CoV branch / no branch | subjects branch lower "
             "| median ratio | paired p | pattern (%) branch / no branch | remainder (%) "
             "branch / no branch | Dice branch / no branch |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['k']} | {r['family']} {r['tissue']} | {r['cov_physics']:.4f} / "
                     f"{r['cov_no_branch']:.4f} | {r['branch_lower']} of {r['pairs']} | "
                     f"{r['median_ratio']:.2f} | {r['p']:.3g} | {r['pattern_physics']:.2f} / "
                     f"{r['pattern_no_branch']:.2f} | {r['remainder_physics']:.2f} / "
                     f"{r['remainder_no_branch']:.2f} | {r['dice_physics']:.3f} / "
                     f"{r['dice_no_branch']:.3f} |")
    return table, lines


if __name__ == "__main__":
    main()
