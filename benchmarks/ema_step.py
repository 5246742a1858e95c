"""What the parameters' moving average (config.train.ema) costs per training step.

Times the jit-compiled update of :func:`phyjax.methods.networks.params_ema` alone on a trained
network's parameters (a harmonizer folder's params.msgpack), against the training step's time
read from the same run's train_log.csv (its median seconds_per_step after the first rows).

  python benchmarks/ema_step.py --harmonizer runs/abl/def51_s0/phycharm/harmonizer
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import jax
import numpy as np

from phyjax.methods import networks


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--harmonizer", required=True, help="a harmonizer folder (params.msgpack)")
    ap.add_argument("--decay", type=float, default=0.995)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)

    params = jax.tree.map(np.asarray, networks.load_params(args.harmonizer))
    n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
    tx = networks.params_ema(args.decay)
    state = tx.init(params)
    updates = jax.tree.map(lambda p: np.full_like(p, 1e-4), params)
    update = jax.jit(tx.update)
    _, state = update(updates, state, params)        # compile
    jax.block_until_ready(state)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, state = update(updates, state, params)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    ema_s = statistics.median(times)

    log = os.path.join(os.path.dirname(os.path.abspath(args.harmonizer)), "train_log.csv")
    step_s = float("nan")
    if os.path.exists(log):
        with open(log, newline="") as f:
            rows = [float(r["seconds_per_step"]) for r in csv.DictReader(f)
                    if r.get("seconds_per_step")]
        if len(rows) > 2:
            step_s = statistics.median(rows[2:])    # past compilation
    print(f"parameters: {n:,} ({n * 4 / 2**20:.1f} MiB in float32)")
    print(f"moving-average update: {ema_s * 1e3:.2f} ms per step (median of {args.repeats})")
    print(f"training step ({log}): {step_s:.3f} s (median)")
    print(f"share: {100 * ema_s / step_s:.2f} % of a training step")


if __name__ == "__main__":
    main()
