"""Physics-aware segmentation's segment mode on the real Philips T1w, scored against FSL FAST.

The scan (``../shared/data/real_subject_philips/bet.nii.gz``: skull-stripped 1 mm T1w with FAST
GM/WM partial-volume maps ``pve_1`` / ``pve_2``; two synthetic spheres were added outside the
left hemisphere) is the only T1w of ``neurolabusc/dcm_qa_philips_enh``: the Philips ADNI Sag3D
MPRAGE (T1-TFE with inversion) whose dcm2niix sidecar ships in
``tests/data/vendor_t1_sidecars/Philips_R571_T1TFE_mprage_classic.json`` (TI 0.9 s, TFE readout
TR 6.5 ms, TE 2.93 ms, 9 deg, 3 T; the time between inversions is not in it).

What it does, each step timed:

1. brain mask = the largest connected component of ``bet > 0`` (drops the spheres); FAST's
   labels = argmax of (1 - GM - WM, GM, WM) inside it;
2. segment mode (``python -m phyjax.main --config=configs/physics_seg.py --config.mode=segment``)
   with the sidecar alone (expected: refused, the shot interval is missing), with the
   project's earlier non-inversion SPGR assumption (TR 8.1 ms, 8 deg: expected refused, outside
   the trained SPGR range), with the shot interval given but a readout flip of 14 deg (outside
   the default 6-12 deg: expected refused, naming it), and with the shot interval given
   (``--tr``, an assumption) for the physics U-Net and for the no-branch U-Net of the same run
   -- without ``allow_outside_range`` (``--allow-outside`` adds it, for models trained on the
   static MPRAGE equation, which refuse the scan's readout train);
3. Dice of each dseg's GM and WM against FAST's inside the mask, and soft volumes (mL) against
   FAST's (sum of its partial-volume maps), next to the fixed HMRF segmenter on the 1 mm image
   (``phyjax.evaluate.segmentation``, the benchmark's settings) and next to FAST's own maps
   taken through the U-Nets' 3 mm grid and back (what a perfect 3 mm segmenter could reach);
4. the physics U-Net told other TIs over the trained range with the sidecar's readout train
   (same image; how much the answer depends on the protocol it is told; TIs whose train does
   not fit are skipped);
5. the scan's GM/WM and CSF/WM contrast against the static equation's at the sidecar's TI
   (what a static-trained branch is told) and the readout-train equation's (what the default,
   readout-trained branch is told).

Usage::

    taskset -c 1 python benchmarks/physics_seg_real.py --run runs/physics_seg_readout/seed0 \\
        [--tr 2.4] [--out benchmarks/results/physics_seg_readout_real] \\
        [--workdir runs/physics_seg_real] [--allow-outside]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from phyjax.data import geometry
from phyjax.data.nifti import load_volume, save_like
from phyjax.data.volumes import normalize
from phyjax.evaluate.overlap import binary_overlap
from phyjax.evaluate.segmentation import TissueSegmenter

SIDECAR = os.path.join(ROOT, "tests", "data", "vendor_t1_sidecars",
                       "Philips_R571_T1TFE_mprage_classic.json")
DATA = os.path.join(ROOT, "..", "shared", "data", "real_subject_philips")
TISSUES = ("csf", "gm", "wm")


def brain_mask(image: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Largest connected component of ``image > 0`` and the sizes of the others (voxels)."""
    lab, _ = ndimage.label(image > 0)
    sizes = np.bincount(lab.ravel())[1:]
    keep = int(np.argmax(sizes)) + 1
    return lab == keep, sorted((int(s) for i, s in enumerate(sizes) if i + 1 != keep),
                               reverse=True)


