"""Which form of site map gains the intensity cells without reshaping the tissue classes?
(docs/phycharm_ablation.md item 81.)

On the first ``--heads`` of the heads the physics makes for a run's site maps (made again as
its training made them), harmonized whole at each ``--sites`` site, each candidate map is
applied to the network's output alone (the saved maps' filters off) and scored against the
head's target scan: SSIM / PSNR, the fixed segmenter's Dice and signed volume errors (%), and
how the CSF and WM errors follow the head's own fraction of that tissue (Spearman's rho; item
80 found the pooled quantile map makes that trend).  The forms:

* ``none``: the network's output;
* ``quantile``: the saved map (quantile matching of the pooled outputs onto the pooled target
  scans, :func:`phyjax.methods.calibration.fit_site_maps`), its filter off;
* ``affine-ls``: the increasing affine map of least squares on the heads' pooled voxel pairs;
* ``affine-moments``: the affine map that gives the pooled output the pooled target's mean and
  sd (a distribution-level map, like the quantile map, needing no voxel pairs);
* ``isotonic``: the least-squares increasing map on the voxel pairs (isotonic regression,
  the conditional mean of the target given the output; scikit-learn).

Every fitted form is fitted on the same heads it is scored on (in-sample, as the saved map
was); the segmenter's labels are unchanged by an increasing affine map (up to its
convergence), so the affine forms keep the network's volumes by construction.

Usage::

    python benchmarks/map_forms.py --run runs/abl/sl79_s0 --sites mprage1p5T,siemensMPRAGE3T \
        --heads 8 --out benchmarks/results/map_forms_s0.md
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from phyjax.evaluate.overlap import TISSUES, tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.methods import calibration

sys.path.insert(0, os.path.dirname(__file__))
from filter_criteria import maps_heads, site_map  # noqa: E402
from refine_sweep import score  # noqa: E402

FORMS = ("none", "quantile", "affine-ls", "affine-moments", "isotonic")


def fit_forms(pairs: list, entry: dict, max_pairs: int = 2_000_000, seed: int = 0) -> dict:
    """``{form: image -> image}`` (inside the mask; 0 outside) for :data:`FORMS`, the fitted
    ones on ``pairs`` ``[(output, target, mask)]`` of one grid each, pooled (isotonic on at most
    ``max_pairs`` voxel pairs drawn with ``seed``)."""
    from sklearn.isotonic import IsotonicRegression

    o = np.concatenate([a[m] for a, _, m in pairs]).astype(np.float64)
    y = np.concatenate([t[m] for _, t, m in pairs]).astype(np.float64)
    slope = float(np.mean((o - o.mean()) * (y - y.mean())) / np.var(o))
    ls = (slope, float(y.mean() - slope * o.mean()))
    s_m = float(y.std() / o.std())
    mom = (s_m, float(y.mean() - s_m * o.mean()))
    pick = np.random.default_rng(seed).permutation(o.size)[:max_pairs]
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(o[pick], y[pick])
    plain = dict(entry, denoise=None)

    def affine(ab):
        return lambda x, m: np.where(m, ab[0] * x + ab[1], 0.0).astype(np.float32)

    def isotonic(x, m):
        out = np.zeros_like(x, dtype=np.float32)
        out[m] = iso.predict(x[m].astype(np.float64))
        return out
    print(f"affine-ls {ls[0]:.4f} x {ls[1]:+.4f}; affine-moments {mom[0]:.4f} x {mom[1]:+.4f}",
          flush=True)
    return {"none": lambda x, m: np.where(m, x, 0.0).astype(np.float32),
            "quantile": lambda x, m: calibration.apply_site_map(x, m, plain),
            "affine-ls": affine(ls), "affine-moments": affine(mom), "isotonic": isotonic}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a benchmark run folder with phycharm/")
    ap.add_argument("--sites", required=True, help="comma-separated source sites")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    from scipy.stats import spearmanr

    cfg, harm, maps, heads = maps_heads(args.run)
    seg = make_segmenter(cfg.segmentation)
    subjects = sorted(heads.subjects)[:args.heads]
    lines = [f"# Forms of site map on the maps' own heads: {args.run}", "",
             f"First {len(subjects)} of the {len(heads.subjects)} heads made by the physics for "
             "the run's site maps, harmonized whole; every fitted form in-sample on them. "
             "Volumes: the run's segmenter on the output against it on the head's target scan "
             "(signed %, mean and sd over the heads); rho: Spearman of the CSF / WM error "
             "against the head's own CSF / WM fraction.", "",
             "| site | form | SSIM | PSNR (dB) | Dice CSF / GM / WM | dV CSF / GM / WM (%) | "
             "sd dV CSF / GM / WM | mean abs dV | rho CSF / WM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for site in args.sites.split(","):
        heads_out = []
        for subject in subjects:
            vol = heads.volumes[subject][site]
            tgt = heads.volumes[subject][heads.target_site]
            if np.shape(vol.mask) != np.shape(tgt.mask):
                raise SystemExit(f"{site}: its heads' grid is not the target's; not scored.")
            heads_out.append((harm.harmonize(vol), np.asarray(tgt.image, np.float32),
                              np.asarray(tgt.mask, bool), tgt))
        forms = fit_forms([(o, t, m) for o, t, m, _ in heads_out],
                          site_map(maps, heads.volumes[subjects[0]][site]))
        rows = {f: [] for f in FORMS}
        fracs = []
        for (out, _, m, tgt), subject in zip(heads_out, subjects):
            t_lab = seg(tgt.image, m)
            t_vol = tissue_volumes(t_lab[m], 1.0)
            fracs.append({t: t_vol[t] / sum(t_vol.values()) for t in TISSUES})
            for f in FORMS:
                rows[f].append(score(forms[f](out, m), tgt, t_lab, t_vol, seg))
            print(f"{site} {subject} scored", flush=True)
        for f in FORMS:
            rs = rows[f]

            def col(k, rs=rs):
                return np.array([r[k] for r in rs])
            rho = [spearmanr([x[t] for x in fracs], col(f"dv_{t}"))[0] for t in ("csf", "wm")]
            mad = np.mean([np.mean([abs(r[f"dv_{t}"]) for t in TISSUES]) for r in rs])
            lines.append(
                f"| {site} | {f} | {col('ssim').mean():.4f} | {col('psnr').mean():.2f} | "
                + " / ".join(f"{col(f'dice_{t}').mean():.4f}" for t in TISSUES) + " | "
                + " / ".join(f"{col(f'dv_{t}').mean():+.2f}" for t in TISSUES) + " | "
                + " / ".join(f"{col(f'dv_{t}').std():.2f}" for t in TISSUES)
                + f" | {mad:.2f} | {rho[0]:+.2f} / {rho[1]:+.2f} |")
        print("\n".join(lines[-len(FORMS):]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
