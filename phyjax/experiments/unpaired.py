"""The benchmark on data without traveling subjects: different people at every site.

With no scan of the same subject at the target site there is no ground truth image, so the
benchmark measures what needs no pairs, before harmonization and after each method, on the
held-out subjects (methods are fitted on the training subjects only, as in the paired benchmark):

* **site separability** -- a site classifier on the radiomic features of the ROI (folds grouped
  by subject, chance level, permutation p-value), Kruskal-Wallis per feature (Bonferroni) and its
  effect size (epsilon squared);
* **distribution distances** between sites -- of the in-ROI intensities and of the features
  (1-Wasserstein in units of the pooled within-site SD, :mod:`phyjax.evaluate.unpaired`), and
  the ComBat-style location/scale differences of the features to the target site;
* **anatomy preservation** -- every output against its own source (rank and edge correlation),
  so that a method cannot win by erasing anatomy;
* **biology preservation** -- for each ``config.eval.covariates`` column of ``participants.tsv``,
  the share of the covariate's effect on the features (those that show it most before) that is
  still there after each method (1 = kept, 0 = erased);
* **a downstream task across sites** -- train on every site but one, test on that one
  (:mod:`phyjax.evaluate.downstream`): telling each ROI's core from its rim
  (``config.eval.rim_mm``) by their first-order radiomic features, and predicting each
  ``config.eval.covariates`` column from the ROI's features;
* **the paired metrics, where there are traveling subjects** -- held-out subjects who also have
  a target-site scan are scored against it as in the paired benchmark (SSIM, PSNR, NRMSE, tissue
  overlap and volumes for a brain ROI, radiomic error; the scans assumed co-registered).

The supervised U-Net (it needs traveling subjects) and, on folders whose sidecars lack
acquisition parameters, PhyCHarm are skipped with the reason in the report; with parameters
PhyCHarm trains on physics-made pairs (:mod:`phyjax.data.simulated`).  Writes ``unpaired.md``,
``unpaired.csv`` (one row per method), ``unpaired_downstream.csv`` (the downstream tasks per method and test site),
``unpaired_features.csv`` (every held-out output's features), ``unpaired_effect_sizes.csv`` (per
method and feature), ``site_embedding.png`` and, with traveling subjects,
``unpaired_paired_metrics.csv`` (method x site/overall) and
``unpaired_paired_metrics_per_subject.csv``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from phyjax.data import bids
from phyjax.data.atomic import atomic_open
from phyjax.data.dataset import Dataset
from phyjax.data.nifti import InputError
from phyjax.data.geometry import zooms
from phyjax.evaluate import downstream, figures, report, unpaired
from phyjax.evaluate.loop import evaluate_images, image_similarity
from phyjax.evaluate.measures import TissueMeasure
from phyjax.evaluate.site_difference import (kruskal_wallis, n_significant,
                                             radiomic_relative_error, site_classifier)
from phyjax.experiments.common import fit_methods, log, tissue_segmenter, write_split
from phyjax.methods.rescan import has_rescans

PAIRED_ONLY = ("unet",)
PHYSICS = ("phycharm", "phycharm_unpaired")  # unpaired data: trained on physics-made pairs


def runnable(names, data: Dataset) -> tuple[list[str], list[str]]:
    """The methods that can run on ``data``, and a note for each that cannot (and why)."""
    lacking = [v for vs in data.volumes.values() for v in vs.values() if v.protocol is None]
    keep, notes = [], []
    for name in names:
        if name in PAIRED_ONLY and not data.paired:
            notes.append(f"{name} not run: it trains on paired scans (the same subject at the "
                         f"target site), which this folder does not have.")
        elif name == "rescan" and not (data.paired and has_rescans(data.volumes)):
            notes.append("rescan (the ceiling: an independent re-scan with the target protocol) "
                         "not run: only the embedded default dataset has re-scans.")
        elif name in PHYSICS and lacking:
            notes.append(f"{name} not run: it needs acquisition parameters, which {len(lacking)} "
                         "scan(s) lack (see protocols.tsv).")
        else:
            keep.append(name)
    return keep, notes


def require_methods(names, notes, data: Dataset) -> None:
    """InputError naming the folder and every reason when no method is left to run on it
    (``names`` empty: each was skipped, ``notes`` say why) -- not a benchmark of nothing."""
    if not names:
        raise InputError(f"No method can run on {data.root}: " + " ".join(notes))


def held_out_scans(data: Dataset, split, notes) -> list[tuple[str, str]]:
    """Held-out ``(subject, site)`` scans of the sites that training saw (a method cannot map a
    site it never saw; such scans are left out for every method, with a note)."""
    seen = {site for s in split.train for site in data.volumes[s]}
    scans = [(s, site) for s in split.test for site in sorted(data.volumes[s])]
    unseen = sorted({site for _, site in scans} - seen)
    if unseen:
        notes.append(f"Held-out scans of {', '.join(unseen)} not evaluated: no training subject "
                     "was scanned there.")
    return [k for k in scans if k[1] in seen]


def _by_site(images, masks, sites) -> dict[str, np.ndarray]:
    """The in-ROI values of the images, pooled per site."""
    values = {}
    for image, mask, site in zip(images, masks, sites):
        values.setdefault(site, []).append(image[mask])
    return {k: np.concatenate(x) for k, x in values.items()}


def _roi_values(data: Dataset, keys) -> dict[str, np.ndarray]:
    vols = [data.volumes[s][site] for s, site in keys]
    return _by_site([v.image for v in vols], [v.mask for v in vols], [k[1] for k in keys])


def task_regions(data: Dataset, keys, rim_mm: float):
    """Core and rim of every scan's ROI for the downstream task (:func:`downstream.regions`,
    in the scan's own voxel size)."""
    vols = [data.volumes[s][site] for s, site in keys]
    return downstream.regions([v.mask for v in vols], [zooms(v.grid_affine()) for v in vols],
                              rim_mm)


