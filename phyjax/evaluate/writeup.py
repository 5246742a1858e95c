"""The benchmark's ``benchmark.md``: tables of :mod:`phyjax.evaluate.report` with the prose that
says what each number is.  One function per section, all reading one :class:`BenchmarkResult`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from phyjax.evaluate import report
from phyjax.evaluate.overlap import TISSUES
from phyjax.evaluate.segmentation import make_segmenter


@dataclasses.dataclass
class BenchmarkResult:
    """Everything the write-up reports (built by :func:`phyjax.experiments.benchmark.benchmark`)."""

    config: Any
    root: str
    target_site: str
    sites: list[str]
    source_sites: list[str]
    split: Any
    fitted: dict
    summary: list[dict]
    site_diff: dict
    classifier_after: dict
    feature_names: list[str]
    notes: list[str]
    timings: dict
    reproducibility: list = dataclasses.field(default_factory=list)


def markdown(r: BenchmarkResult) -> str:
    """The whole ``benchmark.md``."""
    parts = [_header(r), _site_differences(r), _overall(r), _per_site(r), _segmentation(r),
             _volumes(r), _classifier_after(r), _anatomy(r), _reproducibility(r), _notes(r)]
    return "\n".join(parts) + "\n"


def _chance(r: BenchmarkResult) -> float:
    return (1.0 / len(r.source_sites)) if r.source_sites else float("nan")


def _header(r: BenchmarkResult) -> str:
    s = r.split
    return "\n".join([
        "# Harmonization benchmark", "",
        f"Dataset `{r.root}`; target protocol **{r.target_site}**; "
        f"{len(s.train) + len(s.test)} subjects ({len(s.train)} training: {', '.join(s.train)}; "
        f"{len(s.test)} held-out: {', '.join(s.test)}); source sites: "
        f"{', '.join(r.source_sites)}.  Total time {r.timings['total']:.0f} s.", ""])


def _site_differences(r: BenchmarkResult) -> str:
    clf, (_, lo, hi, n) = r.site_diff["classifier"], r.site_diff["accuracy_ci"]
    rad = r.config.radiomics
    out = ["## 1. How different are the sites? (before harmonization, every subject and site)", "",
           f"Radiomic features ({len(r.feature_names)}: {', '.join(rad.classes)}; "
           f"phyjax.radiomics, PyRadiomics names, bin width {rad.bin_width:g}) of the brain mask "
           f"of {clf['n_samples']} images.", "",
           f"* **Site classifier** (standardized logistic regression, {clf['n_folds']}-fold "
           f"cross-validation grouped by subject): accuracy **{clf['accuracy']:.2f}**"
           + (f" (95 % CI over subjects {lo:.2f}–{hi:.2f})" if n >= 2 and np.isfinite(lo) else "")
           + f"; chance level **{clf['chance']:.2f}** ({clf['n_sites']} sites)"
           + (f"; permutation p = {clf['p_value']:.3g} (site labels shuffled within subjects)"
              if np.isfinite(clf["p_value"]) else "") + ".",
           f"* **Kruskal-Wallis** per feature: {r.site_diff['n_significant']} of "
           f"{r.site_diff['n_features']} features differ between sites (Bonferroni-corrected "
           f"p < {r.site_diff['alpha']}).", ""]
    feats = [f for f in r.config.report.features if f in r.feature_names]
    if feats:
        dist = {(d["site"], d["feature"]): d for d in r.site_diff["distributions"]}
        out += ["Per-site median [IQR] (all rows in `site_distributions.csv`):", "",
                "| site | " + " | ".join(feats) + " |", "|---|" + "---|" * len(feats)]
        for s in r.sites:
            out.append(f"| {s} | " + " | ".join(
                f"{dist[(s, f)]['median']:.3g} [{dist[(s, f)]['q25']:.3g}, "
                f"{dist[(s, f)]['q75']:.3g}]" for f in feats) + " |")
        out.append("")
    return "\n".join(out)


def _overall(r: BenchmarkResult) -> str:
    keys = ["ssim", "psnr", "nrmse", "dice_csf", "dice_gm", "dice_wm", "vol_reldiff_gm",
            "vol_reldiff_wm", "cov_gm", "cov_wm", "radiomic_relerr", "site_acc"]
    return "\n".join([
        "## 2. Harmonization on held-out subjects (overall)", "",
        "Mean ± half-width of the Student-t 95 % CI over held-out subjects (each subject's "
        "source sites averaged first); best in bold; `–` = does not apply (ComBat changes "
        "features and volumes, not images).  Site-classifier chance level after "
        f"harmonization: {_chance(r):.2f} ({len(r.source_sites)} source sites)."
        + _ceiling_note(r), "",
        report.markdown_table(r.summary, keys)])


def _ceiling_note(r: BenchmarkResult) -> str:
    if not any(row["method"] in report.CEILINGS for row in r.summary):
        return ""
    return ("  *rescan (ceiling)*: each held-out subject's independent re-scan with the target "
            "protocol (same scanner, new noise and bias draw) -- no method can be expected to "
            "come closer to the target scan; it is not a method and never bold.")


def _per_site(r: BenchmarkResult) -> str:
    keys = ["ssim", "psnr", "nrmse", "dice_gm", "dice_wm", "vol_reldiff_gm", "vol_reldiff_wm",
            "radiomic_relerr"]
    table = report.markdown_table(r.summary, keys, site=None, first=("site", "method"))
    return "\n".join(["## 3. Per source site", "",
                      table.replace(f"| {report.OVERALL} |", "| *overall* |")])


def _segmentation(r: BenchmarkResult) -> str:
    keys = [f"{m}_{t}" for m in ("iou", "f1", "precision", "recall") for t in ("gm", "wm")]
    return "\n".join(["## 4. Tissue segmentation against the target image's segmentation "
                      "(overall)", "", report.markdown_table(r.summary, keys)])


def _volumes(r: BenchmarkResult) -> str:
    keys = ([f"volume_{t}" for t in TISSUES] + [f"vol_absdiff_{t}" for t in TISSUES]
            + [f"cov_{t}" for t in TISSUES])
    return "\n".join(["## 5. Tissue volumes (overall)", "", report.markdown_table(r.summary, keys)])


def _classifier_after(r: BenchmarkResult) -> str:
    out = ["## 6. Site classifier after harmonization", "",
           "Leave-one-held-out-subject-out on each method's outputs for the source sites "
           f"(chance {_chance(r):.2f}); the same classifier before harmonization on the held-out "
           "subjects is the `none` row.", ""]
    if r.classifier_after:
        out += ["| method | accuracy | n images |", "|---|---|---|"]
        out += [f"| {m} | {res['accuracy']:.2f} | {res['n_samples']} |"
                for m, res in r.classifier_after.items()]
        out.append("")
    return "\n".join(out)


def _anatomy(r: BenchmarkResult) -> str:
    return "\n".join([
        "## 7. Anatomy preservation (each output against its own source; no pair needed)", "",
        "Spearman correlation of the in-mask intensities (1 for any monotone mapping) and "
        "correlation of the gradient magnitudes inside the eroded mask "
        "(`phyjax.evaluate.unpaired`); a method that erases anatomy to look like the target "
        "scores low here even where it scores high above.", "",
        report.markdown_table(r.summary, ["rank_corr", "edge_corr"], site=None,
                              first=("site", "method")).replace(
            f"| {report.OVERALL} |", "| *overall* |")] + _lesions(r))


def _lesions(r: BenchmarkResult) -> list[str]:
    """The lesion table, on data with white-matter lesions (``data.lesions``), else nothing."""
    if not any(np.isfinite(row.get("lesion_contrast_mean", np.nan)) for row in r.summary):
        return []
    return ["", "### White-matter lesions", "",
            "Each lesion's contrast against the WM around it, `1 - mean(lesion) / mean(ring)` "
            "(`phyjax.evaluate.measures.LesionMeasure`), in the output; its error is the mean "
            "absolute difference from the same lesion's contrast in the target image.  A remap "
            "of intensities that is not the target's own flattens or deepens lesions.", "",
            report.markdown_table(r.summary, ["lesion_contrast", "lesion_contrast_err"],
                                  site=None, first=("site", "method")).replace(
                f"| {report.OVERALL} |", "| *overall* |")]


def _reproducibility(r: BenchmarkResult) -> str:
    out = ["## 8. Reproducibility of the radiomic features across sites", "",
           "Median over features of the intraclass correlation (Shrout & Fleiss 1979) of each "
           "feature across the source sites, held-out subjects as targets: ICC(2,1) absolute "
           "agreement, ICC(3,1) consistency (`reproducibility.csv`).", ""]
    if r.reproducibility:
        out += ["| method | median ICC(2,1) ↑ | median ICC(3,1) ↑ |", "|---|---|---|"]
        out += [f"| {x['method']} | {x['median_icc21']:.3f} | {x['median_icc31']:.3f} |"
                for x in r.reproducibility]
        out.append("")
    return "\n".join(out)


def _notes(r: BenchmarkResult) -> str:
    s, cfg = r.split, r.config
    same = all(f.fitted_on == frozenset(s.train) for f in r.fitted.values())
    held = ("every method was fitted on the training subjects " + ", ".join(s.train) + " only"
            if same else "; ".join(f"{m} fitted on {', '.join(sorted(f.fitted_on))}"
                                   for m, f in r.fitted.items()))
    out = ["## Notes", "",
           f"* Held out: {held} (`split.json`, `fitted_on`); every evaluation row is checked "
           "against it.",
           "* Intensity baselines (z-score, histogram matching, Nyúl via intensity-normalization, "
           "WhiteStripe via intensity-normalization) are fitted on the target protocol's images "
           "of the training subjects and map each source image into the target's intensity "
           "units.  The segmenter rescales each image's in-brain percentiles, so per-image affine "
           "methods (z-score, WhiteStripe) cannot change segmentations or volumes.",
           "* ComBat (neuroCombat; no covariates) is fitted on radiomic features + tissue volumes "
           "of all training images and maps held-out features into the target site's space.",
           f"* Segmentation: {make_segmenter(cfg.segmentation).describe()}, the same for every "
           "image; |ΔV| and Dice "
           "are against the segmentation of the same subject's target-protocol image; CoV = "
           "sample SD / mean of a tissue's volume over the source sites of one subject.",
           "* Radiomic rel. error: median over features of |f - f_target| / |f_target|.",
           f"* U-Net and PhyCHarm: {cfg.train.steps} steps, batch {cfg.train.batch_size} "
           "(`config.train`).",
           "* Figures: `examples.png`, `volumes.png`, `radiomics.png`."]
    return "\n".join(out + [f"* {n_}" for n_ in r.notes])
