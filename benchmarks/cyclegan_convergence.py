r"""Does the radiomics CycleGAN (or Pix2Pix) improve on the unharmonized input?  One fit, then the
benchmark's paired image metrics on the held-out subjects -- without the rest of the benchmark.

A fast probe of training settings (steps, learning rate, loss weights, residual generator) on the
default data: the same data, split, training set and method fit as
``python -m phyjax.main --config=configs/cyclegan_radiomics.py`` (``phyjax.experiments``), then
for every held-out subject and source site SSIM / PSNR inside the target scan's brain mask
(:func:`phyjax.evaluate.metrics.image_metrics`, the benchmark's ``image_similarity``) of the
harmonized and of the raw source scan against the subject's target-site scan, and the selected
radiomic features' relative errors on the held-out source slices before/after (the CycleGAN's
RF-loss quantity, soft features as in training).  No segmentation, radiomics table or site
classifier: those are the benchmark's.

Usage (every config field on the command line, as for phyjax.main):
    taskset -c 1 python benchmarks/cyclegan_convergence.py --config=configs/cyclegan_radiomics.py \
        --workdir=runs/cgconv --method=cyclegan_radiomics --config.data.voxel_size=4 \
        --config.cyclegan.steps=100
Writes ``<workdir>/convergence.json`` and prints one summary line per site and overall.
A table of finished probes (what `benchmarks/results/cyclegan_convergence.md` holds):
    python benchmarks/cyclegan_convergence.py --summarize=runs/cgconv_a,runs/cgconv_b \
        --out=benchmarks/results/cyclegan_convergence.md
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from phyjax.data.dataset import load_dataset
from phyjax.data.slices import brain_slices, pad_to_multiple, to_slices
from phyjax.evaluate.metrics import image_metrics
from phyjax.experiments.common import fit_methods
from phyjax.methods import cyclegan

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/cyclegan_radiomics.py[:debug]")
flags.DEFINE_string("workdir", None, "run folder (the fit's checkpoints, convergence.json)")
flags.DEFINE_string("method", "cyclegan_radiomics", "registered method name to fit")
flags.DEFINE_list("summarize", [], "finished probe folders: write their table instead of fitting")
flags.DEFINE_string("out", "", "with --summarize: markdown file to write (else print)")

#: the settings a probe table shows (config.cyclegan keys)
SHOWN = ("per_site", "residual", "steps", "learning_rate", "w_identity", "w_rf", "w_dice")


def _slices(image, mask, z, multiple):
    pads = pad_to_multiple(image.shape[:2], multiple)
    im = to_slices(np.asarray(image, np.float32), pads)[z][..., None]
    m = to_slices(np.asarray(mask, np.float32), pads)[z][..., None]
    return im, m


def heldout_rf(h, data, test, target_site, min_fraction):
    """Mean over held-out source scans of the selected features' relative errors (before,
    after), slice-weighted; None for a method without a radiomic selection."""
    rf = getattr(h, "rf", None)
    if not rf or not rf.get("features"):
        return None
    cfg, names = h.cfg, rf["features"]
    target = np.asarray(rf["target"], np.float32)
    rcfg = cyclegan.radiomics_config(names, cfg["rf_bin_width"], cfg["rf_n_bins"])
    mult = cyclegan.slice_multiple(cfg)
    acc = {"before": [], "after": []}
    for s in test:
        for site, v in sorted(data.volumes[s].items()):
            if site == target_site:
                continue
            z = brain_slices(v.mask, min_fraction)
            raw, msk = _slices(v.image, v.mask, z, mult)
            harm, _ = _slices(h.harmonize(v), v.mask, z, mult)
            for key, img in (("before", raw), ("after", harm)):
                e = cyclegan.rf_errors(names, target, rcfg, cfg["rf_temperature"], img * msk, msk)
                acc[key].append((len(z), e))
    out = {"features": names}
    for key, vals in acc.items():
        w = np.array([n for n, _ in vals], float)
        out[key] = ((np.stack([e for _, e in vals]) * w[:, None]).sum(0) / w.sum()).tolist()
    return out


def summarize(folders, out: str = "") -> str:
    """Markdown table of finished probes (``convergence.json`` of each folder)."""
    lines = ["| probe | commit | " + " | ".join(SHOWN) + " | SSIM none -> method | "
             "PSNR none -> method (dB) | held-out selected RF rel. error | fit (s) |",
             "|---" * (len(SHOWN) + 6) + "|"]
    for folder in folders:
        with open(os.path.join(folder, "convergence.json")) as f:
            r = json.load(f)
        cg, o, rf = r["config"]["cyclegan"], r["summary"]["overall"], r["heldout_rf"]
        rf_txt = (f"{np.mean(rf['before']):.4f} -> {np.mean(rf['after']):.4f}" if rf else "–")
        lines.append(f"| `{os.path.basename(folder)}` | {r['commit']} | "
                     + " | ".join(str(cg.get(k, "–")) for k in SHOWN)
                     + f" | {o['none']['ssim']:.4f} -> {o['method']['ssim']:.4f} | "
                     f"{o['none']['psnr']:.2f} -> {o['method']['psnr']:.2f} | {rf_txt} | "
                     f"{r['fit_seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    return text


def main(_):
    if FLAGS.summarize:
        print(summarize(FLAGS.summarize, FLAGS.out))
        return
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required (or --summarize).")
    config, workdir = FLAGS.config, FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    data = load_dataset(config.data, progress=False, paired=False, require_protocols=False,
                        workdir=workdir)
    split = data.split(config.data.n_test, config.data.seed)
    t_fit = time.time()
    fitted = fit_methods(config, [FLAGS.method], data, split, None, workdir, progress=True,
                         notes=[])
    t_fit = time.time() - t_fit
    h = fitted[FLAGS.method]
    rows = []
    for s in split.test:
        truth = data.volumes[s][data.target_site]
        for site in data.source_sites:
            if site not in data.volumes[s]:
                continue
            v = data.volumes[s][site]
            rows.append({"subject": s, "site": site,
                         "none": image_metrics(v.image, truth.image, truth.mask),
                         "method": image_metrics(h.harmonize(v), truth.image, truth.mask)})
    summary = {}
    for site in sorted({r["site"] for r in rows}) + ["overall"]:
        sel = [r for r in rows if site in ("overall", r["site"])]
        summary[site] = {k: {m: float(np.mean([r[k][m] for r in sel])) for m in ("ssim", "psnr")}
                         for k in ("none", "method")}
        print(f"{site:>12}: SSIM none {summary[site]['none']['ssim']:.4f} -> "
              f"{summary[site]['method']['ssim']:.4f}   PSNR {summary[site]['none']['psnr']:.2f}"
              f" -> {summary[site]['method']['psnr']:.2f} dB", flush=True)
    rf = heldout_rf(h, data, split.test, data.target_site, config.data.min_mask_fraction)
    if rf:
        print("held-out selected features' rel. error:", ", ".join(
            f"{n} {b:.3f}->{a:.3f}" for n, b, a in zip(rf["features"], rf["before"], rf["after"])))
        print(f"   mean {np.mean(rf['before']):.4f} -> {np.mean(rf['after']):.4f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    res = {"method": FLAGS.method, "commit": commit, "config": config.to_dict(),
           "fit_seconds": t_fit, "total_seconds": time.time() - t0, "summary": summary,
           "rows": rows, "heldout_rf": rf,
           "training_rf": getattr(h, "rf", None)}
    with open(os.path.join(workdir, "convergence.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(f"fit {t_fit:.0f} s, total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    app.run(main)
