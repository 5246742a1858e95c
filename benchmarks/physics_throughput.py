"""Throughput of the physics engine: closed forms (JAX vs NumPy) and the Bloch/EPG simulators.

In one run, side by side on the same machine:

1. voxels/s of the closed-form signal equations ``spgr``, ``mprage`` and ``bssfp`` on a
   ``size^3`` float32 volume: ``jax.jit`` of :mod:`phyjax.physics.signal` versus the same
   equations written in NumPy (float32, no upcasting), and their ratio;
2. the machine's memory bandwidth, estimated by timing a large ``np.copyto`` (bytes read +
   written per second), and each closed form's effective bandwidth (input maps read + output
   written per second) as a fraction of it, to tell whether it is bandwidth-bound or
   compute-bound (exp/sin/cos);
3. Bloch isochromat-steps/s (``jax.vmap`` of :func:`phyjax.physics.bloch.simulate` over
   isochromats, float32, CPU), and the EPG equivalent (voxels/s for the same RF-spoiled
   train, ``jax.vmap`` over voxels).

Timing: ``time.perf_counter``, one warm-up call (compilation) then the best of ``--repeats``.
Never read a bare time from a shared machine: read the ratios.

Run (about 1-2 min on a 2-core CPU; ``--size 128`` for a quick look)::

    .venv/bin/python benchmarks/physics_throughput.py
    .venv/bin/python benchmarks/physics_throughput.py --size 128 --repeats 3

Writes ``benchmarks/results/physics_throughput.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path


def _host_devices(argv) -> int:
    """``--host-devices N`` (default: one per CPU core), read before JAX is imported."""
    for i, arg in enumerate(argv):
        if arg.startswith("--host-devices"):
            return int(arg.split("=", 1)[1] if "=" in arg else argv[i + 1])
    return os.cpu_count() or 1


# XLA:CPU runs one device's elementwise fusion on one core; one host device per core lets a
# volume sharded along its first axis (jax.sharding) use every core.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                           f"{_host_devices(sys.argv)}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phyjax.physics import bloch, epg, signal  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Protocols (SI units): ADNI-like MPRAGE, a 3 T FLASH, a bSSFP.
SPGR = dict(tr=0.02, te=0.004, flip_angle=math.radians(15.0))
MPRAGE = dict(tr=2.3, ti=0.9, te=0.003)
BSSFP = dict(tr=0.005, flip_angle=math.radians(50.0))


def best_time(fn, repeats):
    """One warm-up call, then the best wall time (s) of ``repeats`` calls."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# --- the same equations in NumPy (float32 throughout) -----------------------------------

def np_spgr(t1, t2star, m0, tr, te, flip_angle):
    f = np.float32
    e1 = np.exp(f(-tr) / t1)
    return (m0 * f(math.sin(flip_angle)) * (f(1) - e1) / (f(1) - f(math.cos(flip_angle)) * e1)
            * np.exp(f(-te) / t2star))


def np_mprage(t1, t2star, m0, tr, ti, te):
    f = np.float32
    return (m0 * (f(1) - f(2) * np.exp(f(-ti) / t1) / (f(1) + np.exp(f(-tr) / t1)))
            * np.exp(f(-te) / t2star))


def np_bssfp(t1, t2, m0, tr, flip_angle):
    f = np.float32
    x1 = np.expm1(f(-tr) / t1)
    x2 = np.expm1(f(-tr) / t2)
    den = -(x1 + x2 + x1 * x2) - (x1 - x2) * f(math.cos(flip_angle))
    return m0 * f(math.sin(flip_angle)) * (-x1) / den * np.sqrt(f(1) + x2)


