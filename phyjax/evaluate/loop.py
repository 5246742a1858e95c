"""The one evaluation loop: every image method on every held-out subject's source scans.

For each held-out subject and source site, each image-level harmonizer maps the source scan
(:meth:`~phyjax.methods.base.Harmonizer.harmonize`) and every *measure* compares the output
with the same subject's target-site scan.  A measure is a function
``measure(method, output, source, truth) -> {metric: value}`` (``source``/``truth`` are
:class:`~phyjax.data.volumes.Volume`); :func:`image_similarity` is the one every experiment uses,
the benchmark adds segmentation and volumes.  ``on_subject(subject, outputs)`` receives all of a
subject's outputs ``{(method, site): image}`` at once (saving volumes, radiomics, figures).
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np

from phyjax.data.volumes import Volume
from phyjax.evaluate.metrics import image_metrics
from phyjax.parallel import ordered_map

Measure = Callable[[str, np.ndarray, Volume, Volume], dict]


def image_similarity(method: str, output: np.ndarray, source: Volume, truth: Volume) -> dict:
    """SSIM, PSNR and NRMSE of ``output`` against ``truth`` inside the truth's brain mask."""
    return image_metrics(output, truth.image, truth.mask)


def evaluate_images(harmonizers: Mapping, volumes, subjects: Sequence[str], source_sites,
                    target_site: str, measures: Sequence[Measure] = (image_similarity,),
                    on_subject: Callable[[str, dict], None] | None = None,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """Rows ``{"method", "site", "subject", **measures}`` for every image harmonizer.

    Two scans are harmonized at once (:func:`phyjax.parallel.ordered_map`; each
    harmonizer's ``harmonize`` must be safe to call from two threads, as a jit-compiled
    network's and a numpy map's are); the measures run one after another in the loop's order.

    Args:
      harmonizers: ``{name: Harmonizer}``; feature-level ones (``kind != "image"``) are skipped.
      volumes: ``{subject: {site: Volume}}``.
      subjects: held-out subjects (from :meth:`phyjax.data.split.Split.held_out_subjects`).
      source_sites: sites to harmonize (those a subject lacks are skipped).
    """
    image_methods = {n: h for n, h in harmonizers.items() if h.kind == "image"}
    rows, t0 = [], time.time()
    for subject in subjects:
        truth, outputs = volumes[subject][target_site], {}
        jobs = [(site, name, h) for site in source_sites if site in volumes[subject]
                for name, h in image_methods.items()]
        # two scans harmonized at once (phyjax.parallel), measured one by one in this order
        done = ordered_map(lambda job: job[2].harmonize(volumes[subject][job[0]]), jobs)
        for (site, name, _), out in zip(jobs, done):
            source = volumes[subject][site]
            outputs[(name, site)] = out
            row = {"method": name, "site": site, "subject": subject}
            for measure in measures:
                row.update(measure(name, out, source, truth))
            rows.append(row)
        if on_subject is not None:
            on_subject(subject, outputs)
        if log is not None:
            log(f"evaluated subject {subject} ({time.time() - t0:.0f} s)")
    return rows
