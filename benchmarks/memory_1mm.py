"""Peak memory and seconds per training step of PhyCHarm at 1 mm, as the number of subjects grows.

Each configuration runs in its own process (so peak RSS -- ``VmHWM`` of ``/proc/self/status`` --
is its own): the embedded default dataset at 1 mm with N subjects x 5 sites (built once into the
cache), loaded with ``data.stream`` on or off, then PhyCHarm trained for a few steps in the given
pairs mode.  Seconds per step are the median of ``train_log.csv``'s ``seconds_per_step`` after the
first logged interval (which includes compilation).

Usage::

    python benchmarks/memory_1mm.py --subjects 10 40 --stream on off --pairs paired simulated
        [--steps 12] [--out benchmarks/results/memory_1mm.md]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _config():
    from phyjax.config_files import load_config

    return load_config("phycharm")


def peak_rss_gib() -> float:
    """Peak resident set size of this process (GiB), from ``/proc/self/status`` VmHWM."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def worker(subjects: int, stream: str, pairs: str, steps: int) -> dict:
    """One configuration, in this process."""
    from phyjax import methods
    from phyjax.data.dataset import load_dataset

    cfg = _config()
    with cfg.unlocked():
        cfg.data.voxel_size = 1
        cfg.data.n_subjects = subjects
        cfg.data.n_test = 2
        cfg.data.stream = stream
        cfg.train.pairs = pairs
        cfg.train.steps = steps
        cfg.train.log_every = 2
        cfg.train.checkpoint_every = steps
    with tempfile.TemporaryDirectory(prefix="memory-1mm-") as workdir:
        t = time.time()
        data = load_dataset(cfg.data, progress=False, workdir=workdir)
        load_s = time.time() - t
        rss_loaded = peak_rss_gib()
        train = data.training_set(data.split(cfg.data.n_test, cfg.data.seed))
        t = time.time()
        methods.fit("phycharm", cfg, train, workdir=workdir, progress=False)
        fit_s = time.time() - t
        with open(os.path.join(workdir, "train_log.csv")) as f:
            per_step = [float(r["seconds_per_step"]) for r in csv.DictReader(f)][1:]
    return {"subjects": subjects, "scans": sum(len(v) for v in data.volumes.values()),
            "stream": stream, "pairs": pairs, "steps": steps, "load_s": load_s,
            "fit_s": fit_s, "seconds_per_step": statistics.median(per_step),
            "peak_rss_after_load_gib": rss_loaded, "peak_rss_gib": peak_rss_gib()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--stream", nargs="+", default=["on"])
    ap.add_argument("--pairs", nargs="+", default=["paired", "simulated"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "memory_1mm.md"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:   # the dataset into the cache, in its own process (not counted)
        from phyjax.data import dataset, synthetic
        cfg = _config()
        with cfg.unlocked():
            cfg.data.voxel_size, cfg.data.n_subjects = 1, args.subjects[0]
        synthetic.build_default_dataset(cfg.data, dataset.cache_dir(cfg.data), progress=False)
        return
    if args.worker:
        print(json.dumps(worker(args.subjects[0], args.stream[0], args.pairs[0], args.steps)))
        return
    for n in args.subjects:
        subprocess.run([sys.executable, __file__, "--build", "--subjects", str(n)], check=True)
    rows = []
    for n, stream, pairs in itertools.product(args.subjects, args.stream, args.pairs):
        cmd = [sys.executable, __file__, "--worker", "--subjects", str(n), "--stream", stream,
               "--pairs", pairs, "--steps", str(args.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{cmd}: exit {done.returncode}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = ["| subjects (scans) | volumes | pairs | peak RSS after loading (GiB) | peak RSS "
             "(GiB) | s / step | load (s) |", "|---|---|---|---|---|---|---|"]
    where = {"on": "on disk", "off": "in memory", "auto": "auto"}
    lines += [f"| {r['subjects']} ({r['scans']}) | {where[r['stream']]} | {r['pairs']} | {r['peak_rss_after_load_gib']:.2f} | {r['peak_rss_gib']:.2f} | "
              f"{r['seconds_per_step']:.2f} | {r['load_s']:.0f} |" for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(f"PhyCHarm at 1 mm (default model, batch 16), `python benchmarks/memory_1mm.py "
                f"{' '.join(argv or sys.argv[1:])}`\n\n" + "\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