def donated_time(fn, maps, keys, repeats, sharding=None):
    """Best time of ``jax.jit(fn, donate_argnums=0)``: the output reuses the first map's buffer.

    This is how a pipeline that no longer needs its input runs: no fresh output allocation
    (and page faults) per call.  The donated input is re-uploaded outside the timed region.
    """
    donated = jax.jit(fn, donate_argnums=0, out_shardings=sharding)
    rest = [jax.device_put(maps[k], sharding) for k in keys[1:]]
    best = math.inf
    for i in range(repeats + 1):
        first = jax.device_put(maps[keys[0]].copy(), sharding)
        first.block_until_ready()
        t0 = time.perf_counter()
        donated(first, *rest).block_until_ready()
        if i:  # the first call compiles
            best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth(repeats, n_bytes=256 * 2**20):
    """Bytes/s of ``np.copyto`` on a ``n_bytes`` float32 array (read + write counted)."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    t = best_time(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / t, t


def closed_forms(size, repeats, bandwidth):
    rng = np.random.default_rng(0)
    shape = (size,) * 3
    maps = {
        "t1": rng.uniform(0.4, 4.5, shape).astype(np.float32),
        "t2": rng.uniform(0.05, 1.0, shape).astype(np.float32),
        "t2star": rng.uniform(0.03, 0.2, shape).astype(np.float32),
        "m0": rng.uniform(0.5, 1.0, shape).astype(np.float32),
    }
    jmaps = {k: jax.device_put(v) for k, v in maps.items()}
    cases = {
        "spgr": (("t1", "t2star", "m0"), lambda a, b, c: signal.spgr(a, b, c, **SPGR),
                 lambda a, b, c: np_spgr(a, b, c, **SPGR)),
        "mprage": (("t1", "t2star", "m0"), lambda a, b, c: signal.mprage(a, b, c, **MPRAGE),
                   lambda a, b, c: np_mprage(a, b, c, **MPRAGE)),
        "bssfp": (("t1", "t2", "m0"), lambda a, b, c: signal.bssfp(a, b, c, **BSSFP),
                  lambda a, b, c: np_bssfp(a, b, c, **BSSFP)),
    }
    n_vox = int(np.prod(shape))
    rows = []
    for name, (keys, jfn, nfn) in cases.items():
        jitted = jax.jit(jfn)
        jargs = [jmaps[k] for k in keys]
        nargs = [maps[k] for k in keys]
        t_jax = best_time(lambda: jitted(*jargs).block_until_ready(), repeats)
        t_donated = donated_time(jfn, maps, keys, repeats)
        mesh = Mesh(np.array(jax.devices()), ("x",))
        t_sharded = donated_time(jfn, maps, keys, repeats, NamedSharding(mesh, PartitionSpec("x")))
        t_np = best_time(lambda: nfn(*nargs), repeats)
        out_j = np.asarray(jitted(*jargs))
        out_n = nfn(*nargs)
        assert out_j.dtype == np.float32 and out_n.dtype == np.float32, (out_j.dtype, out_n.dtype)
        max_abs = float(np.max(np.abs(out_j - out_n)))
        bytes_moved = (len(keys) + 1) * 4 * n_vox
        rows.append(dict(
            equation=name, voxels=n_vox, jax_s=t_jax, numpy_s=t_np,
            jax_voxels_per_s=n_vox / t_jax, numpy_voxels_per_s=n_vox / t_np,
            speedup=t_np / t_jax, bytes_moved=bytes_moved,
            jax_effective_bandwidth=bytes_moved / t_jax,
            numpy_effective_bandwidth=bytes_moved / t_np,
            jax_fraction_of_copy_bandwidth=bytes_moved / t_jax / bandwidth,
            jax_donated_s=t_donated, jax_donated_voxels_per_s=n_vox / t_donated,
            jax_donated_effective_bandwidth=bytes_moved / t_donated,
            jax_donated_fraction_of_copy_bandwidth=bytes_moved / t_donated / bandwidth,
            jax_sharded_s=t_sharded, jax_sharded_voxels_per_s=n_vox / t_sharded,
            jax_sharded_effective_bandwidth=bytes_moved / t_sharded,
            jax_sharded_fraction_of_copy_bandwidth=bytes_moved / t_sharded / bandwidth,
            max_abs_diff_jax_numpy=max_abs))
    return rows


def simulators(repeats, n_isochromats=4096, n_pulses=100, n_voxels=1024):
    """Bloch isochromat-steps/s and EPG voxel throughput on one RF-spoiled SPGR train."""
    events = bloch.spgr_events(0.01, 0.003, math.radians(20.0), n_pulses)  # float32
    n_events = int(events.flip.shape[0])
    positions = bloch.isochromat_positions(n_isochromats, jnp.float32)

    @jax.jit
    def run_bloch(z):
        return jax.vmap(lambda p: bloch.simulate(events, 0.8, 0.05, 1.0, 0.0, 1.0, p)[0])(z)

    t_bloch = best_time(lambda: run_bloch(positions).block_until_ready(), repeats)
    n_states = n_pulses + 1
    t1s = jnp.linspace(0.5, 2.0, n_voxels, dtype=jnp.float32)

    @jax.jit
    def run_epg(t1):
        return jax.vmap(lambda a: epg.simulate(events, a, 0.05, n_states=n_states)[0])(t1)

    t_epg = best_time(lambda: run_epg(t1s).block_until_ready(), repeats)
    # Voxel throughput of Bloch at 256 isochromats per voxel (the count that matches EPG
    # to round-off for this train in tests/test_bloch.py).
    steps_per_s = n_isochromats * n_events / t_bloch
    return dict(
        events=n_events, isochromats=n_isochromats, bloch_s=t_bloch,
        bloch_isochromat_steps_per_s=steps_per_s,
        bloch_voxels_per_s_at_256_isochromats=steps_per_s / (256 * n_events),
        epg_voxels=n_voxels, epg_states=n_states, epg_s=t_epg,
        epg_voxels_per_s=n_voxels / t_epg,
        epg_state_steps_per_s=n_voxels * n_states * n_events / t_epg,
    )


def markdown(result):
    bw = result["memory_bandwidth_bytes_per_s"]
    lines = [
        f"# Physics throughput ({result['volume']}, float32, {result['device']}, "
        f"{result['cpu_count']} CPUs)",
        "",
        f"Memory bandwidth (np.copyto of 256 MiB, read + write): **{bw / 1e9:.2f} GB/s**",
        "",
        "| equation | JAX jit voxels/s | NumPy voxels/s | JAX / NumPy | JAX eff. bandwidth "
        "| of copy bandwidth | NumPy eff. bandwidth | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["closed_forms"]:
        lines.append(
            f"| {r['equation']} | {r['jax_voxels_per_s']:.3g} | {r['numpy_voxels_per_s']:.3g} "
            f"| {r['speedup']:.1f}x | {r['jax_effective_bandwidth'] / 1e9:.2f} GB/s "
            f"| {100 * r['jax_fraction_of_copy_bandwidth']:.0f} % "
            f"| {r['numpy_effective_bandwidth'] / 1e9:.2f} GB/s "
            f"| {r['max_abs_diff_jax_numpy']:.1e} |")
    lines += ["", "Allocation-free (the output reuses a donated input buffer, `donate_argnums=0`):", "",
              "| equation | JAX donated voxels/s | JAX donated / NumPy | eff. bandwidth "
              "| of copy bandwidth |", "|---|---|---|---|---|"]
    for r in result["closed_forms"]:
        lines.append(
            f"| {r['equation']} | {r['jax_donated_voxels_per_s']:.3g} "
            f"| {r['numpy_s'] / r['jax_donated_s']:.1f}x "
            f"| {r['jax_donated_effective_bandwidth'] / 1e9:.2f} GB/s "
            f"| {100 * r['jax_donated_fraction_of_copy_bandwidth']:.0f} % |")
    lines += ["", f"Allocation-free and sharded along the first axis over {result['devices']} host "
              "devices (one per core, `NamedSharding`):", "",
              "| equation | JAX sharded voxels/s | JAX sharded / NumPy | eff. bandwidth "
              "| of copy bandwidth |", "|---|---|---|---|---|"]
    for r in result["closed_forms"]:
        lines.append(
            f"| {r['equation']} | {r['jax_sharded_voxels_per_s']:.3g} "
            f"| {r['numpy_s'] / r['jax_sharded_s']:.1f}x "
            f"| {r['jax_sharded_effective_bandwidth'] / 1e9:.2f} GB/s "
            f"| {100 * r['jax_sharded_fraction_of_copy_bandwidth']:.0f} % |")
    frac = max(r["jax_sharded_fraction_of_copy_bandwidth"] for r in result["closed_forms"])
    verdict = ("compute-bound (exp/expm1 per voxel), not memory-bound, on this machine."
               if frac < 0.5 else "close to the memory-bandwidth limit.")
    lines += ["", f"The jitted closed forms reach at most {100 * frac:.0f} % of the copy "
              f"bandwidth (allocation-free, sharded): {verdict}"]
    s = result["simulators"]
    lines += [
        "",
        "| simulator (RF-spoiled SPGR train, float32, CPU) | size | time | throughput |",
        "|---|---|---|---|",
        f"| Bloch, vmap over isochromats | {s['isochromats']} isochromats x {s['events']} events "
        f"| {s['bloch_s'] * 1e3:.1f} ms | {s['bloch_isochromat_steps_per_s']:.3g} "
        f"isochromat-steps/s ({s['bloch_voxels_per_s_at_256_isochromats']:.3g} voxels/s at "
        f"256 isochromats/voxel) |",
        f"| EPG, vmap over voxels | {s['epg_voxels']} voxels x {s['epg_states']} states x "
        f"{s['events']} events | {s['epg_s'] * 1e3:.1f} ms | {s['epg_voxels_per_s']:.3g} "
        f"voxels/s ({s['epg_state_steps_per_s']:.3g} state-steps/s) |",
        "",
        f"jax {result['jax_version']}, numpy {result['numpy_version']}, best of "
        f"{result['repeats']} after one warm-up; {result['timestamp']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume edge (voxels)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--host-devices", type=int, default=os.cpu_count() or 1,
                        help="XLA host devices (one per core; read before JAX starts)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    bandwidth, _ = memory_bandwidth(args.repeats)
    result = dict(
        volume=f"{args.size}^3", repeats=args.repeats,
        device=str(jax.devices()[0].platform), devices=len(jax.devices()),
        cpu_count=os.cpu_count(),
        machine=platform.platform(), processor=platform.processor(),
        jax_version=jax.__version__, numpy_version=np.__version__,
        timestamp=time.strftime("%Y-%m-%d %H:%M:%S"),
        memory_bandwidth_bytes_per_s=bandwidth,
        closed_forms=closed_forms(args.size, args.repeats, bandwidth),
        simulators=simulators(args.repeats),
    )
    result["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "physics_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "physics_throughput.md").write_text(table)
    print(table)
    print(f"wall time {result['wall_s']:.1f} s; wrote {args.out}/physics_throughput.{{json,md}}")


if __name__ == "__main__":
    main()
