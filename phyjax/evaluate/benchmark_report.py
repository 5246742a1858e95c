"""Benchmark tables (CSV + markdown, mean and 95 % CI over subjects) and figures (matplotlib, Agg).

Rows come in two kinds:

* *per-image* rows ``{"method", "site", "subject", <metric>: float, ...}`` -- one per held-out
  subject, source site and method (image similarity, segmentation overlap, volumes, radiomic
  error);
* *per-subject* rows ``{"method", "subject", <metric>: float, ...}`` -- quantities that need all
  of a subject's sites at once (coefficient of variation of tissue volumes across sites, the
  site classifier's accuracy on that subject's images).

:func:`aggregate` gives, per method and site, the mean over subjects and a Student-t 95 %
confidence interval; the ``overall`` row first averages each subject's per-site values (so every
subject counts once: subjects, not images, are the independent units), then adds the per-subject
metrics.  ``nan`` values (a metric that does not apply, e.g. SSIM for ComBat, which changes
features, not images) are skipped and the count is reported.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict

import numpy as np

from phyjax.evaluate.overlap import TISSUES
from phyjax.evaluate.site_difference import t_interval

OVERALL = "overall"

# (key, label, higher is better, format)
METRICS: list[tuple[str, str, bool, str]] = [
    ("ssim", "SSIM", True, "{:.3f}"),
    ("psnr", "PSNR (dB)", True, "{:.2f}"),
    ("nrmse", "NRMSE", False, "{:.3f}"),
]
for _k, _label, _hi in (("dice", "Dice", True), ("iou", "IoU", True), ("f1", "F1", True),
                        ("precision", "precision", True), ("recall", "recall", True)):
    METRICS += [(f"{_k}_{t}", f"{_label} {t.upper()}", _hi, "{:.3f}") for t in TISSUES]
METRICS += [(f"volume_{t}", f"V {t.upper()} (mL)", None, "{:.1f}") for t in TISSUES]
METRICS += [(f"vol_absdiff_{t}", f"\\|ΔV\\| {t.upper()} (mL)", False, "{:.2f}") for t in TISSUES]
METRICS += [(f"vol_reldiff_{t}", f"\\|ΔV\\| {t.upper()} (%)", False, "{:.1f}") for t in TISSUES]
METRICS += [("radiomic_relerr", "radiomic rel. error", False, "{:.3f}")]
SUBJECT_METRICS: list[tuple[str, str, bool, str]] = (
    [(f"cov_{t}", f"CoV {t.upper()}", False, "{:.4f}") for t in TISSUES]
    + [("site_acc", "site-classifier acc. (→ chance)", None, "{:.2f}")])
ALL_METRICS = METRICS + SUBJECT_METRICS
_INFO = {k: (label, hi, fmt) for k, label, hi, fmt in ALL_METRICS}


# ----------------------------------------------------------------------------- tables

def write_rows(rows: list[dict], path: str) -> str:
    """Write dict rows as CSV; columns are the union of keys in first-seen order."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def aggregate(rows: list[dict], subject_rows: list[dict] = (), methods=None) -> list[dict]:
    """Mean and 95 % CI over subjects, per (method, site) and per method ``overall``.

    Returns rows ``{"method", "site", "n_subjects", "<m>_mean", "<m>_ci_low", "<m>_ci_high",
    "<m>_n"}`` for every metric in :data:`ALL_METRICS` (``nan`` where it does not apply).
    """
    methods = list(methods) if methods is not None else list(
        dict.fromkeys([r["method"] for r in rows] + [r["method"] for r in subject_rows]))
    by_site = defaultdict(list)
    for r in rows:
        by_site[(r["method"], r["site"])].append(r)
    out = []

    def summarize(method, site, values: dict[str, list[float]], n_subjects):
        row = {"method": method, "site": site, "n_subjects": n_subjects}
        for key, *_ in ALL_METRICS:
            mean, lo, hi, n = t_interval(values.get(key, []))
            row.update({f"{key}_mean": mean, f"{key}_ci_low": lo, f"{key}_ci_high": hi,
                        f"{key}_n": n})
        return row

    sites = sorted({r["site"] for r in rows})
    for method in methods:
        for site in sites:
            rs = by_site.get((method, site))
            if rs:
                values = {k: [float(r.get(k, np.nan)) for r in rs] for k, *_ in METRICS}
                out.append(summarize(method, site, values, len({r["subject"] for r in rs})))
        per_subject = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r["method"] == method:
                for k, *_ in METRICS:
                    per_subject[r["subject"]][k].append(float(r.get(k, np.nan)))
        values = defaultdict(list)
        for subject, metrics in per_subject.items():
            for k, v in metrics.items():
                v = np.asarray(v, float)
                values[k].append(float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any()
                                 else float("nan"))
        subjects = set(per_subject)
        for r in subject_rows:
            if r["method"] == method:
                subjects.add(r["subject"])
                for k, *_ in SUBJECT_METRICS:
                    values[k].append(float(r.get(k, np.nan)))
        if subjects:
            out.append(summarize(method, OVERALL, values, len(subjects)))
    return out


def format_cell(row: dict, key: str, bold: bool = False) -> str:
    """``mean ± half-width`` of the 95 % CI (``mean (n=1)`` for one subject; ``–`` if n/a)."""
    _, _, fmt = _INFO[key]
    mean, lo, hi, n = (row.get(f"{key}_mean"), row.get(f"{key}_ci_low"),
                       row.get(f"{key}_ci_high"), row.get(f"{key}_n", 0))
    if not n or mean is None or not np.isfinite(mean):
        return "–"
    text = fmt.format(mean)
    if n >= 2 and np.isfinite(lo):
        text += " ± " + fmt.format((hi - lo) / 2)
    else:
        text += f" (n={n})"
    return f"**{text}**" if bold else text


