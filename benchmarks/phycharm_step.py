"""Seconds per PhyCHarm training step: every loss term computed (terms off in the config at
weight 0) against only the config's active terms (:func:`phyjax.methods.phycharm.active_terms`).

One batch of the benchmark's shape (16 slices of 96 x 112, the configured slice context), random
values (the step's cost does not depend on them), the default ``configs/benchmark.py`` model
and weights; each variant compiled once, then ``--steps`` steps timed, alternating twice.

Usage::

    python benchmarks/phycharm_step.py [--steps 8]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.config_files import load_config
from phyjax.methods import networks, phycharm as P
from phyjax.physics.sequences import Protocol
from phyjax.train import TrainState, make_train_step


def random_batch(b: int, h: int, w: int, c: int, rng) -> dict:
    """A training batch of ``b`` slices of ``h`` x ``w`` with ``c`` context channels, random
    values (a step's cost does not depend on them)."""
    return {"source": rng.random((b, h, w, c), np.float32),
            "target": rng.random((b, h, w, 1), np.float32),
            "mask": (rng.random((b, h, w, 1)) > 0.3).astype(np.float32),
            "t1": 3 * rng.random((b, h, w, 1), np.float32),
            "m0": rng.random((b, h, w, 1), np.float32)}


def timed_steps(step, state, inputs, steps: int):
    """``(first, mean, state)``: seconds of the first call of the jit-compiled ``step`` (its
    compilation, if not yet compiled for these inputs), mean seconds of the ``steps`` calls after
    it, and the state they leave (the one passed in is donated)."""
    t = time.perf_counter()
    state, metrics = step(state, inputs)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, inputs)
    jax.block_until_ready(metrics)
    return first, (time.perf_counter() - t) / steps, state


def seconds_per_step(step, state, inputs, steps: int) -> float:
    """Mean seconds of ``steps`` calls of the jit-compiled ``step``, after one untimed call
    (its compilation)."""
    return timed_steps(step, state, inputs, steps)[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    cfg = load_config("benchmark")
    m = {k: cfg.model[k] for k in P.MODEL_KEYS}
    m.update(P.resolve_base_settings(m, bool(cfg.target.randomize)))
    model, tx = P.make_model(m), networks.make_optimizer(cfg.train)
    b, h, w, c = cfg.train.batch_size, 96, 112, 2 * m["context"] + 1
    batch = random_batch(b, h, w, c, np.random.default_rng(0))
    protocol = P._f32(Protocol(tr=2.3, te=0.003, ti=0.9, flip_angle=0.15, field_strength=3.0,
                               tr_readout=0.0065, n_readouts=176.0, sequence="mprage"))
    ref = np.float32(P.reference_level(P.model_protocol(protocol)))
    # the weights a training with traveling-subject pairs resolves (w_hist: item 57)
    resolved = P.resolve_loss_weights(cfg.train, "paired", cfg.model.calibrate)
    weights = {k: np.float32(v) for k, v in resolved.items()}
    params = P.init_params(model, (h, w), m["context"], 0)
    active = P.active_terms(resolved)
    print(f"active terms: {', '.join(active)}; off: "
          f"{', '.join(k for k in P.WEIGHTS if k not in active)}")
    for label, terms in [("all terms", P.WEIGHTS), ("active terms", active)] * 2:
        step = make_train_step(P.make_loss(model, terms), tx)
        state = TrainState.create(jax.tree.map(jnp.array, params), tx)
        inputs = (batch, protocol, protocol, ref, weights)
        print(f"{label:13s} {seconds_per_step(step, state, inputs, args.steps):.3f} s/step")


if __name__ == "__main__":
    main()