def dice(labels: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Dice of GM (2) and WM (3) of ``labels`` against ``reference`` inside ``mask``."""
    return {f"dice_{t}": binary_overlap(labels[mask] == k, reference[mask] == k)["dice"]
            for t, k in (("gm", 2), ("wm", 3))}


def soft_volumes(probs: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    return {f"{t}_ml": float(probs[..., c].sum()) * voxel_mm3 / 1000.0
            for c, t in enumerate(TISSUES)}


def contrast_table(image: np.ndarray, fast_probs: np.ndarray, mask: np.ndarray, tr: float,
                   sidecar: dict) -> list[dict]:
    """WM / GM / CSF signal divided by WM's: measured on the scan (median intensity of voxels
    FAST gives >= 0.9 of one tissue), and predicted at the sidecar's protocol by the static
    MPRAGE equation (what a branch trained on it is told) and by the readout-train equation
    (what the default, readout-trained branch is told;
    :func:`phyjax.physics.signal.mprage_readout`, Deichmann et al. 2000)
    with the sidecar's TFE readout (3 T reference tissues)."""
    from phyjax.physics import signal, tissues

    tp = tissues.tissue_parameters(3.0)
    names = ("wm", "gm", "csf")
    pure = [fast_probs[..., c] >= 0.9 for c in (2, 1, 0)]
    measured = np.array([np.median(image[mask & p]) for p in pure])
    ti, te = float(sidecar["InversionTime"]), float(sidecar["EchoTime"])
    fa, tr_ro = np.deg2rad(float(sidecar["FlipAngle"])), float(sidecar["RepetitionTime"])
    n_ro = float(sidecar["EchoTrainLength"])
    static = np.array([float(signal.mprage(tp[t].t1, tp[t].t2star, tp[t].pd, tr, ti, te))
                       for t in names])
    train = np.array([float(signal.mprage_readout(tp[t].t1, tp[t].t2star, tp[t].pd, tr, ti, te,
                                                  fa, tr_ro, n_ro)) for t in names])
    return [{"source": "measured on the scan (FAST >= 0.9 voxels, median)",
             **dict(zip(names, map(float, measured / measured[0])))},
            {"source": f"static MPRAGE equation, TI {ti:g} s (told to a static-trained branch)",
             **dict(zip(names, map(float, static / static[0])))},
            {"source": f"readout-train equation, TI {ti:g} s, {n_ro:g} x {tr_ro * 1e3:g} ms, "
                       f"{float(sidecar['FlipAngle']):g} deg (told to the readout-trained branch)",
             **dict(zip(names, map(float, train / train[0])))}]


def segment_cmd(workdir: str, image: str, mask: str, out: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "phyjax.main", "--config=configs/physics_seg.py",
            f"--workdir={workdir}", "--config.mode=segment", "--config.progress=False",
            f"--config.segment.input={image}", f"--config.segment.mask={mask}",
            f"--config.segment.output={out}"] + extra


def run_segment(cmd: list[str]) -> tuple[int, str, float]:
    """``(exit code, last line of the output that says why, seconds)``."""
    t0 = time.time()
    p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    why = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln),
               lines[-1] if lines else "")
    return p.returncode, why.strip(), time.time() - t0


def read_probs(folder: str, stem: str) -> np.ndarray:
    return np.stack([load_volume(os.path.join(folder, f"{stem}_label-{t.upper()}_probseg"
                                              ".nii.gz"))[0] for t in TISSUES], -1)