def markdown_table(summary: list[dict], keys: list[str], site: str | None = OVERALL,
                   first: tuple[str, ...] = ("method",)) -> str:
    """Markdown table of :func:`aggregate` rows (``site`` filter; None = every site).

    The best mean per column (per site) is bold where "better" is defined.
    """
    rows = [r for r in summary if site is None or r["site"] == site]
    best = {}
    for key in keys:
        hi = _INFO[key][1]
        if hi is None:
            continue
        for s in {r["site"] for r in rows}:
            vals = [r[f"{key}_mean"] for r in rows if r["site"] == s
                    and np.isfinite(r[f"{key}_mean"])]
            if len(vals) > 1:
                best[(s, key)] = max(vals) if hi else min(vals)
    arrows = {True: " ↑", False: " ↓", None: ""}
    header = [{"site": "source site"}.get(c, c) for c in first]
    header += [_INFO[k][0] + arrows[_INFO[k][1]] for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r[c]) for c in first]
        for key in keys:
            b = (r["site"], key) in best and np.isfinite(r[f"{key}_mean"]) and math.isclose(
                r[f"{key}_mean"], best[(r["site"], key)], rel_tol=1e-9, abs_tol=1e-12)
            cells.append(format_cell(r, key, bold=b))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mid_slice(mask):
    return int(np.argmax(mask.reshape(-1, mask.shape[-1]).sum(0)))


def examples_figure(examples: dict, path: str, title: str = "") -> str:
    """Grid of axial slices: one row per source site, columns source | each method | target.

    ``examples = {"sites": [...], "methods": [...], "source": {site: vol}, "output":
    {(method, site): vol}, "truth": vol, "mask": vol}``.  Each image is shown with its own
    in-brain 99.5th-percentile as white; ComBat-style methods without images are skipped.
    """
    plt = _plt()
    sites, methods = examples["sites"], examples["methods"]
    mask = examples["mask"]
    z = _mid_slice(mask)
    cols = ["source"] + list(methods) + ["target (truth)"]
    fig, axes = plt.subplots(len(sites), len(cols), figsize=(1.6 * len(cols), 1.8 * len(sites)),
                             squeeze=False)
    for i, site in enumerate(sites):
        for j, col in enumerate(cols):
            img = (examples["source"][site] if col == "source" else examples["truth"]
                   if j == len(cols) - 1 else examples["output"][(col, site)])
            vmax = float(np.percentile(img[mask], 99.5)) if mask.any() else 1.0
            ax = axes[i, j]
            ax.imshow(np.where(mask, img, 0)[..., z].T, origin="lower", cmap="gray", vmin=0,
                      vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=8)
            if j == 0:
                ax.set_ylabel(site, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    plt = _plt()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def volume_boxplots(rows: list[dict], truth_volumes: dict[str, dict[str, float]], path: str,
                    methods, sites) -> str:
    """Box plots of tissue volumes per site: rows = tissues, columns = methods.

    ``rows``: per-image rows holding ``volume_<tissue>``; ``truth_volumes``: {subject: {tissue:
    mL}} of the target-protocol segmentation, drawn as the first box ("target").
    """
    plt = _plt()
    fig, axes = plt.subplots(len(TISSUES), len(methods),
                             figsize=(1.9 * len(methods) + 1, 2.2 * len(TISSUES)),
                             squeeze=False, sharey="row")
    for i, t in enumerate(TISSUES):
        ref = [v[t] for v in truth_volumes.values()]
        for j, m in enumerate(methods):
            data = [ref] + [[r[f"volume_{t}"] for r in rows if r["method"] == m and r["site"] == s
                             and np.isfinite(r.get(f"volume_{t}", np.nan))] for s in sites]
            ax = axes[i, j]
            ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.6)
            ax.set_xticks(range(1, len(sites) + 2), ["target"] + list(sites), rotation=60,
                          fontsize=6)
            ax.tick_params(axis="y", labelsize=7)
            if i == 0:
                ax.set_title(m, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{t.upper()} volume (mL)", fontsize=8)
    fig.suptitle("Tissue volumes of held-out subjects per source site (DIPY HMRF)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def feature_distributions(before: dict, after: dict, features, path: str, methods, sites) -> str:
    """Radiomic feature distributions per site, before harmonization (all subjects) and after.

    ``before = {site: {feature: [values]}}`` (raw images of all subjects, every site including the
    target); ``after = {method: {site: {feature: [values]}}}`` on held-out subjects, where the
    target site's entry is the raw target image.  Rows = features, columns = before + methods.
    """
    plt = _plt()
    cols = ["before (all subjects)"] + list(methods)
    fig, axes = plt.subplots(len(features), len(cols), figsize=(1.9 * len(cols) + 1,
                                                                2.0 * len(features)),
                             squeeze=False, sharey="row")
    for i, f in enumerate(features):
        for j, col in enumerate(cols):
            src = before if j == 0 else after.get(col, {})
            data = [src.get(s, {}).get(f, []) for s in sites]
            ax = axes[i, j]
            ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.6)
            ax.set_xticks(range(1, len(sites) + 1), sites, rotation=60, fontsize=6)
            ax.tick_params(axis="y", labelsize=7)
            if i == 0:
                ax.set_title(col, fontsize=8)
            if j == 0:
                ax.set_ylabel(f.replace("_", "\n", 1), fontsize=7)
    fig.suptitle("Radiomic features per site, before and after harmonization", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
