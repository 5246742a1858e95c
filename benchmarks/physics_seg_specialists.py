"""How low can the volume CoV go?  One U-Net per evaluation protocol, trained on that protocol
alone (a *specialist*), against the physics U-Net and the no-branch U-Net of a default run.

A specialist is told its protocol in the strongest way there is: it never sees another.  Its
volumes on a held-out subject imaged with that protocol are therefore what a network that knows
the protocol exactly can reach with the same data, architecture and training budget.  The CoV
across protocols of the specialists' volumes (specialist j on protocol j, same held-out subjects,
scanner effects and noise as the default run of the same seed) is the floor the physics branch
could bring the generalist down to.  If the specialists' CoV is no lower than the no-branch
U-Net's, the protocol-dependent volume error is not something knowing the protocol removes: it
is set by what each protocol's image contains (how well it separates the tissues at a
partial-volume voxel), and no conditioning on the parameters can make the volumes consistent.

Each specialist is one ``python -m phyjax.main --config=configs/physics_seg.py`` run with every
field of its family fixed at the evaluation protocol's value (``data.<family>.<field>=v``),
``data.families=(<family>,)``, ``data.range_margin=0``, one evaluation protocol, the no-branch
U-Net only and no bridging; the other settings are the defaults (same seed: same anatomies,
held-out subjects, scanner effects and noise keys).  Resumable: a finished run is reused.

Usage::

    taskset -c 1 python benchmarks/physics_seg_specialists.py --family mprage \\
        --root runs/spec --reference runs/ps_bench/seed0 \\
        --out benchmarks/results/physics_seg_specialists_mprage_seed0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.physics_seg import deviations, evaluation_rows, run_seed, volume_error
from phyjax.experiments.common import read_run
from phyjax.experiments.physics_seg import evaluation_counts, mprage_fixed, ranges_of
from phyjax.segment import evaluate, simulate
from phyjax.segment.report import LABELS

#: The protocol fields a specialist's family is fixed at (config units: s, degrees, T).
FIELDS = {"mprage": ("tr", "te", "ti", "flip_angle", "tr_readout", "n_readouts",
                     "field_strength"),
          "spgr": ("tr", "te", "flip_angle", "field_strength")}


def protocols(reference: str, family: str) -> tuple[int, list[dict]]:
    """The seed and the evaluation protocols of ``family`` (config units, in its order) of the
    reference run, from its ``config.json``."""
    config, _ = read_run(reference, split=False)
    n = evaluation_counts(config)[family]
    out = []
    for p in simulate.evaluation_protocols(family, ranges_of(config), n, config.seed,
                                           mprage_fixed(config)):
        v = {"tr": float(p.tr), "te": float(p.te), "ti": float(p.ti),
             "flip_angle": float(np.rad2deg(float(p.flip_angle))),
             "tr_readout": float(p.tr_readout), "n_readouts": float(p.n_readouts),
             "field_strength": float(p.field_strength)}
        out.append({k: v[k] for k in FIELDS[family]})
    return int(config.seed), out


def specialist_overrides(family: str, values: dict) -> list[str]:
    # two evaluation protocols, both the fixed one (the run's CoV needs two; they differ in
    # nothing, noise included: the volumes of protocol 0 are used)
    count = {"mprage": "eval.n_mprage=2", "spgr": "eval.n_spgr=2"}[family]
    return ([f"data.{family}.{k}={v!r}" for k, v in values.items()]
            + [f"data.families=('{family}',)", "data.range_margin=0.0", count,
               "eval.methods=('no_branch',)", "bridging.enabled=False"])


def numeric(r: dict) -> dict:
    out = dict(r)
    for k, v in r.items():
        if k.startswith(("vol_", "dice_", "gold_vol_")):
            out[k] = float(v)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=tuple(FIELDS), default="mprage")
    ap.add_argument("--root", default="runs/spec")
    ap.add_argument("--reference", required=True,
                    help="a finished physics_seg run: its seed, evaluation protocols (config.json) "
                         "and its methods' volumes (evaluation.csv)")
    ap.add_argument("--out", default="benchmarks/results/physics_seg_specialists")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the specialists (repeatable; the reference run's "
                         "settings are not copied: give the ones it was run with)")
    args = ap.parse_args(argv)
    seed, ps = protocols(args.reference, args.family)
    t0 = time.time()
    rows = []
    for j, values in enumerate(ps):
        workdir = os.path.join(args.root, f"seed{seed}", f"{args.family}{j}")
        if not os.path.exists(os.path.join(workdir, "evaluation.csv")):
            os.makedirs(os.path.dirname(workdir), exist_ok=True)
            seconds = run_seed(seed, workdir,
                               specialist_overrides(args.family, values) + args.set)
            print(f"{args.family} protocol {j} {values}: {seconds:.0f} s", flush=True)
        for r in evaluation_rows(workdir):
            if int(r["protocol"]) == 0:
                rows.append({**numeric(r), "protocol": j, "method": "specialist"})
    wall = time.time() - t0
    ref = [numeric(r) for r in evaluation_rows(args.reference) if r["family"] == args.family]
    table = evaluate.cov_table(rows + ref)
    methods = ["specialist"] + sorted({r["method"] for r in ref})
    subjects = sorted({r["subject"] for r in table})
    by = {(r["method"], r["subject"]): r for r in table}
    err = volume_error(rows + ref)
    summary = []
    for m in methods:
        cov = np.array([[by[(m, s)]["cov_gm"], by[(m, s)]["cov_wm"]] for s in subjects])
        summary.append({"method": m, "cov_gm": float(cov[:, 0].mean()),
                        "cov_wm": float(cov[:, 1].mean()),
                        "cov_gm_per_subject": " ".join(f"{x:.4f}" for x in cov[:, 0]),
                        "cov_wm_per_subject": " ".join(f"{x:.4f}" for x in cov[:, 1]),
                        "abs_dv_gm": float(err[(args.family, m)][0]),
                        "abs_dv_wm": float(err[(args.family, m)][1])})
    # per protocol: mean over subjects of the volume's deviation from the subject's own mean
    pattern = {(m, t): d.mean(0) for (_, m, t), d in deviations(rows + ref).items()}
    command = "python benchmarks/physics_seg_specialists.py " + " ".join(
        a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
    labels = {"specialist": "specialist U-Nets (one per protocol, no branch)", **LABELS}
    lines = [f"# Per-protocol specialists: the CoV floor ({args.family}, seed {seed})", "",
             f"Command: `{command}`", "",
             (f"Reference run: `{args.reference}`. Specialists' wall {wall / 60:.1f} min "
             f"(0 when reused)."), "",
             ("| method | CoV GM | CoV WM | per subject GM | per subject WM | \\|ΔV\\| GM (%) | "
             "\\|ΔV\\| WM (%) |"), "|---|---|---|---|---|---|---|"]
    lines += [f"| {labels.get(r['method'], r['method'])} | {r['cov_gm']:.4f} | "
              f"{r['cov_wm']:.4f} | [{r['cov_gm_per_subject']}] | [{r['cov_wm_per_subject']}] "
              f"| {r['abs_dv_gm']:.2f} | {r['abs_dv_wm']:.2f} |" for r in summary]
    lines += ["", ("Volume deviation from the subject's own mean over the protocols (%, mean over "
              "subjects), GM / WM:"), "",
              "| protocol | " + " | ".join(labels.get(m, m) for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for j, values in enumerate(ps):
        name = ", ".join(f"{k} {v:.4g}" for k, v in values.items()
                         if k in ("tr", "te", "ti", "flip_angle"))
        lines.append(f"| {j}: {name} | " + " | ".join(
            f"{pattern[(m, 'GM')][j]:+.1f} / {pattern[(m, 'WM')][j]:+.1f}"
            for m in methods) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"command": command, "protocols": ps, "summary": summary}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
