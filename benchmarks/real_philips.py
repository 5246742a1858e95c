"""Harmonize the real Philips T1w and measure what a radiologist would look at.

The scan (``../shared/data/real_subject_philips``: skull-stripped 1 mm T1w with FSL FAST GM/WM
partial-volume maps) is the one T1w of ``neurolabusc/dcm_qa_philips_enh``, the Philips ADNI
Sag3D MPRAGE (3D T1-TFE *with* a 0.9 s inversion delay, 256 readouts of 6.5 ms, 9 deg, 3 T); its
dcm2niix sidecar ships as ``tests/data/vendor_t1_sidecars/Philips_R571_T1TFE_mprage_classic.json``
and is read here with phyjax's reader.  It does not carry the shot interval (the time between
inversions), which is given as ADNI-3's 2.3 s (``--tr-prep``), an assumption.  (Before this, the
README and this script assumed a 3D T1-TFE *without* inversion -- an RF-spoiled GRE, TR 8.1 ms,
8 deg: wrong physics, see ``benchmarks/results/real_philips_v6.md`` for what it gave.)  For each
harmonizer folder and each resolution mode it reports:

* **detail kept**: SSIM of the high-pass (image minus its Gaussian blur, sigma 1 voxel) of the
  harmonized image against the input's, inside the GM+WM mask (1 = every edge where it was);
* **contrast**: the output's GM over WM median intensity in FAST's GM and WM (pv > 0.5)
  relative to the target protocol's, from its signal equation and the 3 T tissue table (1: the
  target's contrast) -- what a site map puts right or wrong;
* **anatomy kept**: Dice of the fixed segmenter's (``--segmenter``: the benchmark config's
  ANTs Atropos by default, or DIPY's HMRF, the benchmark's before 2026-11-30) CSF, GM and WM on
  the harmonized image against FAST's, next to the same on the input.

The mask (``--mask``): ``brain`` (default), the largest connected component of ``bet > 0`` (what
BET gives a user, CSF included; drops the two spheres added to the scan), FAST's labels the argmax
of (1 - GM - WM, GM, WM); or ``gmwm``, FAST's GM + WM > 0.5 with FAST's labels GM or WM -- the
tables up to 2026-11-29, in which a three-class segmenter has no CSF to find, so its darkest class
eats into GM (the HMRF's input GM Dice 0.41 there).  The harmonizers get the same mask.

Usage::

    python benchmarks/real_philips.py --harmonizer runs/phycharm/harmonizer [--harmonizer ...]
        [--segmenter atropos|hmrf] [--mask brain|gmwm]
        [--data ../shared/data/real_subject_philips] [--out benchmarks/results/real_philips.md]
        [--figure docs/philips_t1w_harmonized.png]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy import ndimage

from phyjax import methods
from phyjax.data.nifti import load_volume
from phyjax.data.sidecar import read_protocol
from phyjax.data.volumes import normalize
from phyjax.evaluate.metrics import ssim
from phyjax.evaluate.overlap import TISSUE_LABELS, binary_overlap
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.harmonize import harmonize_image, input_volume, new_protocol_maps

#: the scan's own dcm2niix sidecar (same series of neurolabusc/dcm_qa_philips_enh)
SIDECAR = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "vendor_t1_sidecars",
                       "Philips_R571_T1TFE_mprage_classic.json")


def scan_reading(sidecar: str = SIDECAR, tr_prep: float = 2.3):
    """The scan's sidecar read by phyjax (family, readout train, TI, flip, TE, B0, slice
    thickness), the shot interval ``tr_prep`` (s) filled in as a site table would."""
    with open(sidecar) as f:
        return read_protocol(json.load(f), sidecar, site_values={"tr_prep_s": tr_prep})


def high_pass(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``x`` minus its Gaussian blur (``sigma`` voxels): the detail a blur would remove."""
    return x - ndimage.gaussian_filter(x, sigma)