def _outputs(fitted, data: Dataset, scans, extractor, canvas, raw_feat, scan_regions):
    """Per method: features, anatomy scores and core/rim task features (``None`` for a
    feature-level method) of every held-out scan, and its in-ROI values."""
    per_method = {}
    for name, h in fitted.items():
        if h.kind == "features":
            x = h.transform(np.stack([raw_feat[k] for k in scans]), [k[1] for k in scans])
            per_method[name] = {"features": x, "values": None, "anatomy": None, "task": None}
            continue
        images = [h.harmonize(data.volumes[s][site]) for s, site in scans]
        masks = [data.volumes[s][site].mask for s, site in scans]
        _, x = extractor.table(images, masks, canvas)
        anatomy = [unpaired.anatomy_preservation(im, data.volumes[s][site].image, m)
                   for im, m, (s, site) in zip(images, masks, scans)]
        per_method[name] = {"features": x, "anatomy": anatomy,
                            "values": _by_site(images, masks, [k[1] for k in scans]),
                            "task": downstream.region_features(extractor, images, scan_regions,
                                                               canvas)}
    return per_method


def _row(name, out, scans, names, c, reference, alpha=0.05) -> dict:
    x, sites, subjects = out["features"], [k[1] for k in scans], [k[0] for k in scans]
    clf = site_classifier(x, sites, subjects, n_splits=c.n_splits, c=c.c,
                          n_permutations=c.n_permutations, seed=c.seed)
    pvals = kruskal_wallis(names, x, sites).values()
    eps = list(unpaired.effect_sizes(names, x, sites).values())
    row = {"method": name, "n_images": len(scans), "site_acc": clf["accuracy"],
           "chance": clf["chance"], "p_value": clf["p_value"],
           "n_features_differ": n_significant(pvals, alpha),
           "median_effect_size": float(np.nanmedian(eps)),
           "feature_distance": unpaired.feature_distance(x, sites),
           "intensity_distance": (unpaired.site_distance(out["values"])["mean"]
                                  if out["values"] else float("nan")),
           **unpaired.location_scale(x, sites, reference)}
    for key in ("rank_corr", "edge_corr"):
        row[key] = (float(np.mean([a[key] for a in out["anatomy"]])) if out["anatomy"]
                    else float("nan"))
    return row


