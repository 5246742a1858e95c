"""Seconds per PhyCHarm training step with one T1 per voxel against two-tissue voxels
(``config.model.partial_volume``; docs/phycharm_ablation.md, item 50).

The re-synthesis alone (``synthesize_maps``, 8 slices of 96 x 112, one MPRAGE protocol with
its readout train), forward and gradient; then a whole training step (the default
``configs/phycharm.py`` model and active loss terms, a batch of the main command's shape: 8
slices of 80 x 104, random values -- the cost does not depend on them) with each default site's
protocol as the source and the reference MPRAGE as the target, the two voxel models in one
process one after the other: each protocol's first call (its compilation; one per sequence
family, the others reuse it) and then ``--steps`` steps.

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
from phycharm_step import random_batch, timed_steps  # noqa: E402


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
    cfg = load_config("phycharm")
    sites = {name: site_protocol(site) for name, site in cfg.data.sites.items()}
    target = sites.pop(cfg.data.target_site)
    ref = np.float32(P.reference_level(P.model_protocol(target)))
    # the weights a training with traveling-subject pairs resolves (w_hist: item 57)
    resolved = P.resolve_loss_weights(cfg.train, "paired", cfg.model.calibrate)
    weights = {k: np.float32(v) for k, v in resolved.items()}
    b, h, w = cfg.train.batch_size, 80, 104
    for pv in ("single", "two_tissue"):
        m = {k: cfg.model[k] for k in P.MODEL_KEYS}
        m.update(P.resolve_base_settings(m, False))
        m["partial_volume"] = pv
        model, tx = P.make_model(m), networks.make_optimizer(cfg.train)
        batch = random_batch(b, h, w, 2 * m["context"] + 1, rng)
        step = make_train_step(P.make_loss(model, P.active_terms(resolved)), tx)
        state = TrainState.create(P.init_params(model, (h, w), m["context"], 0), tx)
        for name, source in sites.items():
            first, mean, state = timed_steps(step, state, (batch, source, target, ref, weights),
                                             args.steps)
            print(f"{pv:10s} source {name:16s} first call {first:5.1f} s, then "
                  f"{mean:.3f} s/step", flush=True)


def site_protocol(site) -> Protocol:
    """The :class:`Protocol` of a ``config.data.sites`` entry (flip angle degrees -> rad), in
    float32 as training passes it."""
    return P._f32(Protocol(tr=site.tr, te=site.te, ti=site.ti,
                           flip_angle=float(np.deg2rad(site.flip_angle)),
                           field_strength=site.field_strength, tr_readout=site.tr_readout,
                           n_readouts=float(site.n_readouts), sequence=site.sequence))

if __name__ == "__main__":
    main()