def detail_ssim(out: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
    """SSIM of the high-passes inside ``mask`` (both scaled to unit in-mask sd first)."""
    a, b = high_pass(np.where(mask, out, 0.0)), high_pass(np.where(mask, image, 0.0))
    a, b = a / a[mask].std(), b / b[mask].std()
    return float(ssim(a, b, mask))


def tissue_dice(labels: np.ndarray, fast: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Dice of CSF, GM and WM against FAST's labels inside ``mask`` (CSF: NaN when FAST has none
    there, the ``gmwm`` mask)."""
    out = {}
    for t in ("csf", "gm", "wm"):
        a, b = labels[mask] == TISSUE_LABELS[t], fast[mask] == TISSUE_LABELS[t]
        out[f"dice_{t}"] = binary_overlap(a, b)["dice"] if b.any() else float("nan")
    return out


def benchmark_segmenter(method: str = ""):
    """The benchmark config's fixed segmenter (``configs/benchmark.py``) with ``method`` (empty:
    the config's own)."""
    from phyjax.config_files import load_config

    seg = load_config("benchmark").segmentation
    seg.method = method or seg.method
    return make_segmenter(seg)


def masks_and_labels(image: np.ndarray, gm: np.ndarray, wm: np.ndarray, which: str):
    """The mask (``brain`` or ``gmwm``, see the module docstring) and FAST's labels in it."""
    if which == "gmwm":
        mask = (gm + wm) > 0.5
        fast = np.where(wm > gm, TISSUE_LABELS["wm"], TISSUE_LABELS["gm"]).astype(np.int8)
    elif which == "brain":
        lab, _ = ndimage.label(image > 0)
        mask = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
        fast = (np.argmax(np.stack([np.clip(1.0 - gm - wm, 0, 1), gm, wm]), 0) + 1).astype(
            np.int8)
    else:
        raise ValueError(f"--mask must be brain or gmwm, got {which!r}.")
    return mask, np.where(mask, fast, 0).astype(np.int8)


def figure(path: str, source: np.ndarray, outputs: list[tuple[str, np.ndarray]], gm: np.ndarray,
           mask: np.ndarray) -> None:
    """One axial and one coronal slice of the input and each harmonized image, FAST's GM
    boundary (partial volume 0.5) drawn on every panel, so that a reader sees whether the
    cortex is still where FAST found it; plus a zoom on the cortex at the vertex."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = np.flatnonzero(mask.any((0, 1)))
    lo, hi = zs[0] + (zs[-1] - zs[0]) // 2, zs[0] + 4 * (zs[-1] - zs[0]) // 5
    z = int(lo + np.argmax((gm[:, :, lo:hi] > 0.5).sum((0, 1))))   # upper brain, most cortex
    y = int(np.argmax(mask.sum((0, 2))))                            # coronal: widest slice
    top = int(np.flatnonzero(mask[:, y, :].any(0))[-1])
    cx = mask.shape[0] // 2
    zoom = (slice(max(cx - 24, 0), cx + 24), y, slice(max(top - 36, 0), top + 2))
    panels = [("input (Philips T1w)", source)] + outputs
    fig, axes = plt.subplots(3, len(panels), figsize=(3.2 * len(panels), 9.6), squeeze=False)
    for j, (title, img) in enumerate(panels):
        shown = np.where(mask, img, 0.0)
        vmax = np.percentile(shown[mask], 99.5)
        views = [(shown[:, :, z].T, gm[:, :, z].T, f"{title}\naxial z={z}"),
                 (shown[:, y, :].T, gm[:, y, :].T, f"coronal y={y}"),
                 (shown[zoom].T, gm[zoom].T, "vertex cortex, zoomed")]
        for i, (a, g, t) in enumerate(views):
            ax = axes[i, j]
            ax.imshow(a, cmap="gray", origin="lower", vmin=0, vmax=vmax,
                      interpolation="nearest")
            ax.contour(g, levels=[0.5], colors="tab:orange", linewidths=0.6)
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    fig.suptitle("Real Philips T1w harmonized to the reference MPRAGE\norange: FSL FAST's GM "
                 "boundary (GM partial volume 0.5)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def split_label(spec: str) -> tuple[str, str]:
    """``"LABEL=FOLDER"`` -> (LABEL, FOLDER); a bare FOLDER is labelled by the folder holding it
    (``runs/wens/phycharm/harmonizer`` -> ``phycharm``). Raises ValueError for an empty label or
    folder."""
    label, sep, folder = spec.partition("=")
    if not sep:
        folder = spec
        label = os.path.basename(os.path.dirname(os.path.abspath(folder)))
    if not label or not folder:
        raise ValueError(f"--harmonizer {spec!r}: expected [LABEL=]FOLDER")
    return label, folder


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harmonizer", action="append", required=True,
                    help="[LABEL=]FOLDER of a saved harmonizer; repeatable. LABEL names it in the "
                         "figure (default: the folder holding it, e.g. phycharm for "
                         "runs/X/phycharm/harmonizer)")
    ap.add_argument("--resolution", action="append", default=None,
                    help="native and/or training (default both)")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data", "real_subject_philips"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "real_philips.md"))
    ap.add_argument("--sidecar", default=SIDECAR, help="the scan's JSON sidecar")
    ap.add_argument("--tr-prep", type=float, default=2.3,
                    help="shot interval (s), not in Philips sidecars; ADNI-3's 2.3 s assumed")
    ap.add_argument("--segmenter", default="atropos", choices=("atropos", "hmrf"),
                    help="the fixed segmenter (benchmark config's settings)")
    ap.add_argument("--mask", default="brain", choices=("brain", "gmwm"),
                    help="brain: bet > 0 (CSF included); gmwm: FAST GM + WM > 0.5 (old tables)")
    ap.add_argument("--refine", action="append", default=None,
                    help="PhyCHarm's data-consistency step: name:key=value,... of "
                         "config.model.refine (e.g. on:enabled=True); one run per value; "
                         "default: as the harmonizer was saved")
    ap.add_argument("--new-map", action="append", default=None,
                    choices=("none", "drawn", "fitted"),
                    help="PhyCHarm: the scan's protocol has no site map; 'none' keeps the "
                         "network's output (the behaviour before item 72), 'drawn' / 'fitted' "
                         "has the physics make one first (config.harmonize.new_protocol_map="
                         "physics with those new_protocol_effects; timed apart); one run per "
                         "value; default: none")
    ap.add_argument("--map-form", action="append", default=None,
                    choices=("quantile", "least_squares"),
                    help="with --new-map drawn/fitted: the form of the map the physics makes "
                         "(config.model.calibrate_map; default: the harmonizer's own); one run "
                         "per value")
    ap.add_argument("--figure", default="", help="PNG: input and each native-resolution output "
                    "with FAST's GM boundary (e.g. docs/philips_t1w_harmonized.png)")
    args = ap.parse_args(argv)
    reading = scan_reading(args.sidecar, args.tr_prep)
    protocol = reading.protocol()
    print("protocol:", protocol, flush=True)
    image, img = load_volume(os.path.join(args.data, "bet.nii.gz"))
    gm, _ = load_volume(os.path.join(args.data, "pve_1.nii.gz"))
    wm, _ = load_volume(os.path.join(args.data, "pve_2.nii.gz"))
    mask, fast = masks_and_labels(image, gm, wm, args.mask)
    segment = benchmark_segmenter(args.segmenter)
    source = normalize(image, mask)
    pure = {"gm": (gm > 0.5) & mask, "wm": (wm > 0.5) & mask}

    def contrast(x, target):     # GM/WM of x over the target's, by the signal equation
        from phyjax.methods.phycharm import reference_level, tissue_levels

        levels = np.asarray(tissue_levels(target, reference_level(target)))
        return float(np.median(x[pure["gm"]]) / np.median(x[pure["wm"]])
                     / (levels[1] / levels[2]))
    first_target = methods.load(split_label(args.harmonizer[0])[1]).target_protocol
    rows = [{"harmonizer": "input (no harmonization)", "resolution": "-", "detail_ssim": 1.0,
             "contrast": contrast(source, first_target),
             **tissue_dice(segment(source, mask), fast, mask), "seconds": 0.0,
             "map_seconds": 0.0}]
    shown = []
    from refine_sweep import parse_setting

    from phyjax.methods.phycharm import refine_settings

    runs = [(*split_label(spec), parse_setting(r) if r else None, new, form)
            for spec in args.harmonizer for r in (args.refine or [""])
            for new in (args.new_map or ["none"])
            for form in ((args.map_form or [None]) if new != "none" else [None])]

    def loaded(folder, refine, form):   # the saved harmonizer, with the --refine setting
        h = methods.load(folder)
        if refine is not None and hasattr(h, "check_target"):
            h.cfg["refine"] = refine_settings(dict(h.cfg.get("refine") or {}, **refine[1]))
        if form is not None and h.cfg.get("physics_heads"):
            h.cfg["physics_heads"] = dict(h.cfg["physics_heads"], form=form)
        return h

    for label, folder, refine, new, form in runs:
        h = loaded(folder, refine, form)
        tag = ""
        if refine is not None and hasattr(h, "check_target"):
            tag = f", refine {refine[0]}"
        if new != "none":
            tag += ", physics map" + (" (fitted)" if new == "fitted" else "")
            tag += f" ({form})" if form else ""
        for res in args.resolution or ("native", "training"):
            if new != "none":   # a fresh model per resolution: the map is made on its grid
                h = loaded(folder, refine, form)
            volume = input_volume(h, image, img, mask, protocol, "bet.nii.gz", res,
                                  reading.slice_thickness_mm)
            t = time.time()
            if new != "none":
                new_protocol_maps(h, [volume], None, ("physics", new), folder)
            map_seconds = time.time() - t
            t = time.time()
            out = harmonize_image(h, image, img, mask, protocol, "bet.nii.gz", res,
                                  volume=volume)
            seconds = time.time() - t
            harmonized = out["harmonized"]
            if res == "native":
                shown.append((f"{h.name} ({label}{tag})", harmonized))
            rows.append({"harmonizer": f"{h.name} ({folder}{tag})", "resolution": res,
                         "detail_ssim": detail_ssim(harmonized, source, mask),
                         "contrast": contrast(harmonized, h.target_protocol),
                         **tissue_dice(segment(harmonized, mask), fast, mask),
                         "seconds": seconds, "map_seconds": map_seconds})
            print(rows[-1], flush=True)
    lines = [("| harmonizer | resolution | high-pass SSIM vs input | GM/WM vs target's | "
              "Dice CSF vs FAST | Dice GM vs FAST | Dice WM vs FAST | seconds | map seconds |"),
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['harmonizer']} | {r['resolution']} | {r['detail_ssim']:.3f} | "
              f"{r['contrast']:.3f} | {r['dice_csf']:.3f} | {r['dice_gm']:.3f} | "
              f"{r['dice_wm']:.3f} | {r['seconds']:.1f} | {r['map_seconds']:.1f} |"
              for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("Real Philips T1w (1 mm), harmonized; `python benchmarks/real_philips.py "
                + " ".join(f"--harmonizer {x}" for x in args.harmonizer)
                + "".join(f" --refine {x}" for x in args.refine or [])
                + "".join(f" --new-map {x}" for x in args.new_map or [])
                + "".join(f" --map-form {x}" for x in args.map_form or [])
                + f" --tr-prep {args.tr_prep:g} --segmenter {args.segmenter} --mask {args.mask}`"
                f"; segmenter {segment}; mask {args.mask} ({int(mask.sum())} voxels); "
                f"protocol {protocol}\n\n")
        f.write("\n".join(lines) + "\n")
    if args.figure and shown:
        figure(args.figure, source, shown, gm, mask)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