def _downstream(rows, per_method, scans, data: Dataset, covariates, c) -> list[dict]:
    """The downstream tasks across sites (:mod:`phyjax.evaluate.downstream`), leave one site
    out, on each method's outputs: the core-vs-rim task (``task_acc``, ``task_auc``: means over
    test sites) and, per covariate, its prediction from the ROI features (``cov_<c>_acc`` and
    ``cov_<c>_auc``, or ``cov_<c>_mae``).  Adds those to ``rows`` (matched by method) and
    returns the per-test-site rows."""
    per_site = []
    table = bids.read_participants(data.root, covariates) if covariates else {}
    for r in rows:
        out = per_method[r["method"]]
        sites = np.array([k[1] for k in scans])
        r["task_acc"] = r["task_auc"] = float("nan")
        if out["task"] is not None:
            _, x, labels, idx = out["task"]
            res = downstream.leave_one_site_out(x, labels, sites[idx], c=c)
            r["task_acc"] = downstream.mean_over_sites(res, "accuracy")
            r["task_auc"] = downstream.mean_over_sites(res, "auc")
            per_site += [{"method": r["method"], "task": "core_vs_rim", **x_} for x_ in res]
        for cov in covariates:
            values = [table.get(s, {}).get(cov, "") for s, _ in scans]
            keep = [i for i, v in enumerate(values) if v not in ("", "n/a")]
            res = downstream.covariate_transfer(out["features"][keep],
                                                [values[i] for i in keep], sites[keep], c=c)
            keys = ("mae",) if res and res[0]["kind"] == "numeric" else ("accuracy", "auc")
            for k in keys:
                r[f"cov_{cov}_{k[:3]}"] = downstream.mean_over_sites(res, k)
            per_site += [{"method": r["method"], "task": f"covariate:{cov}", **x_} for x_ in res]
    return per_site


def _biology(rows, per_method, scans, data: Dataset, covariates) -> None:
    """Add ``bio_<covariate>`` (share of the covariate's effect kept, :func:`biology_kept`,
    relative to ``none`` on the same held-out scans) to each method's row."""
    if not covariates or "none" not in per_method:
        return
    table = bids.read_participants(data.root, covariates)
    for c in covariates:
        cov = [table.get(s, {}).get(c, "") for s, _ in scans]
        keep = [i for i, v in enumerate(cov) if v not in ("", "n/a")]
        values = [cov[i] for i in keep]
        before = per_method["none"]["features"][keep]
        for r in rows:
            r[f"bio_{c}"] = unpaired.biology_kept(
                before, per_method[r["method"]]["features"][keep], values)["kept"]


def effect_rows(per_method, scans, names) -> list[dict]:
    """Per method and feature: Kruskal-Wallis p across sites and epsilon squared (the features
    that drive site separability, before and after each method)."""
    sites = [k[1] for k in scans]
    rows = []
    for m, out in per_method.items():
        p = kruskal_wallis(names, out["features"], sites)
        eps = unpaired.effect_sizes(names, out["features"], sites)
        rows += [{"method": m, "feature": f, "epsilon2": eps[f], "kruskal_p": p[f]} for f in names]
    return rows


def traveling_subjects(data: Dataset, scans) -> list[str]:
    """Held-out subjects (of ``scans``) with a target-site scan and a scan from another site."""
    target, subjects = data.target_site, list(dict.fromkeys(s for s, _ in scans))
    return [s for s in subjects if (s, target) in scans
            and any(k[0] == s and k[1] != target for k in scans)]


def paired_metrics(config, fitted, data: Dataset, scans, per_method, raw_feat, notes,
                   progress=False) -> tuple[list[dict], list[dict]]:
    """The paired benchmark's metrics for the traveling subjects among the held-out ones.

    Each of their non-target scans, after each image method, against the same subject's
    target-site scan (assumed co-registered, as in the paired benchmark), through the one loop
    (:func:`phyjax.evaluate.loop.evaluate_images`): SSIM, PSNR, NRMSE within the target's mask
    and, for a brain ROI (``data.mask_label`` ``brain``), the tissue segmentation overlap and
    volumes (:class:`~phyjax.evaluate.measures.TissueMeasure`); for every method, feature-level
    ones included, the radiomic relative error against the target scan's features.
    Returns ``(per-image rows, report.aggregate summary)``; both empty without travelers.
    """
    travelers = traveling_subjects(data, scans)
    if not travelers:
        return [], []
    target = data.target_site
    sites = sorted({site for _, site in scans if site != target})
    measures = [image_similarity]
    if config.data.get("mask_label", "brain") == "brain":
        measures.append(TissueMeasure(data.volumes, tissue_segmenter(config.segmentation)))
    else:
        notes.append("Traveling subjects: no tissue segmentation metrics (the ROI is not a "
                     "brain mask).")
    rows = evaluate_images(fitted, data.volumes, travelers, sites, target, measures=measures,
                           log=lambda m: log(progress, "benchmark", f"traveling: {m}"))
    rows += [{"method": m, "site": site, "subject": s} for m, h in fitted.items()
             if h.kind == "features" for s in travelers for site in sites
             if (s, site) in scans]
    index = {k: i for i, k in enumerate(scans)}
    for r in rows:
        r["radiomic_relerr"] = radiomic_relative_error(
            per_method[r["method"]]["features"][index[(r["subject"], r["site"])]],
            raw_feat[(r["subject"], target)])
    return rows, report.aggregate(rows, methods=list(fitted))


