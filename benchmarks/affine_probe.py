"""How much of a site map's intensity gain is linear?  (docs/phycharm_ablation.md item 80.)

On the first ``--heads`` of the heads the physics makes for a run's site maps (made again as
its training made them), harmonized whole at ``--site``: PSNR / SSIM against each head's
target scan of the network's output alone, of the output through the saved site map (without
its filter), and through an increasing affine map fitted by least squares on the same heads'
pooled in-mask voxels (in-sample, as the quantile map is). The fixed segmenter's labels do not
change under an increasing affine map, so the third keeps the network's own volumes.

Usage::

    python benchmarks/affine_probe.py --run runs/abl/sl79_s0 --site mprage1p5T --heads 8
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from phyjax.evaluate.metrics import image_metrics
from phyjax.methods import calibration

sys.path.insert(0, os.path.dirname(__file__))
from filter_criteria import maps_heads, site_map  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--site", required=True)
    ap.add_argument("--heads", type=int, default=8)
    args = ap.parse_args(argv)
    cfg, harm, maps, heads = maps_heads(args.run)
    triples = []
    for subject in sorted(heads.subjects)[:args.heads]:
        vol, tgt = heads.volumes[subject][args.site], heads.volumes[subject][heads.target_site]
        entry = site_map(maps, vol)
        out = harm.harmonize(vol)
        triples.append((out, calibration.apply_site_map(out, tgt.mask, dict(entry, denoise=None)),
                        tgt))
    o = np.concatenate([a[t.mask] for a, _, t in triples]).astype(np.float64)
    y = np.concatenate([np.asarray(t.image)[t.mask] for _, _, t in triples]).astype(np.float64)
    slope = float(np.mean((o - o.mean()) * (y - y.mean())) / np.var(o))   # least squares,
    offset = float(y.mean() - slope * o.mean())                           # in float64
    print(f"affine map: {slope:.4f} x {offset:+.4f} (least squares, pooled)")
    for name, pick in (("network alone", lambda a, q, m: a),
                       ("quantile map", lambda a, q, m: q),
                       ("affine map", lambda a, q, m: np.where(m, slope * a + offset, 0))):
        rows = [image_metrics(pick(a, q, t.mask).astype(np.float32), t.image, t.mask)
                for a, q, t in triples]
        print(f"{name:14s} PSNR {np.mean([r['psnr'] for r in rows]):.2f} dB, SSIM "
              f"{np.mean([r['ssim'] for r in rows]):.4f}")


if __name__ == "__main__":
    main()
