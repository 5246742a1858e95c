"""Where the CycleGAN step's time goes: every convolution of the generator and the PatchGAN, forward
and forward + backward, in XLA (jax.lax) and in PyTorch, on the same CPU with the same threads.

Each row is one convolution shape of the networks in ``phyjax/models/gan.py`` at the CycleGAN
step's sizes (2 mm slices 92 x 112; the fused generator call sees ``2 batch`` slices, each
discriminator call ``2 batch``).  For each: the forward convolution alone and its
value-and-gradient w.r.t. input and kernel (what the training step runs), in

* ``xla``: ``lax.conv_general_dilated`` (NHWC/HWIO, what ``flax.linen.Conv`` / ``ConvTranspose``
  lower to; a stride-2 convolution's input gradient and a transposed convolution are convolutions
  with ``lhs_dilation`` 2, computed on the zero-inflated input);
* ``xla_s2d``: the same mapping written with stride-1 convolutions only: a stride-2
  convolution as space-to-depth + a stride-1 convolution (:func:`strided_conv`, here), a
  transposed one as four phase convolutions (:func:`phyjax.models.gan.upsample_conv`, what
  phyjax uses since this measurement);
* ``torch``: ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` (oneDNN), eager, in the
  separate interpreter of ``benchmarks/cyclegan_step.py`` (PyTorch is never a phyjax dependency).

Run pinned to one core (both sides then use one thread):
    taskset -c 1 python benchmarks/cyclegan_layers.py
Writes benchmarks/results/cyclegan_layers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _torch_reference import DEFAULT_TORCH, ROOT, head_commit, median, write_results
from _torch_reference import torch_side as run_torch_side


def _space_to_depth(x):
    """``(B, 2H, 2W, C) -> (B, H, W, 4C)``, channel ``(2 p + q) C + c`` = pixel ``(2i+p, 2j+q)``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def strided_conv(x, kernel, stride: int, padding):
    """``lax.conv_general_dilated(x, kernel, (2, 2), padding)`` (NHWC, HWIO) computed with stride
    1 only: the padded input goes to space-to-depth ``(B, H/2, W/2, 4 C)`` and meets the kernel
    rearranged to ``(ceil(k/2), ceil(k/2), 4 C, O)`` (taps beyond ``k`` zero).

    The suspicion it tests: XLA:CPU differentiates a stride-2 convolution into convolutions
    with ``lhs_dilation`` / ``rhs_dilation``, which might be slow paths.  Measured: they are not
    (this formulation is the slower one), so phyjax keeps flax's strided ``Conv``.

    Args:
      x: ``(B, H, W, C)``.
      kernel: ``(k, k, C, O)``.
      stride: must be 2.
      padding: ``((top, bottom), (left, right))`` explicit zero padding.
    """
    import jax
    import jax.numpy as jnp

    if stride != 2:
        raise ValueError(f"strided_conv: stride 2 only, got {stride}.")
    k = kernel.shape[0]
    (pt, pb), (pl, pr) = padding
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    ho, wo = (hp - k) // 2 + 1, (wp - k) // 2 + 1
    x = jnp.pad(x, ((0, 0), (pt, pb + hp % 2), (pl, pr + wp % 2), (0, 0)))
    k2 = -(-k // 2)
    w = jnp.pad(kernel, ((0, 2 * k2 - k), (0, 2 * k2 - k), (0, 0), (0, 0)))
    c, o = kernel.shape[2:]
    w = w.reshape(k2, 2, k2, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(k2, k2, 4 * c, o)
    y = jax.lax.conv_general_dilated(_space_to_depth(x), w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, :ho, :wo]


def layers(batch: int, h: int, w: int, ngf: int = 16, ndf: int = 16):
    """``(name, kind, n, h, w, c_in, c_out, k, stride)``; kind ``conv`` (reflection/zero padded
    to keep size // stride) or ``convT`` (x2 up-sampling)."""
    g, d = 2 * batch, 2 * batch
    f = ngf
    out = [("G stem 7x7", "conv", g, h, w, 1, f, 7, 1),
           ("G down 1", "conv", g, h, w, f, 2 * f, 3, 2),
           ("G down 2", "conv", g, h // 2, w // 2, 2 * f, 4 * f, 3, 2),
           ("G res 3x3 (x8)", "conv", g, h // 4, w // 4, 4 * f, 4 * f, 3, 1),
           ("G up 1", "convT", g, h // 4, w // 4, 4 * f, 2 * f, 3, 2),
           ("G up 2", "convT", g, h // 2, w // 2, 2 * f, f, 3, 2),
           ("G out 7x7", "conv", g, h, w, f, 1, 7, 1),
           ("D 1", "conv", d, h, w, 1, ndf, 4, 2),
           ("D 2", "conv", d, h // 2, w // 2, ndf, 2 * ndf, 4, 2),
           ("D 3", "conv", d, h // 4, w // 4, 2 * ndf, 4 * ndf, 4, 2),
           ("D 4", "conv", d, h // 8, w // 8, 4 * ndf, 8 * ndf, 4, 1),
           ("D out", "conv", d, h // 8, w // 8, 8 * ndf, 1, 4, 1)]
    return out


def _time(fn, steps, warmup):
    """Median process CPU time of ``fn()`` (all threads; what a job time-sharing the core does
    not inflate, unlike the wall time the first version of this table used)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(steps):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return median(ts)


def torch_side(args) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    res = {"threads": torch.get_num_threads(), "version": torch.__version__, "rows": {}}

    def row(kind, n, h, w, ci, co, k, s):
        x = torch.randn(n, ci, h, w, requires_grad=True)
        if kind == "conv":
            wt = torch.randn(co, ci, k, k, requires_grad=True)
            p = (k - 1) // 2 if s == 1 or k % 2 else (k - 2) // 2 + 1

            def f():
                return F.conv2d(x, wt, stride=s, padding=p)
        else:
            wt = torch.randn(ci, co, k, k, requires_grad=True)

            def f():
                return F.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1)

        def fwd():
            with torch.no_grad():
                f()

        def fwd_bwd():
            x.grad = wt.grad = None
            f().square().mean().backward()

        return {"fwd": _time(fwd, args.steps, args.warmup),
                "fwd_bwd": _time(fwd_bwd, args.steps, args.warmup)}

    for name, *shape in layers(args.batch, args.height, args.width):
        res["rows"][name] = row(*shape)
    return res


def jax_side(args) -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from phyjax.models import gan

    res = {"version": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": {}}
    key = jax.random.key(0)
    dn = ("NHWC", "HWIO", "NHWC")

    def timed(fn, x, wt):
        f = jax.jit(fn)
        g = jax.jit(jax.value_and_grad(lambda x, wt: jnp.mean(jnp.square(fn(x, wt))),
                                       argnums=(0, 1)))
        return {"fwd": _time(lambda: jax.block_until_ready(f(x, wt)), args.steps, args.warmup),
                "fwd_bwd": _time(lambda: jax.block_until_ready(g(x, wt)), args.steps,
                                 args.warmup)}

    def row(kind, n, h, w, ci, co, k, s):
        x = jax.random.normal(key, (n, h, w, ci))
        wt = jax.random.normal(key, (k, k, ci, co))
        if kind == "conv":
            p = (k - 1) // 2 if s == 1 or k % 2 else (k - 2) // 2 + 1
            pad = ((p, k - 1 - p), (p, k - 1 - p)) if s == 1 else ((p, p), (p, p))

            def plain(x, wt):
                return lax.conv_general_dilated(x, wt, (s, s), pad, dimension_numbers=dn)

            def s2d(x, wt):
                return strided_conv(x, wt, 2, pad)
        else:
            def plain(x, wt):    # flax.linen.ConvTranspose(padding="SAME"), stride 2
                return lax.conv_transpose(x, wt, (2, 2), "SAME", dimension_numbers=dn)

            def s2d(x, wt):
                return gan.upsample_conv(x, wt)
        out = {"xla": timed(plain, x, wt)}
        if kind == "convT" or s == 2:
            out["xla_s2d"] = timed(s2d, x, wt)
        return out

    for name, *shape in layers(args.batch, args.height, args.width):
        res["rows"][name] = row(*shape)
    return res


def markdown(r) -> str:
    t, j = r["torch"]["rows"], r["jax"]["rows"]
    lines = [(f"# CycleGAN convolutions: XLA vs PyTorch ({r['threads']} thread(s), "
              f"affinity {r['affinity']})"), "",
             (f"batch {r['config']['batch']} (x2 fused), {r['config']['height']} x "
              f"{r['config']['width']}; median CPU ms of {r['config']['steps']} calls; "
              f"jax {r['jax']['version']}, torch {r['torch']['version']}, commit {r['commit']}."),
             "", ("| layer | torch fwd | XLA fwd | XLA s2d fwd | torch fwd+bwd | XLA fwd+bwd | "
                  "XLA s2d fwd+bwd |"), "|---|---|---|---|---|---|---|"]
    tot = {"t": 0.0, "x": 0.0, "s": 0.0}
    for name in t:
        reps = 8 if "(x8)" in name else 1
        xs = j[name].get("xla_s2d", j[name]["xla"])
        tot["t"] += reps * t[name]["fwd_bwd"]
        tot["x"] += reps * j[name]["xla"]["fwd_bwd"]
        tot["s"] += reps * xs["fwd_bwd"]
        s2d = j[name].get("xla_s2d")
        lines.append(f"| {name} | {1e3 * t[name]['fwd']:.2f} | {1e3 * j[name]['xla']['fwd']:.2f} | "
                     f"{'%.2f' % (1e3 * s2d['fwd']) if s2d else '–'} | "
                     f"{1e3 * t[name]['fwd_bwd']:.2f} | {1e3 * j[name]['xla']['fwd_bwd']:.2f} | "
                     f"{'%.2f' % (1e3 * s2d['fwd_bwd']) if s2d else '–'} |")
    lines += ["", (f"Sum of fwd+bwd over one generator and one discriminator pass (res conv "
                   f"x8): torch {1e3 * tot['t']:.1f} ms, XLA {1e3 * tot['x']:.1f} ms, XLA with "
                   f"stride-1 only {1e3 * tot['s']:.1f} ms.")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--height", type=int, default=92)
    p.add_argument("--width", type=int, default=112)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the affinity mask)")
    p.add_argument("--torch-python", default=DEFAULT_TORCH)
    p.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cyclegan_layers"))
    args = p.parse_args(argv)
    if args.torch_only:
        print(json.dumps(torch_side(args)))
        return
    passthrough = [f"--{k}={getattr(args, k)}" for k in
                   ("batch", "height", "width", "steps", "warmup", "threads")]
    tr = run_torch_side(args.torch_python, __file__, passthrough)
    jr = jax_side(args)
    res = {"config": vars(args), "threads": tr["threads"],
           "affinity": sorted(os.sched_getaffinity(0)), "commit": head_commit(),
           "torch": tr, "jax": jr}
    write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
