"""Train-step time of the flax CycleGAN vs an equivalent PyTorch implementation on the same CPU.

Both sides build the same networks (phyjax/models/gan.py: ResNet generator with reflection
padding, instance norm without affine parameters, ``n_blocks`` residual blocks, two stride-2
down/up-samplings, 7x7 stem and output with tanh; 70x70 PatchGAN) and run the same step: both
generators' LSGAN + cycle + identity loss, one Adam update of both, then both discriminators'
LSGAN loss on the detached fakes, one Adam update.  The radiomic and Dice terms are left out
(PyTorch has no soft radiomics to compare with).  Default sizes: the method's defaults
(configs/cyclegan_radiomics.py: ngf 16, 4 blocks, ndf 16) on the default data's 2 mm axial
slices (91 x 109 padded to 92 x 112), batch 4.

Timed: the median over ``--steps`` steps after ``--warmup`` steps (compilation excluded; its time
is reported), in ``--rounds`` alternating rounds of flax then PyTorch, so that a shared machine's
load moves both; the ratio is per round.  Each step is timed twice: **CPU time** (the process's,
all threads: ``time.process_time``) -- the ratio reported -- and wall time.  On a core that
another job time-shares, the wall time of either side doubles whenever the other job runs and
the wall ratio swings with it (commit 82057c3's rounds: 1.09, 2.37, 1.19, PyTorch 1.75, 0.91,
1.81 s); the CPU time does not (only cache sharing moves it, a few %).
Also timed on each side: one generator forward + backward (``gen_fwd_bwd``), the flax step and
generator as before this change (``step_before``: instance norm by autodiff, biases added
before it), with flax's ``ConvTranspose`` (``conv_impl="lax"``, ``step_lax``: before 82057c3)
and, with ``--variants``, more variants:

* ``step_unfused``: each network called once per input (as the PyTorch reference and phyjax
  before the fused step): six generator calls of ``batch`` slices instead of four, two of
  them on ``2 batch``; four discriminator calls in the update instead of two;
* ``step_no_donate``: the step without ``donate_argnums`` (buffers copied, not reused);
* ``gen_fwd_bwd_zero_pad``: zero ('SAME') padding instead of reflection padding;
* ``gen_fwd_bwd_flax_instancenorm``: flax's ``nn.InstanceNorm`` instead of phyjax's;
* ``gen_fwd_bwd_nchw``: convolutions in NCHW/OIHW layout (``lax.conv_general_dilated``);

PyTorch is only a benchmark reference, never a phyjax dependency: the PyTorch half runs in
``--torch-python`` (default: this interpreter if it imports torch, else ``/work/torchvenv/bin/python``;
make one with ``python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch numpy``).

Run pinned to one core, so that both frameworks get the same single thread (PyTorch's thread
count follows the affinity mask; about 4 min for 3 rounds on an idle core):
    taskset -c 1 python benchmarks/cyclegan_step.py --rounds 3 --steps 7 --warmup 2
Writes benchmarks/results/cyclegan_step.{json,md}.  ``--profile`` instead: one profiled run
per side, CPU time per kind of operation (``benchmarks/cyclegan_profile.py``), written to
benchmarks/results/cyclegan_step_profile.{json,md}:
    taskset -c 1 python benchmarks/cyclegan_step.py --profile --steps 3 --warmup 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import cyclegan_profile as profile
from _torch_reference import DEFAULT_TORCH, ROOT, head_commit, median, write_results
from _torch_reference import torch_side as run_torch_side

# ---------------------------------------------------------------------------------------------
# PyTorch (runs in the torch interpreter; imports nothing from phyjax or jax)


def _time(fn, steps: int, warmup: int, sync=lambda r: r) -> dict:
    """Medians over ``steps`` calls after ``warmup``: ``wall`` (perf_counter) and ``cpu``
    (process CPU time, all threads: what the call costs the core, whatever else shares it)."""
    for _ in range(warmup):
        sync(fn())
    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        sync(fn())
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall": median(wall), "cpu": median(cpu), "wall_all": wall, "cpu_all": cpu}


def torch_nets(args):
    """``{"step": ..., "gen_fwd_bwd": ...}``: the PyTorch reference's step and generator pass."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    # the affinity mask, not os.cpu_count(): under `taskset -c 1` two OpenMP threads on one core
    # stall each other (the erratic PyTorch rounds of the first measurements)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))

    def norm(c):
        return nn.InstanceNorm2d(c, affine=False, eps=1e-5)

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c),
                                      nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3),
                                      norm(c))

        def forward(self, x):
            return x + self.body(x)

    def generator(f, n_blocks, n_down=2):
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(1, f, 7), norm(f), nn.ReLU(True)]
        for _ in range(n_down):
            layers += [nn.Conv2d(f, 2 * f, 3, stride=2, padding=1), norm(2 * f), nn.ReLU(True)]
            f *= 2
        layers += [Res(f) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [nn.ConvTranspose2d(f, f // 2, 3, stride=2, padding=1, output_padding=1),
                       norm(f // 2), nn.ReLU(True)]
            f //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(f, 1, 7), nn.Tanh()]
        return nn.Sequential(*layers)

    def discriminator(f, n_layers=3):
        layers = [nn.Conv2d(1, f, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for n in range(1, n_layers + 1):
            c_in, c = f * min(2 ** (n - 1), 8), f * min(2 ** n, 8)
            layers += [nn.Conv2d(c_in, c, 4, 2 if n < n_layers else 1, 1, bias=False), norm(c),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(f * min(2 ** n_layers, 8), 1, 4, 1, 1)]
        return nn.Sequential(*layers)

    g_ab, g_ba = generator(args.features, args.blocks), generator(args.features, args.blocks)
    d_a, d_b = discriminator(args.disc_features), discriminator(args.disc_features)
    opt_g = torch.optim.Adam(list(g_ab.parameters()) + list(g_ba.parameters()), 2e-4,
                             betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(d_a.parameters()) + list(d_b.parameters()), 2e-4,
                             betas=(0.5, 0.999))
    a = torch.rand(args.batch, 1, args.height, args.width) * 2 - 1
    b = torch.rand(args.batch, 1, args.height, args.width) * 2 - 1
    mse, l1 = nn.MSELoss(), nn.L1Loss()

    def step():
        opt_g.zero_grad(set_to_none=True)
        fake_b, fake_a = g_ab(a), g_ba(b)
        rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
        pb, pa = d_b(fake_b), d_a(fake_a)
        loss_g = (mse(pb, torch.ones_like(pb)) + mse(pa, torch.ones_like(pa))
                  + 10 * (l1(rec_a, a) + l1(rec_b, b)) + 5 * (l1(g_ab(b), b) + l1(g_ba(a), a)))
        loss_g.backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        loss_d = 0.0
        for d, real, fake in ((d_a, a, fake_a.detach()), (d_b, b, fake_b.detach())):
            pr, pf = d(real), d(fake)
            loss_d = loss_d + 0.5 * (mse(pr, torch.ones_like(pr)) + mse(pf, torch.zeros_like(pf)))
        loss_d.backward()
        opt_d.step()

    def gen_fwd_bwd():
        g_ab.zero_grad(set_to_none=True)
        g_ab(a).square().mean().backward()

    return {"step": step, "gen_fwd_bwd": gen_fwd_bwd}


def torch_side(args) -> dict:
    import torch

    fns = torch_nets(args)
    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    if args.profile:
        out["profile"] = profile.torch_profile(fns["step"], args.warmup, args.steps)
        return out
    for name, fn in fns.items():
        t = _time(fn, args.steps, args.warmup)
        out[name], out[name + "_wall"] = t["cpu"], t["wall"]
        out[name + "_cpu_all"], out[name + "_wall_all"] = t["cpu_all"], t["wall_all"]
    return out


# ---------------------------------------------------------------------------------------------
# flax (phyjax's networks and step)


def flax_side(args, variants: bool) -> dict:
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from phyjax.methods import cyclegan
    from phyjax.models import gan

    cfg = {"features": args.features, "n_blocks": args.blocks, "n_down": 2,
           "disc_features": args.disc_features, "disc_layers": 3, "intensity_max": 2.0,
           "w_cycle": 10.0, "w_identity": 5.0, "steps": 1000, "learning_rate": 2e-4,
           "conv_impl": "phases"}
    rng = np.random.default_rng(0)
    shape = (args.batch, args.height, args.width, 1)
    batch = {"a": rng.random(shape).astype(np.float32) * 2,
             "b": rng.random(shape).astype(np.float32) * 2,
             "mask_a": np.ones(shape, np.float32), "mask_b": np.ones(shape, np.float32)}
    gen, disc = cyclegan.make_nets(cfg)
    tx = cyclegan.gan_optimizer(cfg)
    out = {"jax_version": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def time_step(step, key="step"):
        state = cyclegan.init_state(cfg, gen, disc, shape[1:3], 0, tx)
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        out[key + "_compile_s"] = time.perf_counter() - t
        holder = [state]

        def one():
            holder[0], m = step(holder[0], batch)
            return holder[0], m

        t = _time(one, args.steps, max(args.warmup - 1, 0), jax.block_until_ready)
        out[key], out[key + "_wall"] = t["cpu"], t["wall"]
        out[key + "_cpu_all"], out[key + "_wall_all"] = t["cpu_all"], t["wall_all"]
        return holder

    step_fn = cyclegan.make_cyclegan_step(cfg, gen, disc, tx)
    if args.profile:
        state = cyclegan.init_state(cfg, gen, disc, shape[1:3], 0, tx)
        hlo = step_fn.lower(state, batch).compile().as_text()
        holder = [state]

        def run():
            holder[0], m = step_fn(holder[0], batch)
            jax.block_until_ready((holder[0], m))

        for _ in range(args.warmup):
            run()
        out["profile"] = profile.xla_profile(run, hlo, args.steps)
        return out
    time_step(step_fn)
    with _before_norm_changes(gan, jnp):      # traced (compiled) inside: the earlier layers
        time_step(cyclegan.make_cyclegan_step(cfg, gen, disc, tx), "step_before")
    # before issue 15's fix: flax's ConvTranspose (XLA's lhs-dilated convolution)
    cfg_lax = dict(cfg, conv_impl="lax")
    gen_lax, disc_lax = cyclegan.make_nets(cfg_lax)
    time_step(cyclegan.make_cyclegan_step(cfg_lax, gen_lax, disc_lax, tx), "step_lax")

    def time_fn(fn, *xs):
        return _time(lambda: fn(*xs), args.steps, args.warmup, jax.block_until_ready)["cpu"]

    x = jnp.asarray(batch["a"]) - 1.0

    def gen_time(module):
        params = gan.init_params(module, 0, x)
        return time_fn(jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(
            module.apply({"params": p}, x))))), params)

    out["gen_fwd_bwd"] = gen_time(gen)
    with _before_norm_changes(gan, jnp):
        out["gen_fwd_bwd_before"] = gen_time(gen)
    out["gen_fwd_bwd_lax"] = gen_time(gen_lax)
    if not variants:
        return out

    time_step(cyclegan.make_cyclegan_step(cfg, gen, disc, tx, fuse=False), "step_unfused")
    step_nd = cyclegan.make_cyclegan_step(cfg, gen, disc, tx)
    if hasattr(step_nd, "__wrapped__"):
        time_step(jax.jit(step_nd.__wrapped__), "step_no_donate")

    orig_pad, orig_norm = gan.reflect_pad, gan.instance_norm
    try:
        gan.reflect_pad = lambda v, p: jnp.pad(v, ((0, 0), (p, p), (p, p), (0, 0)))
        out["gen_fwd_bwd_zero_pad"] = gen_time(gen)
        gan.reflect_pad = orig_pad
        gan.instance_norm = lambda v, eps=1e-5: fnn.InstanceNorm(
            epsilon=eps, use_bias=False, use_scale=False).apply({}, v)
        out["gen_fwd_bwd_flax_instancenorm"] = gen_time(gen)
    finally:
        gan.reflect_pad, gan.instance_norm = orig_pad, orig_norm
    out["gen_fwd_bwd_nchw"] = _nchw_generator_time(args, time_fn)
    return out


@contextlib.contextmanager
def _before_norm_changes(gan, jnp):
    """The generator's layers as before this change: instance norm differentiated by
    autodiff of the two-pass formula, every convolution's bias added before the norm."""
    saved = gan.instance_norm, gan._conv, gan._down, gan._up

    def two_pass(x, eps=1e-5):
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * (1.0 / jnp.sqrt(var + eps))

    def unnormed(fn):
        return lambda *a, normed=False, **k: fn(*a, normed=False, **k)

    gan.instance_norm = two_pass
    gan._conv, gan._down, gan._up = (unnormed(f) for f in saved[1:])
    try:
        yield
    finally:
        gan.instance_norm, gan._conv, gan._down, gan._up = saved


def _nchw_generator_time(args, time_fn) -> float:
    """The generator written with ``lax.conv_general_dilated`` in NCHW/OIHW (PyTorch's layout)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    key = jax.random.key(0, impl="rbg")
    f0 = args.features
    specs = [("c", 1, f0, 7, 1)] + [("c", f0 * 2 ** i, f0 * 2 ** (i + 1), 3, 2) for i in range(2)]
    specs += [("r", 4 * f0, 4 * f0, 3, 1)] * args.blocks
    specs += [("t", f0 * 2 ** (2 - i), f0 * 2 ** (1 - i), 3, 2) for i in range(2)]
    specs += [("o", f0, 1, 7, 1)]
    params = []
    for kind, ci, co, k, _ in specs:
        n = 2 if kind == "r" else 1
        key, *ks = jax.random.split(key, n + 1)
        params.append([0.05 * jax.random.normal(kk, (co, ci, k, k)) for kk in ks])
    dn = ("NCHW", "OIHW", "NCHW")

    def norm(x):
        m = jnp.mean(x, (2, 3), keepdims=True)
        return (x - m) * lax.rsqrt(jnp.mean(jnp.square(x - m), (2, 3), keepdims=True) + 1e-5)

    def rpad(x, p):
        return jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")

    def conv(x, w, stride=1, pad=((0, 0), (0, 0))):
        return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn)

    def net(ps, x):
        for (kind, _, _, k, s), w in zip(specs, ps):
            if kind == "c" and k == 7:
                x = jax.nn.relu(norm(conv(rpad(x, 3), w[0])))
            elif kind == "c":
                x = jax.nn.relu(norm(conv(x, w[0], 2, ((1, 1), (1, 1)))))
            elif kind == "r":
                y = jax.nn.relu(norm(conv(rpad(x, 1), w[0])))
                x = x + norm(conv(rpad(y, 1), w[1]))
            elif kind == "t":
                # transposed conv = dilated input conv (PyTorch padding 1, output_padding 1)
                x = jax.nn.relu(norm(lax.conv_general_dilated(
                    x, w[0][:, :, ::-1, ::-1], (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2),
                    dimension_numbers=dn)))
            else:
                x = jnp.tanh(conv(rpad(x, 3), w[0]))
        return x

    x = jnp.zeros((args.batch, 1, args.height, args.width))
    fn = jax.jit(jax.grad(lambda ps: jnp.mean(jnp.square(net(ps, x)))))
    return time_fn(fn, params)


# ---------------------------------------------------------------------------------------------


def _torch_python(arg: str | None) -> str:
    if arg:
        return arg
    try:
        import torch  # noqa: F401
        return sys.executable
    except ImportError:
        return DEFAULT_TORCH


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--height", type=int, default=92)
    p.add_argument("--width", type=int, default=112)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--disc-features", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch threads (0: all cores); 1 also restricts XLA to one thread")
    p.add_argument("--variants", action="store_true",
                   help="also time the first round's variants (unfused, no donation, zero "
                        "padding, flax's instance norm, NCHW)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: one profiled run per side, CPU time per kind of "
                        "operation (benchmarks/cyclegan_profile.py) -> <out>_profile.{json,md}")
    p.add_argument("--torch-python", default=None)
    p.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cyclegan_step"))
    args = p.parse_args(argv)
    if args.torch_only:
        print(json.dumps(torch_side(args)))
        return
    if args.threads == 1 and "jax" not in sys.modules:
        # one thread on the XLA side too (Eigen's pool and the intra-op pool)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   "false intra_op_parallelism_threads=1").strip()
    torch_py = _torch_python(args.torch_python)
    if not os.path.exists(torch_py):
        sys.exit(f"{torch_py}: no Python with PyTorch; give --torch-python (see the docstring).")
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("batch", "height", "width", "features", "blocks", "disc_features", "steps",
                    "warmup", "threads")] + (["--profile"] if args.profile else [])
    meta = {"config": vars(args), "machine": platform.platform(), "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)), "commit": head_commit()}
    if args.profile:
        fx = flax_side(args, variants=False)
        tx = run_torch_side(torch_py, __file__, passthrough)
        result = dict(meta, xla=fx["profile"], torch=tx["profile"], load_avg=os.getloadavg())
        write_results(args.out + "_profile", result, profile_markdown(result))
        return
    rounds = []
    for r in range(args.rounds):
        fx = flax_side(args, variants=(r == 0 and args.variants))
        tx = run_torch_side(torch_py, __file__, passthrough)
        rounds.append({"flax": fx, "torch": tx, "load_avg": os.getloadavg(),
                       "ratio_step": fx["step"] / tx["step"],
                       "ratio_step_wall": fx["step_wall"] / tx["step_wall"],
                       "ratio_step_lax": fx["step_lax"] / tx["step"],
                       "ratio_step_before": fx["step_before"] / tx["step"],
                       "ratio_gen_fwd_bwd": fx["gen_fwd_bwd"] / tx["gen_fwd_bwd"],
                       "ratio_gen_fwd_bwd_lax": fx["gen_fwd_bwd_lax"] / tx["gen_fwd_bwd"]})
        print(json.dumps({k: v for k, v in rounds[-1].items() if k.startswith("ratio")}),
              flush=True)
    keys = ("ratio_step", "ratio_step_wall", "ratio_step_lax", "ratio_step_before",
            "ratio_gen_fwd_bwd", "ratio_gen_fwd_bwd_lax")
    result = dict(meta, rounds=rounds, **{f"{k}_median": median([r[k] for r in rounds])
                                          for k in keys},
                  **{f"{k}_range": [min(r[k] for r in rounds), max(r[k] for r in rounds)]
                     for k in keys})
    write_results(args.out, result, markdown(result))


def profile_markdown(result) -> str:
    c = result["config"]
    lines = [(f"# CycleGAN train step, time per kind of operation: XLA vs PyTorch "
             f"(affinity {result['affinity']}, one thread each)"), "",
             (f"batch {c['batch']} x {c['height']} x {c['width']}, ngf {c['features']}, "
              f"{c['blocks']} residual blocks, ndf {c['disc_features']}; {c['steps']} profiled "
              f"steps after {c['warmup']} warm-up; commit {result['commit']}; load average "
              f"{result['load_avg'][0]:.1f}.  XLA: thunk times from `jax.profiler`, fused "
              "kernels counted under their root op; PyTorch: `torch.profiler` self CPU times "
              "(`benchmarks/cyclegan_profile.py`).  Profiler overhead inflates PyTorch's many "
              "small ops more than XLA's few large kernels.  The differences, not the absolute "
              "values, are the result: both sides' kernels are inflated alike when the core is "
              "shared (compare the last row's wall and CPU times)."), ""]
    lines += profile.markdown(result["xla"], result["torch"])
    for side in ("xla", "torch"):
        lines += ["", f"Largest {side} ops (ms per step): " + "; ".join(
            f"{k} {v:.1f}" for k, v in list(result[side]["top_ops"].items())[:12])]
    return "\n".join(lines) + "\n"


def markdown(result) -> str:
    c = result["config"]
    threads = result["rounds"][0]["torch"]["threads"]
    lines = [(f"# CycleGAN train step: flax vs PyTorch (CPU affinity {result.get('affinity')}, "
              f"{threads} thread(s) each)"), "",
             (f"batch {c['batch']} x {c['height']} x {c['width']}, ngf {c['features']}, "
              f"{c['blocks']} residual blocks, ndf {c['disc_features']}; median of {c['steps']} "
              f"steps after warm-up, per round (flax, then PyTorch); commit "
              f"{result.get('commit')}. **CPU**: the process's CPU time per step (all its "
              "threads), which another job time-sharing the core does not inflate; **wall**: "
              "elapsed time, which it does. `lax`: flax's `ConvTranspose` (before 82057c3); "
              "`before`: the phase convolutions with the instance norm by autodiff and biases "
              "added before it (82057c3 to this commit); `now`: this commit."),
             "",
             ("| round | load avg (1 min) | flax step CPU (s): lax / before / now | "
              "PyTorch step CPU (s) | ratio CPU: before / now | step wall (s): flax now / "
              "PyTorch | ratio wall | G fwd+bwd CPU (s): flax before / now / PyTorch |"),
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(result["rounds"]):
        f, t = r["flax"], r["torch"]
        lines.append(f"| {i + 1} | {r['load_avg'][0]:.1f} | {f['step_lax']:.3f} / "
                     f"{f['step_before']:.3f} / {f['step']:.3f} | {t['step']:.3f} | "
                     f"{r['ratio_step_before']:.3f} / {r['ratio_step']:.3f} | "
                     f"{f['step_wall']:.3f} / {t['step_wall']:.3f} | "
                     f"{r['ratio_step_wall']:.2f} | {f['gen_fwd_bwd_before']:.3f} / "
                     f"{f['gen_fwd_bwd']:.3f} / {t['gen_fwd_bwd']:.3f} |")
    variants = {k: v for k, v in result["rounds"][0]["flax"].items()
                if k.startswith(("step_", "gen_fwd_bwd_")) and isinstance(v, float)
                and not k.endswith(("_wall", "_compile_s"))
                and k not in ("step_lax", "step_before", "gen_fwd_bwd_lax",
                              "gen_fwd_bwd_before")}
    if variants:
        lines += ["", "Flax variants (round 1; CPU seconds): " + ", ".join(
            f"{k} {v:.3f}" for k, v in variants.items())]
    rs, rw = result["ratio_step_range"], result["ratio_step_wall_range"]
    rb = result["ratio_step_before_range"]
    lines += ["", (f"Median ratio flax / PyTorch, CPU time: step "
                   f"{result['ratio_step_before_median']:.3f} before (rounds {rb[0]:.3f}-"
                   f"{rb[1]:.3f}) -> {result['ratio_step_median']:.3f} now (rounds "
                   f"{rs[0]:.3f}-{rs[1]:.3f}; with flax's ConvTranspose "
                   f"{result['ratio_step_lax_median']:.2f}); generator fwd+bwd "
                   f"{result['ratio_gen_fwd_bwd_median']:.3f}. Wall time: step "
                   f"{result['ratio_step_wall_median']:.2f} (rounds {rw[0]:.2f}-{rw[1]:.2f}).")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