def benchmark_unpaired(config, data: Dataset, names, workdir, progress, extractor) -> dict:
    """The unpaired benchmark (module docstring) on a loaded dataset; returns a summary dict."""
    t0 = time.time()
    keep, notes = runnable(names, data)
    require_methods(keep, notes, data)      # before the minutes of feature extraction
    split = data.split(config.data.n_test, config.data.seed)
    keys = [(s, site) for s in data.subjects for site in sorted(data.volumes[s])]
    masks = [data.volumes[s][site].mask for s, site in keys]
    canvas = extractor.canvas(masks)
    images = [data.volumes[s][site].image for s, site in keys]
    feature_names, table = extractor.table(images, masks, canvas)
    raw_feat = dict(zip(keys, table))
    rim_mm = float(config.eval.get("rim_mm", 4.0))
    regions = dict(zip(keys, task_regions(data, keys, rim_mm)))
    thin = [k for k, r in regions.items() if r is None]
    if thin:
        notes.append(f"Core-vs-rim task: {len(thin)} scan(s) with an ROI too thin for a "
                     f"{rim_mm:g} mm rim and a core left out of it.")
    everyone = {"features": table, "anatomy": None, "values": _roi_values(data, keys),
                "task": downstream.region_features(extractor, images, [regions[k] for k in keys],
                                                   canvas)}
    before_all = _row("none (all subjects)", everyone, keys, feature_names, config.classifier,
                      data.target_site)
    covariates = tuple(config.eval.get("covariates", ()))
    downstream_rows = _downstream([before_all], {before_all["method"]: everyone}, keys, data,
                                  covariates, config.classifier.c)
    log(progress, "benchmark", f"site classifier on every scan before harmonization: "
                               f"{before_all['site_acc']:.2f} (chance {before_all['chance']:.2f}, "
                               f"p = {before_all['p_value']:.3g})")
    fitted = fit_methods(config, keep, data, split, lambda s, site: raw_feat[(s, site)], workdir,
                         progress, notes, skippable=keep)
    require_methods(list(fitted), notes, data)   # each skipped while fitting
    write_split(os.path.join(workdir, "split.json"), data, split, fitted)
    split.held_out_subjects(fitted)
    scans = held_out_scans(data, split, notes)
    per_method = _outputs(fitted, data, scans, extractor, canvas, raw_feat,
                          [regions[k] for k in scans])
    rows = [before_all] + [_row(name, out, scans, feature_names, config.classifier,
                                data.target_site) for name, out in per_method.items()]
    _biology(rows[1:], per_method, scans, data, covariates)
    downstream_rows += _downstream(rows[1:], per_method, scans, data, covariates,
                                   config.classifier.c)
    pair_rows, pair_summary = paired_metrics(config, fitted, data, scans, per_method, raw_feat,
                                             notes, progress)
    split.check_rows([{"method": m, "subject": s} for m in per_method for s, _ in scans], fitted)
    split.check_rows(pair_rows, fitted)
    notes.append("Held-out scans per site: " + ", ".join(
        f"{site} {sum(k[1] == site for k in scans)}" for site in sorted({k[1] for k in scans}))
        + "; every scan: " + ", ".join(f"{site} {sum(k[1] == site for k in keys)}"
                                         for site in data.sites) + ".")
    report.write_rows(rows, os.path.join(workdir, "unpaired.csv"))
    report.write_rows(downstream_rows, os.path.join(workdir, "unpaired_downstream.csv"))
    if pair_rows:
        report.write_rows(pair_summary, os.path.join(workdir, "unpaired_paired_metrics.csv"))
        report.write_rows(pair_rows,
                          os.path.join(workdir, "unpaired_paired_metrics_per_subject.csv"))
    report.write_rows(effect_rows(per_method, scans, feature_names),
                      os.path.join(workdir, "unpaired_effect_sizes.csv"))
    report.write_rows([{"method": m, "subject": s, "site": site, **dict(zip(feature_names, x))}
                       for m, out in per_method.items()
                       for (s, site), x in zip(scans, out["features"])],
                      os.path.join(workdir, "unpaired_features.csv"))
    figures.site_embedding({m: unpaired.embedding(out["features"]) for m, out in
                            per_method.items()}, [k[1] for k in scans],
                           os.path.join(workdir, "site_embedding.png"))
    with atomic_open(os.path.join(workdir, "unpaired.md")) as f:
        f.write(markdown(rows, data, split, notes, time.time() - t0, rim_mm,
                         pair_summary, len({r["subject"] for r in pair_rows})))
    return {"workdir": workdir, "dataset": data.root, "rows": rows, "notes": notes,
            "downstream": downstream_rows, "paired_rows": pair_rows,
            "paired_summary": pair_summary, "fitted": fitted, "split": split,
            "total_seconds": time.time() - t0}


