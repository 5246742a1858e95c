"""Where does the fixed segmenter put the CSF/GM boundary on PhyCHarm's output, against the
same head's target scan?  (docs/phycharm_ablation.md item 80.)

On the first ``--heads`` of the heads the physics makes for a run's site maps (made again as
its training made them), harmonized whole at ``--site`` and passed through the saved map
(with its filter; ``--no-map``: the network's output itself), the run's segmenter -- its MRF
off (``mrf_smoothing`` 0: item 80 found the MRF does not move the CSF count) -- labels the
output and the target scan.  Printed per head:
the CSF fraction of the mask on each; the output's fraction below the *target's* CSF/GM
boundary (the brightest target voxel labelled CSF) -- what the intensities alone would give;
the boundary the segmenter chose on each; and, pooled over the heads, the output's and the
target's quantiles (what the quantile map matches); and, for CSF and WM, how the count's
error follows the head's fraction of the tissue (r, Spearman, slope).

Usage::

    python benchmarks/csf_cut.py --run runs/abl/sl79_s0 --site mprage1p5T --heads 8
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from phyjax.evaluate.segmentation import make_segmenter
from phyjax.methods import calibration

sys.path.insert(0, os.path.dirname(__file__))
from filter_criteria import maps_heads, site_map  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a benchmark run folder with phycharm/")
    ap.add_argument("--site", required=True)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--no-map", action="store_true",
                    help="score the network's output itself, its site map not applied")
    ap.add_argument("--mrf-smoothing", type=float, default=0.0,
                    help="the segmenter's MRF smoothing (default 0: intensities alone)")
    args = ap.parse_args(argv)
    cfg, harm, maps, heads = maps_heads(args.run)
    with cfg.unlocked():
        cfg.segmentation.mrf_smoothing = args.mrf_smoothing
    seg = make_segmenter(cfg.segmentation)
    outs, tgts, ratios, wm_ratios, wm_fracs, csf_fracs = [], [], [], [], [], []
    print("head | CSF fraction target / output | output below the target's boundary | "
          "boundary target / output")
    for subject in sorted(heads.subjects)[:args.heads]:
        vol, tgt = heads.volumes[subject][args.site], heads.volumes[subject][heads.target_site]
        entry = site_map(maps, vol)
        m = np.asarray(tgt.mask, bool)
        if not np.array_equal(np.asarray(vol.mask, bool), m):
            raise SystemExit(f"{subject}: the source scan's mask is not the target's.")
        out = harm.harmonize(vol)
        if not args.no_map:
            out = calibration.apply_site_map(out, m, entry)
        t_lab, o_lab = seg(tgt.image, m)[m], seg(out, m)[m]
        wm = max(np.unique(t_lab))          # the brightest: WM
        wm_ratios.append(np.mean(o_lab == wm) / np.mean(t_lab == wm))
        wm_fracs.append(np.mean(t_lab == wm))
        csf_fracs.append(np.mean(t_lab == min(np.unique(t_lab))))
        t, o = np.asarray(tgt.image)[m], out[m]
        csf = min(np.unique(t_lab))         # the darkest class of a T1w: CSF
        t_cut, o_cut = t[t_lab == csf].max(), o[o_lab == csf].max()
        ft, fo = np.mean(t_lab == csf), np.mean(o_lab == csf)
        ratios.append(fo / ft)
        print(f"{subject} | {ft:.4f} / {fo:.4f} ({100 * (fo / ft - 1):+.1f} %) | "
              f"{np.mean(o <= t_cut):.4f} ({100 * (np.mean(o <= t_cut) / ft - 1):+.1f} %) | "
              f"{t_cut:.4f} / {o_cut:.4f}", flush=True)
        outs.append(o)
        tgts.append(t)
    print(f"mean CSF count, output against target: {100 * (np.mean(ratios) - 1):+.2f} %")
    from scipy.stats import spearmanr

    for name, f, q in (("CSF", csf_fracs, ratios), ("WM", wm_fracs, wm_ratios)):
        e = 100 * (np.asarray(q) - 1)
        print(f"{name} count error against the head's {name} fraction: r "
              f"{np.corrcoef(f, e)[0, 1]:+.2f}, Spearman {spearmanr(f, e)[0]:+.2f}, slope "
              f"{np.polyfit(100 * np.asarray(f), e, 1)[0]:+.2f} %/pt, mean {e.mean():+.2f} %")
    o, t = np.concatenate(outs), np.concatenate(tgts)
    for p in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.9):
        print(f"pooled quantile {p:.2f}: output {np.quantile(o, p):.4f} target "
              f"{np.quantile(t, p):.4f}")


if __name__ == "__main__":
    main()
