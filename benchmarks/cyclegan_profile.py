"""Where a CycleGAN train step's CPU time goes, per kind of operation, in XLA and in PyTorch.

Used by ``benchmarks/cyclegan_step.py --profile``.  Both sides are cut into the same categories
(:data:`CATEGORIES`) so that the two columns compare like with like:

* XLA: the step's thunks as ``jax.profiler`` records them (one event per executed kernel on the
  XLA:CPU thread), each mapped through the compiled HLO to its ``op_name`` metadata (the JAX
  primitive and the flax module it came from).  XLA fuses element-wise ops into one kernel,
  which is counted under the fusion's root op -- e.g. a ReLU fused into the next layer's
  reflection padding counts as padding.  The layout transposes that XLA:CPU inserts for a
  kernel-gradient convolution (activations to ``(C, H, W, B)``) carry no metadata; they count
  as convolution backward.
* PyTorch: ``torch.profiler`` self CPU times per ATen op; everything under ``Optimizer.step`` /
  ``zero_grad`` is the optimizer.

Numbers are milliseconds per step (the profiled steps' sum / their count) of the kernels'
elapsed time: on a core that another job time-shares they are inflated as much as the step's
wall time is; the table gives the profiled loop's wall and CPU time per step beside them.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

CATEGORIES = ("convolution forward", "convolution backward", "conv bias add",
              "instance norm", "reflection padding", "activations", "residual / grad adds",
              "phase interleave (transposed conv)", "losses", "optimizer (Adam)",
              "copies, views, allocation", "other")


# ---------------------------------------------------------------------------------------------
# PyTorch

_TORCH = [   # first match wins
    ("convolution backward", ("convolution_backward", "ConvolutionBackward")),
    ("convolution forward", ("mkldnn_convolution", "aten::_convolution", "aten::convolution",
                             "aten::conv2d", "aten::conv_transpose2d", "_convolution_mode",
                             "aten::slow_conv")),
    ("instance norm", ("batch_norm", "instance_norm", "BatchNorm")),
    ("reflection padding", ("reflection_pad", "ReflectionPad")),
    ("activations", ("relu", "clamp_min", "threshold", "leaky_relu", "LeakyRelu", "Relu",
                     "tanh", "Tanh")),
    ("losses", ("mse_loss", "MseLoss", "l1_loss", "abs", "Abs", "aten::mean", "Mean",
                "aten::sub", "Sub", "aten::sum", "Sum", "ones_like", "zeros_like",
                "aten::sign", "aten::sgn", "aten::mul", "Mul", "aten::square", "Pow", "aten::pow",
                "aten::div", "Div")),
    ("residual / grad adds", ("aten::add", "Add")),
    ("copies, views, allocation", ("copy_", "CopySlices", "as_strided", "AsStrided",
                                   "aten::view", "aten::reshape", "aten::empty", "resize_",
                                   "fill_", "zero_", "aten::detach", "aten::clone",
                                   "aten::expand", "aten::t", "aten::transpose", "aten::select",
                                   "aten::slice", "aten::contiguous", "aten::_unsafe_view",
                                   "Unsafe", "aten::result_type", "aten::to", "aten::_to")),
]


def torch_category(name: str) -> str:
    for cat, keys in _TORCH:
        if any(k in name for k in keys):
            return cat
    return "other"


def torch_profile(fn, warmup: int, steps: int) -> dict:
    """``fn()`` (one eager train step) profiled over ``steps`` calls after ``warmup``."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    t, c = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    wall, cpu = (time.perf_counter() - t) / steps, (time.process_time() - c) / steps
    cats, ops = collections.Counter(), collections.Counter()
    for ev in prof.events():
        anc, in_opt = ev.cpu_parent, ev.name.startswith("Optimizer.")
        while anc is not None and not in_opt:
            in_opt = anc.name.startswith("Optimizer.")
            anc = anc.cpu_parent
        cat = "optimizer (Adam)" if in_opt else torch_category(ev.name)
        us = ev.self_cpu_time_total
        cats[cat] += us / 1e3 / steps
        ops[ev.name] += us / 1e3 / steps
    return {"categories": dict(cats), "top_ops": dict(ops.most_common(25)),
            "total": sum(cats.values()), "loop_wall_ms": 1e3 * wall, "loop_cpu_ms": 1e3 * cpu}


# ---------------------------------------------------------------------------------------------
# XLA


