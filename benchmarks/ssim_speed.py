"""Speed and float32 accuracy of the SSIM map (``phyjax.ssim.ssim_map``), the SSIM loss's and
the SSIM metric's one implementation.

For each shape: the time of ``jax.jit(jax.value_and_grad(mean SSIM))`` (one warm-up call for
compilation, then the best of ``--repeats``), and, on images shifted away from zero by
``offset``, the largest difference of the float32 map from scikit-image's float64 one (the
oracle).  Until 2026-12-04 the map used running sums (``cumsum``) and E[x^2] - E[x]^2 on the raw
values: on one core of the development machine the same value+grad took 18.6 ms (8x96x96) and
2.05 s (160x192x160), and at offset 1000 it missed skimage by ~10^3.

Run (about 30 s on one core)::

    .venv/bin/python benchmarks/ssim_speed.py [--repeats 5]

Prints a markdown table; never read a bare time from a shared machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from skimage.metrics import structural_similarity

from phyjax.ssim import ssim_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| shape | value+grad (ms) | max |float32 - skimage float64| at offset 0 / 100 / 1000 |")
    print("|---|---|---|")
    for shape in ((8, 96, 96), (160, 192, 160)):
        x = jnp.asarray(rng.random(shape), jnp.float32)
        y = jnp.asarray(rng.random(shape), jnp.float32)
        f = jax.jit(jax.value_and_grad(lambda a, y=y: ssim_map(a, y, 1.0).mean()))
        jax.block_until_ready(f(x))
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(x))
            best = min(best, time.perf_counter() - t)
        errors = []
        small = tuple(min(n, 40) for n in shape)
        ref = rng.random(small)
        noisy = ref + 0.1 * rng.standard_normal(small)
        for offset in (0.0, 100.0, 1000.0):
            _, full = structural_similarity(noisy + offset, ref + offset, data_range=1.0,
                                            full=True)
            ours = np.asarray(ssim_map((noisy + offset).astype(np.float32),
                                       (ref + offset).astype(np.float32), 1.0))
            errors.append(float(np.abs(ours - full).max()))
        print(f"| {'x'.join(map(str, shape))} | {1e3 * best:.1f} | "
              + " / ".join(f"{e:.1e}" for e in errors) + " |")


if __name__ == "__main__":
    main()
