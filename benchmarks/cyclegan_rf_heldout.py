"""Relative errors of the radiomics CycleGAN's selected features on held-out scans, before/after.

The quantity the RF loss pulls down (Kim et al., IEEE Access 12:19482, 2024, their Table 5):
for each feature the fitted method selected (``harmonizer.json``: names and target-site values,
soft 2-D features of the ROI slices, :func:`phyjax.methods.cyclegan.select_rf`), the mean over
the held-out subjects' source-site ROI slices of ``|f - target| / |target|``, for the raw slices
and for the harmonized ones -- computed exactly as in training (same bin width, bins,
temperature), on subjects the method never saw.  Reads a finished benchmark run folder
(``config.json``, ``split.json``, ``cyclegan_radiomics/harmonizer``) and reloads its dataset.

Run after the benchmark (the default data or a BIDS folder, paired or unpaired):
    JAX_PLATFORMS=cpu python benchmarks/cyclegan_rf_heldout.py runs/cg_both [more run folders]
Writes <run>/cyclegan_rf_heldout.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from phyjax import methods
from phyjax.data.dataset import load_dataset
from phyjax.data.slices import brain_slices
from phyjax.experiments.common import read_run
from phyjax.losses.radiomic import radiomics_config
from phyjax.methods import cyclegan


def heldout_errors(run: str, method: str = "cyclegan_radiomics") -> dict:
    config, split = read_run(run)
    h = methods.load(os.path.join(run, method, "harmonizer"))
    cfg, rf = h.cfg, h.rf
    names, target = rf["features"], np.asarray(rf["target"], np.float32)
    rcfg = radiomics_config(names, cfg["rf_bin_width"], cfg["rf_n_bins"])
    data = load_dataset(config.data, progress=False, paired=False, require_protocols=False)
    mult = cyclegan.slice_multiple(cfg)
    per_site = {}
    for s in split["test"]:
        for site, v in sorted(data.volumes[s].items()):
            if site == split["target_site"]:
                continue
            if site not in h.params and cyclegan.ALL_SITES not in h.params:
                continue      # a source site without training scans has no generator
            z = brain_slices(v.mask, config.data.min_mask_fraction)
            raw, msk = _slices(v.image, v.mask, z, mult)
            harm, _ = _slices(h.harmonize(v), v.mask, z, mult)
            for key, img in (("before", raw), ("after", harm)):
                e = cyclegan.rf_errors(names, target, rcfg, cfg["rf_temperature"], img * msk, msk)
                per_site.setdefault(site, {}).setdefault(key, []).append((len(z), e))
    rows = []
    for site, d in per_site.items():
        row = {"site": site}
        for key in ("before", "after"):
            w = np.array([n for n, _ in d[key]], float)
            row[key] = (np.stack([e for _, e in d[key]]) * w[:, None]).sum(0) / w.sum()
        rows.append(row)
    overall = {k: np.mean([r[k] for r in rows], axis=0) for k in ("before", "after")}
    return {"run": run, "features": names, "target": target.tolist(),
            "held_out": split["test"], "training_relerr_before": rf["relerr_before"],
            "training_relerr_after": rf["relerr_after"],
            "per_site": [{"site": r["site"], "before": r["before"].tolist(),
                          "after": r["after"].tolist()} for r in rows],
            "overall_before": overall["before"].tolist(),
            "overall_after": overall["after"].tolist()}


def _slices(image, mask, z, multiple):
    from phyjax.data.slices import pad_to_multiple, to_slices
    pads = pad_to_multiple(image.shape[:2], multiple)
    im = to_slices(np.asarray(image, np.float32), pads)[z][..., None]
    m = to_slices(np.asarray(mask, np.float32), pads)[z][..., None]
    return im, m


def markdown(res) -> str:
    head = "| source site | " + " | ".join(f"{n} before → after" for n in res["features"]) + " |"
    lines = [f"Selected features' relative error on held-out source slices (`{res['run']}`):", "",
             head, "|---|" + "---|" * len(res["features"])]
    for r in res["per_site"] + [{"site": "**mean over sites**", "before": res["overall_before"],
                                 "after": res["overall_after"]}]:
        lines.append(f"| {r['site']} | " + " | ".join(
            f"{b:.3f} → {a:.3f}" for b, a in zip(r["before"], r["after"])) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    for run in args.runs:
        res = heldout_errors(run)
        with open(os.path.join(run, "cyclegan_rf_heldout.json"), "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(run, "cyclegan_rf_heldout.md"), "w") as f:
            f.write(markdown(res))
        print(markdown(res))


if __name__ == "__main__":
    main()