def hlo_info(hlo_text: str) -> dict:
    """``{instruction name: (opcode, op_name metadata, result shape)}`` of compiled HLO text."""
    info = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w-]+)\((.*)$", hlo_text, re.MULTILINE):
        name, shape, opcode, rest = m.groups()
        on = re.search(r'op_name="([^"]*)"', rest)
        info[name] = (opcode, on.group(1) if on else "", shape)
    return info


def xla_category(opcode: str, op_name: str, thunk: str) -> str:
    prim = op_name.split("/")[-1]
    in_net = "Generator" in op_name or "Discriminator" in op_name
    if opcode == "convolution" or prim == "conv_general_dilated":
        return "convolution backward" if "transpose(" in op_name or not op_name else \
            "convolution forward"
    if not op_name:
        if "transpose" in thunk:     # layout change for a kernel-gradient convolution
            return "convolution backward"
        return "copies, views, allocation"
    if re.search(r"/(Conv|ConvTranspose|UpConv)[^/]*/add$", op_name) or \
            re.search(r"/ConvTranspose_\d+/add$", op_name):
        return "conv bias add"
    if "_pad" in op_name or prim in ("pad", "concatenate", "rev", "reverse"):
        return "reflection padding"
    if prim in ("reduce_sum", "sub", "div", "sqrt", "rsqrt", "mul", "square", "integer_pow",
                "reduce_max") and in_net:
        return "instance norm"
    if prim in ("max", "select_n", "tanh", "ge", "gt") and in_net:
        return "activations"
    if not in_net:
        return "losses" if ("jvp(" in op_name or "transpose(" in op_name) else "optimizer (Adam)"
    if prim in ("add", "add_any"):
        return "residual / grad adds"
    if prim in ("stack", "unstack", "reshape", "broadcast_in_dim", "squeeze", "expand_dims"):
        return "phase interleave (transposed conv)"
    return "other"


def xla_profile(run, hlo_text: str, steps: int) -> dict:
    """``run()`` (one jitted step, blocking until done) traced ``steps`` times; its thunks
    mapped through ``hlo_text`` (``jitted.lower(...).compile().as_text()``)."""
    import jax

    info = hlo_info(hlo_text)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            run()
        wall, cpu = (time.perf_counter() - t) / steps, (time.process_time() - c) / steps
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(
            max(glob.glob(d + "/**/*.xplane.pb", recursive=True)))
        cats, ops, unknown = collections.Counter(), collections.Counter(), 0.0
        for plane in data.planes:
            for line in plane.lines:
                if "XLAEigen" not in line.name and "XLACpu" not in line.name:
                    continue
                for ev in line.events:
                    if ev.name.startswith(("ThunkExecutor", "end: ")):
                        continue
                    ms = ev.duration_ns / 1e6 / steps
                    if ev.name not in info:
                        unknown += ms
                        continue
                    opcode, op_name, _ = info[ev.name]
                    cats[xla_category(opcode, op_name, ev.name)] += ms
                    ops[re.sub(r"\.\d+$", "", ev.name) + " :: " + op_name.split("/")[-1]] += ms
    return {"categories": dict(cats), "top_ops": dict(ops.most_common(25)),
            "unmapped": unknown, "total": sum(cats.values()) + unknown,
            "loop_wall_ms": 1e3 * wall, "loop_cpu_ms": 1e3 * cpu}


def markdown(xla: dict, torch: dict) -> list[str]:
    """Table lines: category, XLA ms, PyTorch ms, difference."""
    lines = [("| per step: ms of kernel time (elapsed: inflated by a job time-sharing the core, as "
             "the last row shows) | XLA | PyTorch | XLA - PyTorch |"), "|---|---|---|---|"]
    for cat in CATEGORIES:
        x, t = xla["categories"].get(cat, 0.0), torch["categories"].get(cat, 0.0)
        lines.append(f"| {cat} | {x:.1f} | {t:.1f} | {x - t:+.1f} |")
    lines.append(f"| **total** | **{xla['total']:.1f}** | **{torch['total']:.1f}** | "
                 f"**{xla['total'] - torch['total']:+.1f}** |")
    lines.append(f"| the profiled loop's wall / CPU time per step | {xla['loop_wall_ms']:.0f} / "
                 f"{xla['loop_cpu_ms']:.0f} | {torch['loop_wall_ms']:.0f} / "
                 f"{torch['loop_cpu_ms']:.0f} | |")
    return lines
