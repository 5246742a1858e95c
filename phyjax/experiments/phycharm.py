"""PhyCHarm end to end: data -> fit (PhyCHarm + baselines) -> held-out evaluation -> reports.

``train_and_evaluate(config, workdir)`` is importable from a notebook; ``run`` dispatches
``config.mode`` (``train_eval``, or ``harmonize``: :mod:`phyjax.experiments.harmonize`).
"""

from __future__ import annotations

import json
import os
import time


from phyjax import methods
from phyjax.data.nifti import InputError
from phyjax.methods import intensity
from phyjax.data.atomic import atomic_open
from phyjax.data.dataset import Dataset, load_dataset
from phyjax.data.nifti import save_like
from phyjax.data.volumes import native_image
from phyjax.evaluate import figures, report
from phyjax.evaluate.loop import evaluate_images, image_similarity
from phyjax.evaluate.measures import LesionMeasure, MapsAlongside
from phyjax.experiments import harmonize as harmonize_mode
from phyjax.experiments.common import (prepare_workdir, target_protocol, write_protocols,
                                       write_split)

METHOD = "phycharm"
HARMONIZER_DIR = "harmonizer"


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
    """Load data, fit PhyCHarm and ``config.eval.baselines``, evaluate on held-out subjects.

    Writes into ``workdir``: ``config.json``, ``split.json``, ``checkpoints/``, ``harmonizer/``
    (the fitted PhyCHarm, for harmonize mode), ``train_log.csv``, ``metrics.csv``,
    ``metrics_per_subject.csv``, ``metrics.md``, ``maps_metrics.csv``,
    ``harmonized/sub-*/...nii.gz`` and ``figure.png``.  Returns a summary dict.

    A folder without traveling subjects trains on physics-made pairs (``config.train.pairs``
    ``auto``/``simulated``); held-out subjects with a target-site scan are scored against it,
    the others are harmonized and saved (``metrics.md`` says so; the unpaired evaluation is the
    benchmark's, ``configs/benchmark.py``).  Baselines need target-site scans to fit on.
    """
    t0 = time.time()
    unknown = sorted(set(config.eval.baselines) - set(intensity.NAMES))
    if unknown:
        raise InputError(f"config.eval.baselines: {unknown} are not intensity baselines; choose "
                         f"from {list(intensity.NAMES)} (the benchmark compares every method).")
    prepare_workdir(config, workdir)
    data = load_dataset(config.data, progress, paired=config.train.pairs == "paired",
                        workdir=workdir)
    split = data.split(config.data.n_test, config.data.seed)
    train = data.training_set(split, target_protocol(config))
    write_split(os.path.join(workdir, "split.json"), data, split)
    write_protocols(workdir, data, config)
    t_train = time.time()
    fitted = {METHOD: methods.fit(METHOD, config, train, workdir=workdir, progress=progress,
                                  has_maps=data.has_maps)}
    train_seconds = time.time() - t_train
    methods.save(fitted[METHOD], os.path.join(workdir, HARMONIZER_DIR))
    notes = []
    baselines = list(config.eval.baselines) if train.target_scans() else []
    if config.eval.baselines and not baselines:
        notes.append(f"Baselines {list(config.eval.baselines)} not fitted: no training subject "
                     f"has a scan from the target site {data.target_site!r}.")
    for name in baselines:
        fitted[name] = methods.fit(name, config, train)
    fitted = {name: fitted[name] for name in (*baselines, METHOD)}
    write_split(os.path.join(workdir, "split.json"), data, split, fitted)
    test = split.held_out_subjects(fitted)
    paired = [s for s in test if data.target_site in data.volumes[s]]
    outputs = _Outputs(config, workdir, data, paired[0] if paired else None)
    lesions = LesionMeasure.from_dataset(data.root, paired)   # default data with data.lesions
    # PhyCHarm's maps scored as it harmonizes (one network pass per scan, not two)
    scored = dict(fitted, **{METHOD: MapsAlongside(fitted[METHOD])})
    rows = evaluate_images(scored, data.volumes, paired, data.source_sites, data.target_site,
                           measures=(image_similarity,) + ((lesions,) if lesions else ()),
                           on_subject=outputs)
    for s in (s for s in test if s not in paired):  # no ground truth: harmonize and save
        outputs(s, {(METHOD, site): fitted[METHOD].harmonize(v)
                    for site, v in data.volumes[s].items() if site != data.target_site})
    if len(paired) < len(test):
        notes.append(f"{len(test) - len(paired)} held-out subject(s) have no target-site scan: "
                     "harmonized and saved, not scored (the unpaired evaluation is "
                     "configs/benchmark.py's).")
    split.check_rows(rows, fitted)
    map_rows = (scored[METHOD].rows(data.volumes, paired, data.source_sites)
                if data.has_maps else [])
    write_reports(workdir, rows, map_rows, notes)
    if outputs.figure_rows:
        figures.comparison_figure(outputs.figure_rows, os.path.join(workdir, "figure.png"),
                                  title=f"PhyCHarm, held-out subject {paired[0]} -> target "
                                        f"'{data.target_site}'")
    summary = {"workdir": workdir, "dataset": data.root, "train_seconds": train_seconds,
               "total_seconds": time.time() - t0, "notes": notes, "rows": rows}
    with atomic_open(os.path.join(workdir, "summary.json")) as f:
        json.dump({k: v for k, v in summary.items() if k != "rows"}, f, indent=2)
    return summary


