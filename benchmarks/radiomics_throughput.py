"""Throughput of the batched JAX radiomics extractor vs PyRadiomics on the same ROIs.

Two workloads on the real PyRadiomics test cases (../shared/data/pyradiomics, or the copy in
tests/data/pyradiomics): (a) a batch of 2-D ROIs -- every axial slice with >= 10 ROI voxels of the
brain1, brain2, breast1 and prostate-phantom (labels 1, 7, 8, 9) ROIs, force2D; (b) the 7 3-D ROIs.
Both extractors compute all first-order, GLCM and GLRLM features with bin width 25 (float64); the
JAX results are checked against PyRadiomics' in the same run (max relative error per class).

Timing (best of ``--repeats`` for both): PyRadiomics' ``RadiomicsFeatureExtractor.execute`` over
the ROIs one by one (what a user runs; it includes its own cropping and checks); JAX:
``phyjax.radiomics.extract`` on the whole list, end to end (host-side packing or cropping
included), after a warm-up call that compiles (its time is reported separately), in both layouts:
``packed`` (the default in hard mode: all ROI voxels in one list, line geometry from the masks on
the host, one jit call) and ``canvas`` (every ROI cropped and padded to the largest bounding box,
one jit(vmap) call). Features/s = ROIs x features / s. The machine's load average is recorded: on
a shared machine both timings move, the ratio less so.

``--soft`` also times one training step of a soft-feature loss (value and gradient; no PyRadiomics
counterpart). ``--dense`` adds 8 whole-brain-sized synthetic ROIs that fill half of their box: there padding
is cheap and ``extract(layout="auto")`` picks the canvas.

Run (about 1 min on 2 CPU cores; several minutes with ``--dense``):
    JAX_PLATFORMS=cpu python benchmarks/radiomics_throughput.py [--soft] [--dense]
Writes benchmarks/results/radiomics_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from phyjax import radiomics as rad  # noqa: E402
from phyjax.radiomics.firstorder import FIRSTORDER_FEATURES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT.parent / "shared" / "data" / "pyradiomics", ROOT / "tests" / "data" / "pyradiomics"]
CASES = {
    "brain1": ("brain1_image.nrrd", "brain1_label.nrrd", 1),
    "brain2": ("brain2_image.nrrd", "brain2_label.nrrd", 1),
    "breast1": ("breast1_image.nrrd", "breast1_label.nrrd", 1),
    **{f"prostate{lab}": ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd",
                          lab) for lab in (1, 7, 8, 9)},
}


def load_rois(data: Path):
    rois = []
    for name, (ip, mp, label) in CASES.items():
        image, spacing = rad.read_nrrd(data / ip)
        labels, _ = rad.read_nrrd(data / mp)
        rois.append((name, image, labels == label, spacing))
    return rois


def slices_2d(rois, min_voxels=10):
    out = []
    for name, image, mask, spacing in rois:
        for z in range(mask.shape[0]):
            if mask[z].sum() >= min_voxels:
                out.append((f"{name}_z{z}", image[z:z + 1], mask[z:z + 1], spacing))
    return out


def dense_rois(n=8, seed=0):
    """``n`` whole-brain-sized ROIs filling 52 % of their box: ellipsoids in a (91, 109, 91) grid
    (the 2-mm MNI grid) over smooth random 'tissue' plus noise, 0..~1000 (synthetic)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:91, :109, :91]
    mask = ((x - 45) / 38) ** 2 + ((y - 54) / 48) ** 2 + ((z - 45) / 36) ** 2 < 1
    out = []
    for i in range(n):
        smooth = ndimage.gaussian_filter(rng.normal(size=mask.shape), 3.0)
        image = 500 + 4000 * smooth + rng.normal(0, 40, mask.shape)
        out.append((f"dense{i}", image, mask, np.array([2.0, 2.0, 2.0])))
    return out


