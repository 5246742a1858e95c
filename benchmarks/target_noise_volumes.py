"""Does the target scans' noise move the fixed segmenter's volumes?  (docs/phycharm_ablation.md
item 73.)

PhyCHarm's site maps carry its outputs onto heads made by the physics and imaged with the
target protocol *clean*; the data's target-site scans carry that site's scanner effects (the
default data's reference site: 1 % Rician noise).  For the first ``--subjects`` heads of a
run's dataset (``--data-seed``: another split's), the segmenter of the run's config segments the
target scan and a clean re-synthesis of the same head with the same protocol
(:func:`phyjax.data.synthetic.acquire` without effects, on the head's ground truth,
:func:`phyjax.data.synthetic.dataset_subject`); printed: the volume differences (%, clean
minus scan) and the two images' correlation.

Usage::

    python benchmarks/target_noise_volumes.py --run runs/abl/cfit8_s0 --data-seed 1 --subjects 6
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from phyjax.data import synthetic
from phyjax.data.dataset import load_dataset
from phyjax.data.volumes import normalize
from phyjax.evaluate.overlap import tissue_volumes
from phyjax.evaluate.segmentation import make_segmenter
from phyjax.experiments.common import read_run
from phyjax.physics import scanner


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="benchmark run folder (its config.json)")
    ap.add_argument("--data-seed", type=int, default=-1, help="another split's heads")
    ap.add_argument("--subjects", type=int, default=6)
    args = ap.parse_args(argv)
    cfg, _ = read_run(args.run)
    if args.data_seed >= 0:
        with cfg.unlocked():
            cfg.data.seed = args.data_seed
    data = load_dataset(cfg.data, progress=False, paired=True)
    seg = make_segmenter(cfg.segmentation)
    template = synthetic.load_anatomy(int(cfg.data.voxel_size))[0]
    print("target site's effects:", synthetic.site_effects(cfg.data.sites[data.target_site]))
    for subject in sorted(data.volumes)[:args.subjects]:
        tgt = data.volumes[subject][data.target_site]
        mask = np.asarray(tgt.mask, bool)
        probs, factors, texture = synthetic.dataset_subject(cfg.data, int(subject) - 1, template)
        maps = synthetic.quantitative_maps(probs, factors, texture,
                                           float(tgt.protocol.field_strength),
                                           cfg.data.partial_volume)
        clean = normalize(np.asarray(synthetic.acquire(
            maps, mask, tgt.protocol, scanner.ScannerEffects(), jax.random.key(0))), mask)
        volumes = {name: tissue_volumes(seg(img, mask)[mask], 1.0)
                   for name, img in (("scan", np.asarray(tgt.image)), ("clean", clean))}
        diff = {t: round(100 * (volumes["clean"][t] - volumes["scan"][t]) / volumes["scan"][t], 2)
                for t in volumes["scan"]}
        corr = np.corrcoef(clean[mask], np.asarray(tgt.image)[mask])[0, 1]
        print(f"{subject}: volume clean - scan (%) {diff}, correlation {corr:.4f}", flush=True)


if __name__ == "__main__":
    main()
