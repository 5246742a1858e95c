"""Figures (matplotlib, Agg backend): example slices, volume and radiomic-feature distributions.

Images are ``(X, Y, Z)`` arrays shown as the axial slice with the most brain, each with its own
in-brain 99.5th percentile as white unless stated.
"""

from __future__ import annotations

import matplotlib
import numpy as np

from phyjax.data.atomic import atomic_path
from phyjax.evaluate.overlap import TISSUES

matplotlib.use("Agg")


def _plt():
    import matplotlib.pyplot as plt  # after the Agg backend is chosen (module top)
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


def _save(fig, path, title="", dpi=100):
    if title:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    with atomic_path(path) as tmp:   # same extension: matplotlib picks the same format
        fig.savefig(tmp, dpi=dpi)
    _plt().close(fig)
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
    fig.suptitle("Tissue volumes of held-out subjects per source site (fixed segmenter)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def feature_groups(raw_feat, feats, names, shown, sites, target_site, methods, subjects):
    """The ``before`` / ``after`` inputs of :func:`feature_distributions`.

    ``raw_feat``: {(subject, site): vector} of raw scans; ``feats``: {(method, subject, site):
    vector} of outputs on the held-out ``subjects``; ``shown``: feature names to plot.
    """
    col = {f: names.index(f) for f in shown}
    before = {site: {f: [float(x[col[f]]) for (_, s_), x in raw_feat.items() if s_ == site]
                     for f in shown} for site in sites}

    def values(m, site, f):
        if site == target_site:
            return [float(raw_feat[(s, site)][col[f]]) for s in subjects if (s, site) in raw_feat]
        return [float(feats[(m, s, site)][col[f]]) for s in subjects if (m, s, site) in feats]

    after = {m: {site: {f: values(m, site, f) for f in shown} for site in sites} for m in methods}
    return before, after


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


def _show(ax, img, vmax, title=None, cmap="gray"):
    ax.imshow(np.asarray(img).T, origin="lower", cmap=cmap, vmin=0, vmax=vmax,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def comparison_figure(rows: list[dict], path: str, title: str = "") -> str:
    """Grid: one row per source site; columns source | harmonized | ground truth | |difference|.

    Each row dict holds ``label`` and ``(X, Y, Z)`` arrays ``source``,
    ``harmonized``, ``truth``, ``mask``; the axial slice with most brain is shown.
    """
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.3 * n), squeeze=False)
    for i, r in enumerate(rows):
        z = _mid_slice(r["mask"])
        vmax = float(np.percentile(r["truth"][r["mask"]], 99.5))
        src = r["source"][..., z]
        _show(axes[i, 0], src, float(np.percentile(r["source"][r["mask"]], 99.5)),
              "source" if i == 0 else None)
        _show(axes[i, 1], r["harmonized"][..., z], vmax, "PhyCHarm" if i == 0 else None)
        _show(axes[i, 2], r["truth"][..., z], vmax, "ground truth" if i == 0 else None)
        diff = np.abs(r["harmonized"][..., z] - r["truth"][..., z]) * r["mask"][..., z]
        _show(axes[i, 3], diff, 0.3 * vmax, "|difference|" if i == 0 else None, cmap="magma")
        axes[i, 0].set_ylabel(r["label"], fontsize=9)
    fig.tight_layout()
    return _save(fig, path, title, dpi=110)


def input_output_figure(source, harmonized, mask, path: str, title: str = "") -> str:
    """Three orthogonal mid-brain slices of the input (top) and harmonized output (bottom)."""
    plt = _plt()
    idx = np.argwhere(mask)
    cx, cy, cz = ((idx.min(0) + idx.max(0)) // 2).tolist()
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for row, (vol, name) in enumerate(((source, "input"), (harmonized, "harmonized"))):
        vmax = float(np.percentile(vol[mask], 99.5))
        for col, sl in enumerate((vol[cx, :, :], vol[:, cy, :], vol[:, :, cz])):
            _show(axes[row, col], sl, vmax, f"{name}" if col == 0 else None)
    fig.tight_layout()
    return _save(fig, path, title, dpi=110)


def site_embedding(coords: dict, sites, path: str) -> str:
    """One scatter per method of 2-D feature embeddings (``coords[method]``, ``(n, 2)``), each
    point coloured by its site: clusters by site mean the sites are still told apart."""
    plt = _plt()
    labels = sorted(set(sites))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(labels)}
    fig, axes = plt.subplots(1, len(coords), figsize=(2.6 * len(coords), 2.8), squeeze=False)
    for ax, (method, xy) in zip(axes[0], coords.items()):
        for s in labels:
            pick = np.asarray(sites) == s
            ax.scatter(xy[pick, 0], xy[pick, 1], s=12, color=colours[s], label=s)
        ax.set_title(method, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.suptitle("Radiomic features of held-out scans (PCA), coloured by site", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
