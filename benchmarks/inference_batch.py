"""Seconds per scan of a trained slice network's inference against its inference batch
(``config.eval.batch_size``), over every slice and over every second slice (``z_slices``, what
the site maps pool with ``config.model.calibrate_slice_step=2``; docs/phycharm_ablation.md,
items 51 and 53).

A volume's slices are cut into batches of the inference batch and the last one is padded with
empty slices (``phyjax.methods.networks.predict_volume``), so the batch sets how much of each
pass is padding; each slice's output does not depend on its batch-mates, so the outputs of
every batch size must be equal (checked here: the largest absolute difference to the first
batch size's).  Every batch size is compiled once before any timing; the sizes then take turns,
``--repeats`` rounds over the source scans of ``--subjects`` training subjects, with the
network's saved test-time augmentation.

Usage::

    python benchmarks/inference_batch.py --run runs/phycharm [--method phycharm] \
        [--batch 32 --batch 16 --batch 8] [--subjects 1] [--repeats 2] \
        [--out benchmarks/results/inference_batch.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.experiments.common import read_run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a phycharm run, or a benchmark run with --method")
    ap.add_argument("--method", default="", help="benchmark run: the method's folder")
    ap.add_argument("--batch", type=int, action="append", default=[])
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    batches = args.batch or [32, 16, 8]
    cfg, split = read_run(args.run)
    data = load_dataset(cfg.data, progress=False, paired=True)
    h = methods.load(os.path.join(args.run, args.method, "harmonizer"))
    h.cfg["calibrate"] = "none"          # the network's own output (what the site maps pool)
    vols = [v for subject in split["train"][:args.subjects]
            for site, v in sorted(data.volumes[subject].items()) if site != data.target_site]
    subsets = {"every slice": lambda v: None,
               "every 2nd slice": lambda v: np.arange(0, v.image.shape[2], 2)}
    for b in batches:                     # compile every shape before timing
        h.batch_size = b
        h.harmonize(vols[0])
    times: dict = {}
    outputs: dict = {}
    for _ in range(args.repeats):
        for name, z in subsets.items():
            for b in batches:
                h.batch_size = b
                t0 = time.perf_counter()
                out = [h.harmonize(v, z_slices=z(v)) for v in vols]
                times.setdefault((name, b), []).append((time.perf_counter() - t0) / len(vols))
                outputs.setdefault((name, b), out)
                print(f"{name}, batch {b}: {times[name, b][-1]:.2f} s/scan", flush=True)
    lines = [f"Inference seconds per scan against the inference batch: `python "
             f"benchmarks/inference_batch.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "", f"{len(vols)} source scans of {args.subjects} training subject(s), slices "
             f"{sorted({v.image.shape[2] for v in vols})}, test-time augmentation "
             f"`{h.cfg.get('tta', 'none')}`; mean of {args.repeats} rounds (min-max); max |diff|: "
             f"largest absolute difference of the harmonized images to batch {batches[0]}'s.", "",
             f"| slices run | batch | s / scan | vs batch {batches[0]} | max \\|diff\\| |",
             "|---|---|---|---|---|"]
    for name in subsets:
        base = float(np.mean(times[name, batches[0]]))
        for b in batches:
            t = times[name, b]
            diff = max(float(np.abs(a - r).max())
                       for a, r in zip(outputs[name, b], outputs[name, batches[0]]))
            lines.append(f"| {name} | {b} | {np.mean(t):.2f} ({min(t):.2f}-{max(t):.2f}) | "
                         f"{np.mean(t) / base - 1:+.0%} | {diff:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
