"""Seconds per PhyCHarm training step with one T1 per voxel against two-tissue voxels
(``config.model.partial_volume``; docs/phycharm_ablation.md, item 50).

One batch of the benchmark's shape (8 slices of 96 x 112, random values: the cost does not
depend on them), one MPRAGE protocol with its readout train as source and target, the default
``configs/benchmark.py`` model and active loss terms; each variant compiled once, then
``--steps`` steps timed.  Also the re-synthesis alone (``synthesize_maps``), forward and gradient.

Usage::

    python benchmarks/partial_volume_step.py [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.config_files import load_config
from phyjax.methods import networks, phycharm as P
from phyjax.models.phycharm import synthesize_maps
from phyjax.physics.sequences import Protocol
from phyjax.train import TrainState, make_train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from phycharm_step import random_batch, seconds_per_step  # noqa: E402


def timed(fn, *args, repeats):
    """Mean seconds of ``fn(*args)`` over ``repeats`` calls, after one untimed call."""
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t) / repeats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args(argv)
    cfg = load_config("benchmark")
    rng = np.random.default_rng(0)
    b, h, w = 8, 96, 112
    protocol = P._f32(Protocol(tr=2.3, te=0.003, ti=0.9, flip_angle=0.15, field_strength=3.0,
                               tr_readout=0.0065, n_readouts=176.0, sequence="mprage"))
    t1 = jnp.asarray(3 * rng.random((b, h, w, 1), np.float32))
    m0 = jnp.asarray(rng.random((b, h, w, 1), np.float32))
    b0 = jnp.full((b,), 3.0, jnp.float32)
    for pv in ("single", "two_tissue"):
        def energy(t1, m0, pv=pv):
            return jnp.sum(synthesize_maps(protocol, t1, m0, b0, pv) ** 2)
        fwd = timed(jax.jit(energy), t1, m0, repeats=10)
        grad = timed(jax.jit(jax.grad(energy, argnums=(0, 1))), t1, m0, repeats=10)
        print(f"{pv}: re-synthesis {1e3 * fwd:.1f} ms, its gradient {1e3 * grad:.1f} ms",
              flush=True)
    for pv in ("single", "two_tissue"):
        m = {k: cfg.model[k] for k in P.MODEL_KEYS}
        m["base"] = P.resolve_base(m["base"], False)
        m["partial_volume"] = pv
        model, tx = P.make_model(m), networks.make_optimizer(cfg.train)
        batch = random_batch(b, h, w, 2 * m["context"] + 1, rng)
        ref = np.float32(P.reference_level(P.model_protocol(protocol)))
        weights = {k: np.float32(cfg.train[k]) for k in P.WEIGHTS}
        step = make_train_step(P.make_loss(model, P.active_terms(cfg.train)), tx)
        state = TrainState.create(P.init_params(model, (h, w), m["context"], 0), tx)
        inputs = (batch, protocol, protocol, ref, weights)
        print(f"{pv}: training step {seconds_per_step(step, state, inputs, args.steps):.3f} s",
              flush=True)


if __name__ == "__main__":
    main()
