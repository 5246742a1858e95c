"""Method registry: ``config.method`` names the experiment module that runs a config."""

from __future__ import annotations

import importlib

METHODS = {"phycharm": "phyjax.experiments.phycharm",
           "benchmark": "phyjax.experiments.benchmark",
           "inspect": "phyjax.experiments.inspect",
           "physics_seg": "phyjax.experiments.physics_seg"}


def run(config, workdir: str):
    """Run ``config`` with the experiment named by ``config.method`` (default ``phycharm``)."""
    method = config.get("method", "phycharm")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {sorted(METHODS)}.")
    return importlib.import_module(METHODS[method]).run(config, workdir)