def soft_step(batch=8, size=128, n_bins=32, repeats=3, dtype=np.float32):
    """Seconds per jit(value_and_grad) step of an L1 loss on all soft features of ``batch``
    ``size`` x ``size`` images (disk ROIs, 32 bins, temperature 0.5): the cost a radiomic
    training loss adds (canvas layout, float32 as in training)."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    images = np.stack([500 + 3000 * ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.0)
                       for _ in range(batch)])[:, None].astype(dtype)
    masks = np.broadcast_to(disk, images.shape).copy()
    width = float(np.ptp(images[masks.astype(bool)])) / (n_bins - 2)
    cfg = rad.RadiomicsConfig(bin_width=width, n_bins=n_bins, force2d=True)
    target = {k: v[::-1] for k, v in rad.extract_batch(images, masks, cfg, temperature=0.5).items()}

    @jax.jit
    def step(x):
        def loss(x):
            f = rad.extract_batch(x, masks, cfg, temperature=0.5)
            return sum(jnp.mean(jnp.abs(f[k] - target[k]) / (jnp.abs(target[k]) + 1e-6)) for k in f)
        return jax.value_and_grad(loss)(x)

    x = jnp.asarray(images)
    t0 = time.perf_counter()
    jax.block_until_ready(step(x))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(x))
        best = min(best, time.perf_counter() - t0)
    return best, first


def run_pyradiomics(rois, settings, repeats=1):
    import SimpleITK as sitk
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(label=1, **settings)
    ext.disableAllFeatures()
    ext.enableFeaturesByName(firstorder=list(FIRSTORDER_FEATURES), glcm=[], glrlm=[])
    inputs = []  # SimpleITK images prepared outside the timed loop
    for _, image, mask, spacing in rois:
        si = sitk.GetImageFromArray(image)
        si.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        sm = sitk.GetImageFromArray(mask.astype(np.int32))
        sm.CopyInformation(si)
        inputs.append((si, sm))
    elapsed = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = [ext.execute(si, sm) for si, sm in inputs]
        elapsed = min(elapsed, time.perf_counter() - t0)
    feats = [{k[len("original_"):]: float(v) for k, v in r.items() if k.startswith("original_")}
             for r in results]
    return feats, elapsed


def run_jax(rois, repeats, **kw):
    images = [r[1] for r in rois]
    masks = [r[2] for r in rois]
    spacings = [r[3] for r in rois]
    t0 = time.perf_counter()
    out = rad.extract(images, masks, label=None, spacings=spacings, **kw)
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = rad.extract(images, masks, label=None, spacings=spacings, **kw)
        best = min(best, time.perf_counter() - t0)
    feats = [{k: float(v[b]) for k, v in out.items()} for b in range(len(rois))]
    return feats, best, first


def parity(mine, ref):
    worst = {}
    for a, b in zip(mine, ref):
        for k, v in b.items():
            err = abs(a[k] - v) / abs(v) if v != 0 else abs(a[k])
            cls = k.split("_")[0]
            worst[cls] = max(worst.get(cls, 0.0), err)
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--soft", action="store_true",
                    help="also time a soft-feature loss step (value + gradient), 8 x 128^2 float32")
    ap.add_argument("--dense", action="store_true",
                    help="also 8 whole-brain-sized ROIs filling their box (where padding is cheap)")
    args = ap.parse_args(argv)
    data = next(p for p in CANDIDATES if (p / "brain1_image.nrrd").exists())
    rois3d = load_rois(data)
    rois2d = slices_2d(rois3d)
    rows = []
    workloads = [("2D slices (force2D)", rois2d, True), ("3D ROIs", rois3d, False)]
    if args.dense:
        workloads.append(("3D whole-brain-sized ROIs", dense_rois(), False))
    runs = [(name, f"{name}, {layout}", rois, force2d, layout)
            for name, rois, force2d in workloads for layout in ("packed", "canvas")]
    py_cache = {}
    for name, workload, rois, force2d, layout in runs:
        settings = dict(binWidth=25, force2D=force2d)
        if name not in py_cache:
            py_cache[name] = run_pyradiomics(rois, settings, args.repeats)
        ref, t_py = py_cache[name]
        mine, t_jax, t_first = run_jax(rois, args.repeats, bin_width=25.0, force2d=force2d,
                                       layout=layout)
        n_feat = len(ref[0])
        err = parity(mine, ref)
        rows.append({
            "workload": workload,
            "n_rois": len(rois),
            "n_features": n_feat,
            "roi_voxels_mean": float(np.mean([r[2].sum() for r in rois])),
            "pyradiomics_s": t_py,
            "jax_s": t_jax,
            "jax_first_call_s": t_first,
            "pyradiomics_features_per_s": len(rois) * n_feat / t_py,
            "jax_features_per_s": len(rois) * n_feat / t_jax,
            "speedup": t_py / t_jax,
            "max_rel_error": err,
        })
        print(f"{workload}: {len(rois)} ROIs, PyRadiomics {t_py:.3f} s, JAX {t_jax:.3f} s "
              f"(first call incl. compile {t_first:.1f} s), speed-up {t_py / t_jax:.1f}x, "
              f"max rel. err {err}", flush=True)
    soft = None
    if args.soft:
        t_soft, t_soft_first = soft_step(repeats=args.repeats)
        soft = {"batch": 8, "size": 128, "n_bins": 32, "dtype": "float32", "step_s": t_soft,
                "first_call_s": t_soft_first}
        print(f"soft loss step (value + grad, 8 x 128^2, 59 features): {t_soft * 1e3:.0f} ms "
              f"(first call {t_soft_first:.1f} s)", flush=True)
    import radiomics

    meta = {
        "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "pyradiomics": radiomics.__version__,
        "numpy": np.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "dtype": "float64", "bin_width": 25,
        "load_average_1_5_15": list(os.getloadavg()), "repeats": args.repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "radiomics_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows, "soft_step": soft}, indent=2))
    lines = [
        "# Radiomics throughput: phyjax (jit + vmap) vs PyRadiomics",
        "",
        f"JAX {meta['jax']} on {meta['backend']} ({meta['cpu_count']} CPU cores visible), "
        f"PyRadiomics {meta['pyradiomics']}, float64, bin width 25, first-order + GLCM + GLRLM.",
        f"Same ROIs, same run; best of {args.repeats} for both (JAX after the compiling call); "
        f"load average {meta['load_average_1_5_15'][0]:.1f} on {meta['cpu_count']} cores "
        "(a shared machine).",
        "",
        "| workload | ROIs | features | PyRadiomics s | JAX s | JAX 1st call s | PyRadiomics feat/s "
        "| JAX feat/s | speed-up | max rel. err (fo / glcm / glrlm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["max_rel_error"]
        lines.append(
            f"| {r['workload']} | {r['n_rois']} | {r['n_features']} | {r['pyradiomics_s']:.3f} | "
            f"{r['jax_s']:.3f} | {r['jax_first_call_s']:.1f} | {r['pyradiomics_features_per_s']:.0f} | "
            f"{r['jax_features_per_s']:.0f} | {r['speedup']:.1f}x | "
            f"{e['firstorder']:.1e} / {e['glcm']:.1e} / {e['glrlm']:.1e} |")
    if soft is not None:
        lines += ["", f"Soft mode (canvas, float32, temperature 0.5): one jit(value_and_grad) step of "
                  f"an L1 loss on all 59 soft features of 8 images of 128 x 128 (disk ROIs, 32 bins): "
                  f"{soft['step_s'] * 1e3:.0f} ms (first call incl. compile {soft['first_call_s']:.1f} s)."]
    (args.out / "radiomics_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
