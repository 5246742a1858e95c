"""The benchmark: how different are the sites, and how much does each harmonization method help?

``python -m phyjax.main --config=configs/benchmark.py --workdir=runs/benchmark``:

1. **Site differences before harmonization** (every subject, every site): radiomic features in
   the brain mask, per-site distributions, Kruskal-Wallis per feature and a cross-validated site
   classifier (:func:`phyjax.evaluate.site_difference.site_difference`).
2. **Fit every method** of ``config.methods`` through :func:`phyjax.methods.fit` on the training
   subjects only (a :class:`~phyjax.data.split.TrainingSet`); each is saved under
   ``<workdir>/<method>/harmonizer``.
3. **Evaluate on held-out subjects** with the one loop (:func:`phyjax.evaluate.loop.evaluate_images`):
   SSIM/PSNR/NRMSE, DIPY HMRF segmentation overlap and tissue volumes
   (:class:`~phyjax.evaluate.measures.TissueMeasure`), radiomic relative error, volume CoV across
   sites and the site classifier after harmonization; ComBat on feature tables; on default data
   built with ``data.lesions`` > 0, each white-matter lesion's contrast against the WM around it
   (:class:`~phyjax.evaluate.measures.LesionMeasure`).
4. **Report**: ``benchmark.md`` (:mod:`phyjax.evaluate.writeup`), ``benchmark.csv`` (mean, sd and
   95 % CI over subjects), per-subject CSVs, ``site_features.csv``, ``site_distributions.csv``,
   ``examples.png``, ``volumes.png``, ``radiomics.png``, ``split.json`` (with ``fitted_on``).
"""

from __future__ import annotations

import os
import time

from phyjax import methods as method_registry
from phyjax.data.atomic import atomic_open
from phyjax.data.dataset import Dataset, load_dataset
from phyjax.evaluate import figures, report, writeup
from phyjax.evaluate.loop import evaluate_images, image_similarity
from phyjax.evaluate.measures import (LesionMeasure, MapsAlongside, TissueMeasure,
                                      evaluate_features, reproducibility, subject_level)
from phyjax.evaluate.site_difference import radiomic_relative_error, site_difference, t_interval
from phyjax.evaluate.unpaired import anatomy_measure
from phyjax.experiments import unpaired
from phyjax.experiments.common import (feature_extractor, fit_methods, log, prepare_workdir,
                                       tissue_segmenter, write_protocols, write_split)

AVAILABLE = method_registry.AVAILABLE


def selected_methods(config) -> tuple[str, ...]:
    """``config.methods``; ValueError when empty or naming an unknown method."""
    methods = tuple(config.methods)
    unknown = [m for m in methods if m not in AVAILABLE]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {list(AVAILABLE)}.")
    if not methods:
        raise ValueError("config.methods is empty.")
    return methods


def site_differences(config, data: Dataset, extractor, workdir: str):
    """Radiomic features of every raw scan and the site-difference statistics (written as CSV).

    Returns ``(raw features {(subject, site): vector}, feature names, canvas, site_diff)``.
    """
    keys = [(s, site) for s in data.subjects for site in sorted(data.volumes[s])]
    vols = [data.volumes[s][site] for s, site in keys]
    canvas = extractor.canvas([v.mask for v in vols])
    names, table = extractor.table([v.image for v in vols], [v.mask for v in vols], canvas)
    c = config.classifier
    diff = site_difference(names, table, [k[1] for k in keys], [k[0] for k in keys],
                           n_splits=c.n_splits, c=c.c, n_permutations=c.n_permutations,
                           seed=c.seed)
    raw_feat = dict(zip(keys, table))
    report.write_rows([{"subject": s, "site": site, **dict(zip(names, map(float, x)))}
                       for (s, site), x in raw_feat.items()],
                      os.path.join(workdir, "site_features.csv"))
    report.write_rows(diff["distributions"], os.path.join(workdir, "site_distributions.csv"))
    return raw_feat, names, canvas, diff


