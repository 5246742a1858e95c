"""Report of the physics-aware segmentation experiment: markdown tables and the volume-vs-TI
figure (the analogue of Borges et al. 2019, Fig. 3)."""

from __future__ import annotations

import matplotlib
import numpy as np

from phyjax.data.atomic import atomic_path

matplotlib.use("Agg")

#: Borges et al. (2019) volume CoV across protocols: (GM, WM) with / without the physics branch.
PAPER_COV = {"mprage": {"physics": (0.00244, 0.00405), "no_branch": (0.00332, 0.01491)},
             "spgr": {"physics": (0.00425, 0.00083), "no_branch": (0.00531, 0.00160)}}

LABELS = {"physics": "U-Net + physics branch", "physics_b1map": "U-Net + physics branch, told B1+",
          "no_branch": "U-Net, no branch",
          "hmrf": "HMRF (DIPY, fixed)"}


def _cell(row, key, fmt):
    sd = row.get(f"{key}_sd", float("nan"))
    text = fmt.format(row[key])
    return text + (" ± " + fmt.format(sd) if np.isfinite(sd) else "")


def summary_table(summary: list[dict]) -> str:
    """Markdown: per family and method, CoV GM / WM (mean ± sd over subjects), Dice, and the
    paper's CoV where it reports one."""
    lines = [("| family | method | CoV GM ↓ | CoV WM ↓ | Dice CSF | Dice GM | Dice WM | "
              "paper CoV GM / WM |"), "|---|---|---|---|---|---|---|---|"]
    for r in sorted(summary, key=lambda r: (r["family"], list(LABELS).index(r["method"])
                                            if r["method"] in LABELS else 99)):
        paper = PAPER_COV.get(r["family"], {}).get(r["method"])
        lines.append(
            f"| {r['family']} | {LABELS.get(r['method'], r['method'])} | "
            f"{_cell(r, 'cov_gm', '{:.5f}')} | {_cell(r, 'cov_wm', '{:.5f}')} | "
            f"{_cell(r, 'dice_csf', '{:.3f}')} | {_cell(r, 'dice_gm', '{:.3f}')} | "
            f"{_cell(r, 'dice_wm', '{:.3f}')} | "
            + (f"{paper[0]:.5f} / {paper[1]:.5f}" if paper else "–") + " |")
    return "\n".join(lines)


def bridging_table(rows: list[dict]) -> str:
    """Markdown: mean relative GM / WM volume difference between the two sites on held-out
    subjects, per approach."""
    lines = ["| approach | parameters used (TI A / TI B, s) | \\|ΔV\\| GM (%) | \\|ΔV\\| WM (%) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['approach']} | {r['parameters']} | {r['diff_gm']:.2f} ± "
                     f"{r['diff_gm_sd']:.2f} | {r['diff_wm']:.2f} ± {r['diff_wm_sd']:.2f} |")
    return "\n".join(lines)


def volume_vs_ti_figure(rows: list[dict], path: str, methods) -> str:
    """Volume deviation (%) from the subject's gold-standard volume (which does not depend on
    the protocol), vs TI: mean over held-out subjects (line) and their range (band), one panel
    per tissue (GM, WM), one line per method.  ``rows``: evaluation rows with ``subject``,
    ``family``, ``ti``, ``method``, ``vol_*``, ``gold_vol_*`` (strings, as read from
    ``evaluation.csv``, or numbers); noise draws of one TI are averaged."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for ax, tissue in zip(axes, ("gm", "wm")):
        for method in methods:
            rs = [r for r in rows if r["method"] == method and r["family"] == "mprage"]
            if not rs:
                continue
            subjects = sorted({r["subject"] for r in rs})
            tis = sorted({float(r["ti"]) for r in rs})
            dev = []
            for s in subjects:
                mine: dict = {}   # TI -> rows (several with noise draws: averaged)
                for r in rs:
                    if r["subject"] == s:
                        mine.setdefault(float(r["ti"]), []).append(r)
                v = np.array([np.mean([float(r[f"vol_{tissue}"]) for r in mine[ti]])
                              for ti in tis])
                g = np.array([float(mine[ti][0][f"gold_vol_{tissue}"]) for ti in tis])
                dev.append(100.0 * (v - g) / g)
            dev = np.asarray(dev)
            line, = ax.plot(tis, dev.mean(0), marker="o", ms=3, label=LABELS.get(method, method))
            ax.fill_between(tis, dev.min(0), dev.max(0), color=line.get_color(), alpha=0.15)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_title(f"{tissue.upper()} volume")
        ax.set_xlabel("TI (s)")
        ax.set_ylabel("volume vs gold standard (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("MPRAGE: volume vs inversion time, held-out subjects (band: min-max)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