class _Outputs:
    """``on_subject`` callback: PhyCHarm's volumes as NIfTI, and the figure's rows."""

    def __init__(self, config, workdir: str, data: Dataset, figure_subject: str):
        self.save = config.eval.save_volumes
        self.workdir, self.data, self.figure_subject = workdir, data, figure_subject
        self.figure_rows: list[dict] = []

    def __call__(self, subject: str, outputs: dict) -> None:
        truth = self.data.volumes[subject].get(self.data.target_site)
        for (method, site), image in outputs.items():
            if method != METHOD:
                continue
            source = self.data.volumes[subject][site]
            if self.save:
                out = os.path.join(self.workdir, "harmonized", f"sub-{subject}",
                                   f"sub-{subject}_ses-{site}_desc-{METHOD}_T1w.nii.gz")
                save_like(*native_image(source, image), out)  # the source's grid and header
            if subject == self.figure_subject:
                self.figure_rows.append({"label": site, "source": source.image,
                                         "harmonized": image, "truth": truth.image,
                                         "mask": truth.mask})


def write_reports(workdir: str, rows: list[dict], map_rows: list[dict],
                  notes: list[str] = ()) -> list[dict]:
    """``metrics_per_subject.csv``, ``metrics.csv`` (mean, sd, 95 % CI), ``metrics.md``, maps."""
    report.write_rows(rows, os.path.join(workdir, "metrics_per_subject.csv"))
    summary = report.aggregate(rows) if rows else []
    report.write_rows(summary, os.path.join(workdir, "metrics.csv"))
    report.write_rows(map_rows, os.path.join(workdir, "maps_metrics.csv"))
    with atomic_open(os.path.join(workdir, "metrics.md")) as f:
        if summary:
            f.write("Held-out subjects, metrics inside the brain mask against the ground-truth "
                    "target-protocol image (mean ± sd over subjects).\n\n")
            lesions = ["lesion_contrast", "lesion_contrast_err"] if any(
                "lesion_contrast" in r for r in rows) else []
            f.write(report.markdown_table(summary, ["ssim", "psnr", "nrmse"] + lesions,
                                          site=None, first=("site", "method"), spread="sd"))
        for note in notes:
            f.write(f"\n{note}\n")
        if map_rows:
            f.write("\nQuantitative maps predicted by the generator (at the source B0) vs the "
                    "simulated ground truth, NRMSE inside the brain mask.\n\n")
            f.write(report.maps_table(map_rows))
    return summary


def run(config, workdir: str):
    """Dispatch on ``config.mode``: ``train_eval`` or ``harmonize``."""
    if config.mode == "train_eval":
        return train_and_evaluate(config, workdir)
    if config.mode == "harmonize":
        return harmonize_mode.harmonize(config.harmonize, os.path.join(workdir, HARMONIZER_DIR),
                                        default_output_dir=os.path.join(workdir, "harmonized"),
                                        target_cfg=config.target, data_cfg=config.data,
                                        config=config)
    raise ValueError(f"Unknown mode {config.mode!r}; expected 'train_eval' or 'harmonize'.")