def markdown(rows, data: Dataset, split, notes, seconds, rim_mm=4.0, pair_summary=(),
             n_travelers=0) -> str:
    cols = [("site_acc", "site-classifier acc. (→ chance)", "{:.2f}"),
            ("chance", "chance", "{:.2f}"),
            ("p_value", "permutation p", "{:.3g}"),
            ("n_features_differ", "features differ", "{}"),
            ("median_effect_size", "median ε²", "{:.3f}"),
            ("feature_distance", "feature W1 (sd)", "{:.3f}"),
            ("intensity_distance", "intensity W1 (sd)", "{:.3f}"),
            ("location", "location Δ vs target (sd)", "{:.3f}"),
            ("log_scale", "\\|log scale ratio\\|", "{:.3f}"),
            ("rank_corr", "anatomy: rank corr ↑", "{:.3f}"),
            ("edge_corr", "anatomy: edge corr ↑", "{:.3f}")]
    cols += [(k, f"biology kept: {k[4:]} ↑", "{:.2f}") for k in rows[-1] if k.startswith("bio_")]
    cols += [("task_acc", "core-vs-rim acc. (other sites → site) ↑", "{:.2f}"),
             ("task_auc", "core-vs-rim AUC ↑", "{:.2f}")]
    names = {"acc": "acc. ↑", "auc": "AUC ↑", "mae": "MAE ↓"}
    cols += [(k, f"{k[4:-4]} from features (other sites → site): {names[k[-3:]]}", "{:.2f}")
             for k in rows[-1] if k.startswith("cov_")]
    out = ["# Harmonization benchmark without traveling subjects", "",
           f"Dataset `{data.root}`; sites {', '.join(data.sites)}; target **{data.target_site}**; "
           f"{len(split.train)} training and {len(split.test)} held-out subjects (one scan each "
           f"where unpaired); {seconds:.0f} s.  The first row is every scan before harmonization "
           "(how different are the sites?); the others are on the held-out subjects' scans, "
           "`none` being the same scans before harmonization.", "",
           "| method | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = ["–" if not isinstance(r.get(k, float("nan")), (int, str)) and
                 not np.isfinite(r.get(k, float("nan"))) else f.format(r[k]) for k, _, f in cols]
        out.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    out += ["", "Distances: mean pairwise 1-Wasserstein distance between sites in units of the "
            "pooled within-site SD (0 = identical distributions; a shift by d SDs reads d); "
            "location Δ: median |mean difference| to the target site in the same SDs.  "
            "Anatomy: each output against its own source inside the ROI (1 = structure kept; "
            "ComBat changes features, not images).", "",
            "Downstream task across sites (`unpaired_downstream.csv`, per test site): each ROI "
            f"is split into its rim (the voxels within {rim_mm:g} mm of its boundary) and its "
            "core; a standardized logistic regression on the regions' first-order radiomic "
            "features (without those that grow with the region's size) is trained on every "
            "site but one and tells core from rim on that one (chance 0.50); the columns are "
            "means over test sites.  Accuracy needs the decision threshold learnt elsewhere to "
            "transfer, AUC only the ranking within the test site, so a site effect shows in "
            "accuracy first.  The task is posed on images: `–` for ComBat.  A covariate column "
            "does the same for that `participants.tsv` column from each scan's ROI features "
            "(accuracy and AUC, or mean absolute error for a numeric one).", ""]
    if pair_summary:
        keys = [k for k in ("ssim", "psnr", "nrmse", "dice_csf", "dice_gm", "dice_wm",
                            "vol_reldiff_gm", "vol_reldiff_wm", "radiomic_relerr")
                if any(np.isfinite(r.get(f"{k}_mean", np.nan)) for r in pair_summary)]
        out += [f"## Traveling subjects (n={n_travelers})", "",
                "The held-out subjects that also have a scan at the target site: each of their "
                "other scans, after each method, against that target scan, assumed "
                "co-registered with it (as in the paired benchmark); mean ± half-width of the "
                "95 % CI over subjects (`unpaired_paired_metrics.csv`; per image: "
                "`unpaired_paired_metrics_per_subject.csv`).", "",
                report.markdown_table(pair_summary, keys)]
    out += ["## Notes", ""]
    return "\n".join(out + [f"* {n}" for n in notes]) + "\n"
