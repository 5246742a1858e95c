"""Report tables (CSV + markdown) and figures (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict

import numpy as np

METRICS = ("ssim", "psnr", "nrmse")
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "nrmse": False}


def write_rows(rows: list[dict], path: str) -> str:
    """Write dict rows as CSV (columns from the first row).  Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over subjects, one row per (method, site)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["site"])].append(r)
    out = []
    for (method, site), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"method": method, "site": site, "n_subjects": len(rs)}
        for m in METRICS:
            values = np.array([r[m] for r in rs], float)
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(row)
    return out


def markdown_table(summary: list[dict]) -> str:
    """Markdown table of :func:`aggregate` rows, best value per site and metric in bold."""
    best = {}
    for m in METRICS:
        for site in {r["site"] for r in summary}:
            vals = [r[f"{m}_mean"] for r in summary if r["site"] == site]
            best[(site, m)] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
    lines = ["| source site | method | SSIM ↑ | PSNR (dB) ↑ | NRMSE ↓ | n |",
             "|---|---|---|---|---|---|"]
    for r in summary:
        cells = []
        for m, fmt in zip(METRICS, ("{:.4f}", "{:.2f}", "{:.4f}")):
            text = (fmt + " ± " + fmt).format(r[f"{m}_mean"], r[f"{m}_std"])
            if np.isclose(r[f"{m}_mean"], best[(r["site"], m)]):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {r['site']} | {r['method']} | " + " | ".join(cells)
                     + f" | {r['n_subjects']} |")
    return "\n".join(lines) + "\n"


def write_metrics(rows: list[dict], csv_path: str, md_path: str) -> list[dict]:
    """Write per-subject rows (``*_per_subject.csv``), the aggregate CSV and the markdown table."""
    write_rows(rows, csv_path.replace(".csv", "_per_subject.csv"))
    summary = aggregate(rows)
    write_rows(summary, csv_path)
    with open(md_path, "w") as f:
        f.write("Held-out subjects, metrics inside the brain mask against the ground-truth "
                "target-protocol image (mean ± sd over subjects).\n\n")
        f.write(markdown_table(summary))
    return summary


def maps_table(map_rows: list[dict]) -> str:
    """Markdown table of generator T1/M0 NRMSE per source site (mean ± sd over subjects)."""
    lines = ["| source site | T1 NRMSE | M0 NRMSE | n |", "|---|---|---|---|"]
    for site in sorted({r["site"] for r in map_rows}):
        t1 = np.array([r["t1_nrmse"] for r in map_rows if r["site"] == site])
        m0 = np.array([r["m0_nrmse"] for r in map_rows if r["site"] == site])
        sd = (lambda v: v.std(ddof=1) if len(v) > 1 else 0.0)
        lines.append(f"| {site} | {t1.mean():.3f} ± {sd(t1):.3f} | {m0.mean():.3f} ± {sd(m0):.3f} "
                     f"| {len(t1)} |")
    return "\n".join(lines) + "\n"


def _mid_slice(mask):
    area = mask.reshape(-1, mask.shape[-1]).sum(0)
    return int(np.argmax(area))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, title=""):
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


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
    plt = _pyplot()
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
    return _save(fig, path, title)


def input_output_figure(source, harmonized, mask, path: str, title: str = "") -> str:
    """Three orthogonal mid-brain slices of the input (top) and harmonized output (bottom)."""
    plt = _pyplot()
    idx = np.argwhere(mask)
    cx, cy, cz = ((idx.min(0) + idx.max(0)) // 2).tolist()
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for row, (vol, name) in enumerate(((source, "input"), (harmonized, "harmonized"))):
        vmax = float(np.percentile(vol[mask], 99.5))
        for col, sl in enumerate((vol[cx, :, :], vol[:, cy, :], vol[:, :, cz])):
            _show(axes[row, col], sl, vmax, f"{name}" if col == 0 else None)
    return _save(fig, path, title)
