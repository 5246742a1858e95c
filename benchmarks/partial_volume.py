"""How far the re-synthesis of *exact* maps is from the image, single-tissue vs two-tissue voxels.

PhyCHarm re-synthesizes the target image from T1/M0 maps.  This script takes the ground truth
of held-out heads of the embedded dataset (the mean-T1 and M0 maps the generator is trained
towards, ``phyjax.data.synthetic.quantitative_maps``), re-synthesizes each site's protocol from
them with the single-T1 signal equation (``partial_volume=single``) and with the two-tissue
model (``two_tissue``, ``phyjax.physics.partial_volume``), and segments both with the
benchmark's fixed segmenter against the noise-free signal-mixed image of the same protocol (what
the scanner model images before B1+, bias and noise).  No network is involved: this is the
floor the re-synthesis itself puts under the harmonizer.

Usage::

    python benchmarks/partial_volume.py [--subjects 03,05] \
        [--out benchmarks/results/partial_volume.md]
"""

from __future__ import annotations

import argparse
import os
import time

import jax.numpy as jnp
import numpy as np

from phyjax.config_files import load_config
from phyjax.data import synthetic
from phyjax.evaluate.overlap import TISSUES, tissue_overlap, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.physics import signal
from phyjax.physics.partial_volume import mixture_synthesize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scores(labels, reference):
    """``(dV %, Dice)`` per CSF/GM/WM of ``labels`` against ``reference`` (label maps)."""
    dice = tissue_overlap(labels, reference)
    volumes, ref_volumes = tissue_volumes(labels, 1.0), tissue_volumes(reference, 1.0)
    return [(100.0 * (volumes[t] - ref_volumes[t]) / ref_volumes[t], dice[f"dice_{t}"])
            for t in TISSUES]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", default="",
                    help="comma-separated labels (default: the benchmark's held-out subjects)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "partial_volume.md"))
    args = ap.parse_args(argv)
    config = load_config("benchmark")
    d = config.data
    subjects = (args.subjects.split(",") if args.subjects
                else list(synthetic.held_out_labels(d)))
    segment = make_segmenter(config.segmentation)
    template = synthetic.load_anatomy(int(d.voxel_size))[0]
    real = (synthetic.load_real_anatomy(int(d.voxel_size), template.shape[1:], d.test_anatomy)
            if d.get("test_anatomy", "mni152") != "mni152" else None)
    t0 = time.time()
    rows, totals = [], {}
    for label in subjects:
        probs, factors, texture = synthetic.dataset_subject(d, int(label) - 1, template, real)
        mask = probs.sum(0) > 0.5
        for site in sorted(d.sites):
            site_cfg = d.sites[site]
            p = synthetic.site_protocol(site_cfg)
            b0 = float(site_cfg.field_strength)
            maps = synthetic.quantitative_maps(probs, factors, texture, b0, "signal")
            # T2/T2* folded into M0 on every side, as PhyCHarm models it
            maps["tissue_table"] = maps["tissue_table"].copy()
            maps["tissue_table"][:, 1:3] = np.inf
            truth = np.abs(np.asarray(synthetic.signed_image(maps, p)))
            t1, m0 = jnp.asarray(maps["t1"]), jnp.asarray(maps["pd"])
            images = {"single": np.asarray(signal.synthesize(p, t1, jnp.inf, jnp.inf, m0)),
                      "two_tissue": np.asarray(mixture_synthesize(p, t1, m0, b0))}
            reference = segment(truth, mask)
            for model, image in images.items():
                s = scores(segment(image, mask), reference)
                nrmse = float(np.sqrt(np.mean((image - truth)[mask] ** 2)) / truth[mask].std())
                rows.append((label, site, model, s, nrmse))
                totals.setdefault((site, model), []).append((s, nrmse))
                print(label, site, model, [f"{v:+.1f}/{dc:.3f}" for v, dc in s],
                      f"NRMSE {nrmse:.3f}", flush=True)
    command = "python benchmarks/partial_volume.py" + (f" --subjects {args.subjects}"
                                                       if args.subjects else "")
    lines = [
        ("Re-synthesis of exact maps, single-tissue vs two-tissue voxels "
         f"(`{command}`, {time.time() - t0:.0f} s): each held-out head's ground-truth mean-T1 "
         "and M0 maps through each site's protocol, segmented by the benchmark's fixed segmenter "
         f"({segment.describe()}) against the noise-free signal-mixed image of that protocol. "
         "dV: volume error (%), NRMSE: RMS difference / SD of the image, in the brain mask."),
        "",
        "| site | voxel model | dV CSF | dV GM | dV WM | Dice CSF | Dice GM | Dice WM | NRMSE |",
        "|---|---|---|---|---|---|---|---|---|"]
    for (site, model), items in sorted(totals.items()):
        s = np.mean([[v for v, _ in sc] for sc, _ in items], 0)
        dc = np.mean([[c for _, c in sc] for sc, _ in items], 0)
        nr = np.mean([n for _, n in items])
        lines.append(f"| {site} | {model} | " + " | ".join(f"{v:+.1f}" for v in s) + " | "
                     + " | ".join(f"{v:.3f}" for v in dc) + f" | {nr:.3f} |")
    lines += ["", f"Per subject ({', '.join(subjects)}):", "",
              ("| subject | site | voxel model | dV CSF | dV GM | dV WM "
               "| Dice CSF | Dice GM | Dice WM |"),
              "|---|---|---|---|---|---|---|---|---|"]
    for label, site, model, s, _ in rows:
        lines.append(f"| {label} | {site} | {model} | "
                     + " | ".join(f"{v:+.1f}" for v, _ in s) + " | "
                     + " | ".join(f"{c:.3f}" for _, c in s) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