def through_grid(probs: np.ndarray, affine, mask: np.ndarray, voxel_mm: float) -> np.ndarray:
    """``probs`` resampled onto segment mode's working grid (``voxel_mm``, as
    :func:`phyjax.experiments.harmonize.working_grid` builds it) and back, as the U-Nets'
    outputs are (:func:`phyjax.segment.infer.segment_image`)."""
    lo, hi = geometry.world_box(mask, affine)
    n, grid = geometry.box_grid(lo, hi, (voxel_mm,) * 3, hi - lo)
    coarse = [geometry.resample(np.where(mask, probs[..., c], 0), affine, grid, n)
              for c in range(3)]
    back = np.stack([geometry.resample(c, grid, affine, mask.shape) for c in coarse], -1)
    total = back.sum(-1, keepdims=True)
    return np.where(total > 1e-6, back / np.maximum(total, 1e-6), 0.0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/physics_seg_readout/seed0",
                    help="a physics_seg train_eval workdir (physics_unet/, no_branch_unet/)")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--sidecar", default=SIDECAR)
    ap.add_argument("--tr", type=float, default=2.4,
                    help="assumed time between inversions (s); not in the sidecar")
    ap.add_argument("--tis", default="0.6,0.7,0.8,0.9,1.0,1.1,1.2")
    ap.add_argument("--workdir", default="runs/physics_seg_real")
    ap.add_argument("--out", default="benchmarks/results/physics_seg_readout_real")
    ap.add_argument("--allow-outside", action="store_true",
                    help="segment with allow_outside_range=True (models trained on the static "
                         "MPRAGE equation refuse the scan's readout train)")
    args = ap.parse_args(argv)
    t_start = time.time()
    os.makedirs(args.workdir, exist_ok=True)
    image_path = os.path.join(args.data, "bet.nii.gz")
    image, img = load_volume(image_path)
    gm, _ = load_volume(os.path.join(args.data, "pve_1.nii.gz"))
    wm, _ = load_volume(os.path.join(args.data, "pve_2.nii.gz"))
    mask, dropped = brain_mask(image)
    mask_path = os.path.join(args.workdir, "brain_mask.nii.gz")
    save_like(mask.astype(np.uint8), img, mask_path, dtype=np.uint8)
    voxel = float(np.prod(img.header.get_zooms()[:3]))
    fast_probs = np.stack([np.clip(1.0 - gm - wm, 0, 1), gm, wm], -1) * mask[..., None]
    fast = np.where(mask, np.argmax(fast_probs, -1) + 1, 0)
    rows, refusals = [], []
    fast_vol = soft_volumes(fast_probs, voxel)
    rows.append({"method": "FAST (reference)", "told": "-", "dice_gm": 1.0, "dice_wm": 1.0,
                 **fast_vol, "seconds": 0.0})

    # 2. segment mode: refusals first
    side = [f"--config.segment.sidecar={args.sidecar}"]
    cases = [("sidecar only (no shot interval)", side),
             (f"sidecar + TR {args.tr:g} s, readout flip 14 deg (command line)",
              side + [f"--config.segment.tr={args.tr}", "--config.segment.flip_angle=14"]),
             ("earlier assumption: SPGR TR 8.1 ms, TE 3.7 ms, 8 deg",
              ["--config.segment.sequence=spgr", "--config.segment.tr=0.0081",
               "--config.segment.te=0.0037", "--config.segment.flip_angle=8",
               "--config.segment.field_strength=3"])]
    for name, extra in cases:
        out = os.path.join(args.workdir, "refused")
        code, why, sec = run_segment(segment_cmd(args.run, image_path, mask_path, out, extra))
        refusals.append({"case": name, "exit": code, "message": why, "seconds": sec})
        print(refusals[-1], flush=True)

    told = f"sidecar (its TI and readout train) + TR {args.tr:g} s (assumed)"
    for method, model in (("physics U-Net", "physics_unet"),
                          ("U-Net, no branch", "no_branch_unet")):
        out = os.path.join(args.workdir, model)
        # A model trained on the static equation refuses the scan's readout train:
        # --allow-outside measures what segmenting anyway gives (the earlier table of
        # docs/physics_seg_experiments.md).
        extra = side + [f"--config.segment.tr={args.tr}",
                        f"--config.segment.model={os.path.join(args.run, model, 'model')}"]
        if args.allow_outside:
            extra.append("--config.segment.allow_outside_range=True")
        code, why, sec = run_segment(segment_cmd(args.run, image_path, mask_path, out, extra))
        if code:
            raise SystemExit(f"{method}: segment mode failed ({code}): {why}")
        probs = read_probs(out, "bet")
        dseg, _ = load_volume(os.path.join(out, "bet_dseg.nii.gz"))
        rows.append({"method": method, "told": told if model == "physics_unet" else "-",
                     **dice(dseg.astype(int), fast, mask), **soft_volumes(probs, voxel),
                     "seconds": sec})
        print(rows[-1], flush=True)

    # 3. HMRF on the 1 mm image; FAST through the 3 mm grid
    t0 = time.time()
    hmrf = TissueSegmenter(beta=0.1, max_iter=30, tolerance=1e-5)(normalize(image, mask), mask)
    onehot = np.stack([hmrf == k for k in (1, 2, 3)], -1).astype(np.float32)
    rows.append({"method": "HMRF (DIPY), 1 mm", "told": "-", **dice(hmrf, fast, mask),
                 **soft_volumes(onehot, voxel), "seconds": time.time() - t0})
    print(rows[-1], flush=True)
    with open(os.path.join(args.run, "physics_unet", "model", "settings.json")) as f:
        settings = json.load(f)
    t0 = time.time()
    coarse = through_grid(fast_probs, img.affine, mask, float(settings["voxel_mm"]))
    rows.append({"method": f"FAST through the {settings['voxel_mm']:g} mm grid and back",
                 "told": "-", **dice(np.where(mask, np.argmax(coarse, -1) + 1, 0), fast, mask),
                 **soft_volumes(coarse * mask[..., None], voxel), "seconds": time.time() - t0})
    print(rows[-1], flush=True)

    # 4. the physics U-Net told other TIs (in-process: same code as segment mode)
    from phyjax.data.sidecar import read_given
    from phyjax.segment.infer import segment_image
    from phyjax.segment.simulate import readout_problem
    from phyjax.segment.train import Segmenter

    seg = Segmenter.load(os.path.join(args.run, "physics_unet", "model"))
    read = read_given(args.sidecar, "", {"tr": args.tr}, require_file=True).protocol()
    sweep = []
    for ti in (float(x) for x in args.tis.split(",")):
        p = read.replace(ti=ti)       # the sidecar's readout train (a static model ignores it)
        if seg.settings.get("physics_size") and readout_problem(p):
            print(f"TI {ti:g} s skipped: {readout_problem(p)}", flush=True)
            continue
        probs = segment_image(seg, image, img, mask, p)
        sweep.append({"ti": ti, **dice(np.where(mask, np.argmax(probs, -1) + 1, 0), fast, mask),
                      **soft_volumes(probs, voxel)})
        print(sweep[-1], flush=True)

    with open(args.sidecar) as f:
        contrast = contrast_table(image, fast_probs, mask, args.tr, json.load(f))
    wall = time.time() - t_start
    lines = ["# Physics-aware segmentation on the real Philips T1w (segment mode vs FSL FAST)", "",
             (f"Command: `python benchmarks/physics_seg_real.py {' '.join(argv or sys.argv[1:])}`"
             f" (wall {wall:.0f} s). Models: `{args.run}` "
             f"({settings.get('reconstruction', '?')} images, conditioning "
             f"`{settings.get('conditioning')}`, contrast `{settings.get('contrast', 'signed')}`"
             f", {settings['voxel_mm']:g} mm). Sidecar: `{os.path.relpath(args.sidecar, ROOT)}`"
             f". Mask: largest connected component of `bet > 0` ({int(mask.sum())} voxels; "
             f"dropped components of {dropped[:4]} voxels: the spheres). FAST labels: argmax "
             "of (1 - GM - WM, GM, WM) inside the mask."), "",
             "## Segment mode: refusals", "",
             "| told | exit | message | s |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['exit']} | "
              f"{r['message'].replace('|', '/').replace(ROOT + os.sep, '')} | "
              f"{r['seconds']:.0f} |" for r in refusals]
    lines += ["", "## Dice against FAST and soft volumes", "",
              ("| method | protocol told | Dice GM | Dice WM | CSF mL | GM mL | WM mL | "
              "GM / FAST | WM / FAST | s |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['told']} | {r['dice_gm']:.3f} | {r['dice_wm']:.3f}"
                     f" | {r['csf_ml']:.0f} | {r['gm_ml']:.0f} | {r['wm_ml']:.0f} | "
                     f"{r['gm_ml'] / fast_vol['gm_ml']:.3f} | "
                     f"{r['wm_ml'] / fast_vol['wm_ml']:.3f} | {r['seconds']:.0f} |")
    lines += ["", (f"## Physics U-Net told other TIs (TR {args.tr:g} s, the sidecar's readout "
              "train; same image)"), "",
              "| TI (s) | Dice GM | Dice WM | GM mL | WM mL | GM / FAST | WM / FAST |",
              "|---|---|---|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['ti']:.2f} | {r['dice_gm']:.3f} | {r['dice_wm']:.3f} | "
                     f"{r['gm_ml']:.0f} | {r['wm_ml']:.0f} | {r['gm_ml'] / fast_vol['gm_ml']:.3f}"
                     f" | {r['wm_ml'] / fast_vol['wm_ml']:.3f} |")
    lines += ["",
              f"## Tissue contrast: the scan vs the equations (signal / WM's; TR {args.tr:g} s)",
              "", "| source | WM | GM | CSF |", "|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['wm']:.2f} | {r['gm']:.2f} | {r['csf']:.2f} |"
              for r in contrast]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(args.out + ".json", "w") as f:
        json.dump({"refusals": refusals, "rows": rows, "ti_sweep": sweep, "contrast": contrast,
                   "wall_s": wall,
                   "run": args.run, "tr_assumed": args.tr,
                   "allow_outside": args.allow_outside}, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