class _Radiomics:
    """``on_subject`` callback: radiomic features of every output, and the example figure."""

    def __init__(self, data: Dataset, extractor, canvas, notes, example_subject):
        self.data, self.extractor, self.canvas, self.notes = data, extractor, canvas, notes
        self.example_subject, self.feats, self.examples = example_subject, {}, None

    def __call__(self, subject, outputs):
        order = list(outputs)
        masks = [self.data.volumes[subject][site].mask for _, site in order]
        capped = sorted({k[0] for k, m in zip(order, masks)
                         if self.extractor.bins_needed(outputs[k], m) > self.extractor.max_bins})
        if capped:
            self.notes.append(f"Radiomics: outputs of {', '.join(capped)} for subject {subject} "
                              f"span more than {self.extractor.max_bins} grey levels; their top "
                              "levels were merged.")
        _, table = self.extractor.table([outputs[k] for k in order], masks, self.canvas)
        self.feats.update({(m, subject, site): x for (m, site), x in zip(order, table)})
        if subject == self.example_subject:
            sites = list(dict.fromkeys(site for _, site in order))
            truth = self.data.volumes[subject][self.data.target_site]
            self.examples = {"sites": sites, "methods": list(dict.fromkeys(m for m, _ in order)),
                             "output": outputs, "truth": truth.image, "mask": truth.mask,
                             "source": {s: self.data.volumes[subject][s].image for s in sites}}


def evaluate(config, fitted, data: Dataset, test, tissue, radiomics: _Radiomics, raw_feat,
             n_features, progress):
    """Per-image rows (image methods through the one loop, then feature-level methods)."""
    lesions = LesionMeasure.from_dataset(data.root, test)   # default data with data.lesions
    rows = evaluate_images(fitted, data.volumes, test, data.source_sites, data.target_site,
                           measures=(image_similarity, tissue, anatomy_measure)
                           + ((lesions,) if lesions is not None else ()),
                           on_subject=radiomics,
                           log=lambda m: log(progress, "benchmark", m))
    for h in fitted.values():
        if h.kind == "features":
            f_rows, f_feats = evaluate_features(h, test, data.source_sites, data.target_site,
                                                tissue, raw_feat, n_features)
            rows += f_rows
            radiomics.feats.update(f_feats)
    for r in rows:
        r["radiomic_relerr"] = radiomic_relative_error(
            radiomics.feats[(r["method"], r["subject"], r["site"])],
            raw_feat[(r["subject"], data.target_site)])
    return rows


def benchmark(config, workdir: str, progress: bool = True) -> dict:
    """Run the whole benchmark (see the module docstring); returns a summary dict.

    A folder without traveling subjects (some subject lacks a target-site scan) runs the
    unpaired benchmark (:mod:`phyjax.experiments.unpaired`) instead; methods that cannot run on
    the data (paired-only networks, PhyCHarm without acquisition parameters) are skipped with a
    note saying why.
    """
    t0, timings, notes = time.time(), {}, []
    prepare_workdir(config, workdir)
    names = selected_methods(config)
    data = load_dataset(config.data, progress, paired=False, require_protocols=False,
                        workdir=workdir)
    write_protocols(workdir, data, config)
    if not data.paired:
        return unpaired.benchmark_unpaired(config, data, names, workdir, progress,
                                           feature_extractor(config.radiomics))
    names, skipped = unpaired.runnable(names, data)
    notes += skipped
    split = data.split(config.data.n_test, config.data.seed)
    example = config.eval.example_subject or split.test[0]
    if example not in split.test:
        raise ValueError(f"eval.example_subject {example!r} is not a held-out subject "
                         f"({list(split.test)}).")
    extractor = feature_extractor(config.radiomics)
    tissue = TissueMeasure(data.volumes, tissue_segmenter(config.segmentation))
    raw_feat, feature_names, canvas, site_diff = site_differences(config, data, extractor, workdir)
    timings["site_difference"] = time.time() - t0
    clf = site_diff["classifier"]
    log(progress, "benchmark", f"site classifier before harmonization: {clf['accuracy']:.2f} "
                               f"(chance {clf['chance']:.2f})")
    fitted = fit_methods(config, names, data, split,
                         lambda s, site: tissue.feature_row(raw_feat[(s, site)], s, site),
                         workdir, progress, notes, skippable=("combat",), timings=timings)
    write_split(os.path.join(workdir, "split.json"), data, split, fitted)
    t = time.time()
    test = split.held_out_subjects(fitted)
    # PhyCHarm's maps scored as the evaluation harmonizes (one network pass per scan, not two);
    # their note keeps its place before the evaluation's own
    maps = "phycharm" in fitted and data.has_maps
    scored = dict(fitted, phycharm=MapsAlongside(fitted["phycharm"])) if maps else fitted
    at = len(notes)
    radiomics = _Radiomics(data, extractor, canvas, notes, example)
    rows = evaluate(config, scored, data, test, tissue, radiomics, raw_feat, len(feature_names),
                    progress)
    if maps:
        notes.insert(at, _maps_note(scored["phycharm"].rows(data.volumes, test,
                                                            data.source_sites)))
    evaluated = [m for m in names if m in fitted]
    subject_rows, classifier_after = subject_level(evaluated, rows, radiomics.feats, test,
                                                   data.source_sites, config.classifier, notes)
    repro = reproducibility(evaluated, radiomics.feats, test, data.source_sites)
    report.write_rows(repro, os.path.join(workdir, "reproducibility.csv"))
    split.check_rows(rows, fitted)
    split.check_rows(subject_rows, fitted)
    timings["evaluate"] = time.time() - t
    summary = report.aggregate(rows, subject_rows, methods=evaluated)
    figs = write_outputs(workdir, data, rows, subject_rows, summary, radiomics, raw_feat,
                         feature_names, tissue, evaluated, test, config, example)
    timings["total"] = time.time() - t0
    result = writeup.BenchmarkResult(config, data.root, data.target_site, data.sites,
                                     data.source_sites, split, fitted, summary, site_diff,
                                     classifier_after, feature_names, notes, timings, repro)
    with atomic_open(os.path.join(workdir, "benchmark.md")) as f:
        f.write(writeup.markdown(result))
    report.write_json(os.path.join(workdir, "summary.json"),
                      {"dataset": data.root, "timings_s": timings, "notes": notes,
                       "methods": evaluated})
    return {"workdir": workdir, "dataset": data.root, "total_seconds": time.time() - t0,
            "rows": rows, "subject_rows": subject_rows, "summary": summary,
            "site_difference": site_diff, "classifier_after": classifier_after, "split": split,
            "fitted": fitted, "notes": notes, "figures": figs}


def _maps_note(maps) -> str:
    t1, m0 = (t_interval([r[k] for r in maps])[0] for k in ("t1_nrmse", "m0_nrmse"))
    return (f"PhyCHarm's quantitative maps on the held-out subjects: T1 NRMSE {t1:.3f}, "
            f"M0 NRMSE {m0:.3f} (mean over {len(maps)} images).")


def write_outputs(workdir, data: Dataset, rows, subject_rows, summary, radiomics, raw_feat,
                  names, tissue, evaluated, test, config, example) -> dict:
    """The CSV tables and the three figures."""
    report.write_rows(rows, os.path.join(workdir, "benchmark_per_subject.csv"))
    report.write_rows(subject_rows, os.path.join(workdir, "benchmark_subject_level.csv"))
    report.write_rows(summary, os.path.join(workdir, "benchmark.csv"))
    figs = {}
    if radiomics.examples is not None:
        figs["examples"] = figures.examples_figure(
            radiomics.examples, os.path.join(workdir, "examples.png"),
            title=f"held-out subject {example}: source -> each method -> target "
                  f"'{data.target_site}'")
    truth = {s: tissue.tissue_volumes(s, data.target_site) for s in test}
    figs["volumes"] = figures.volume_boxplots(rows, truth, os.path.join(workdir, "volumes.png"),
                                              evaluated, data.source_sites)
    shown = [f for f in config.report.features if f in names]
    before, after = figures.feature_groups(raw_feat, radiomics.feats, names, shown, data.sites,
                                           data.target_site, evaluated, test)
    figs["radiomics"] = figures.feature_distributions(
        before, after, shown, os.path.join(workdir, "radiomics.png"), evaluated, data.sites)
    return figs


def run(config, workdir: str):
    """Entry point of ``config.method == "benchmark"``."""
    return benchmark(config, workdir)
