"""Report tables (CSV + markdown): mean, sd and 95 % CI over subjects, per method and site.

Rows come in two kinds:

* *per-image* rows ``{"method", "site", "subject", <metric>: float, ...}`` -- one per held-out
  subject, source site and method (image similarity, segmentation overlap, volumes, radiomic
  error);
* *per-subject* rows ``{"method", "subject", <metric>: float, ...}`` -- quantities that need all
  of a subject's sites at once (coefficient of variation of tissue volumes across sites, the
  site classifier's accuracy on that subject's images).

:func:`aggregate` gives, per method and site, the mean over subjects, their sample standard
deviation and a Student-t 95 % confidence interval (tables show either spread, and say which); the ``overall`` row first averages each subject's per-site values (so every
subject counts once: subjects, not images, are the independent units), then adds the per-subject
metrics.  ``nan`` values (a metric that does not apply, e.g. SSIM for ComBat, which changes
features, not images) are skipped and the count is reported.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict

import numpy as np

from phyjax.data.atomic import atomic_open
from phyjax.evaluate.overlap import TISSUES
from phyjax.evaluate.site_difference import t_interval

OVERALL = "overall"
#: Rows that are references, not methods (:mod:`phyjax.methods.rescan`): shown, never "best".
CEILINGS = ("rescan",)

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
METRICS += [("radiomic_relerr", "radiomic rel. error", False, "{:.3f}"),
            ("rank_corr", "anatomy: rank corr", True, "{:.3f}"),
            ("edge_corr", "anatomy: edge corr", True, "{:.3f}"),
            ("lesion_contrast", "lesion contrast", None, "{:.3f}"),
            ("lesion_contrast_err", "lesion contrast error", False, "{:.3f}")]
SUBJECT_METRICS: list[tuple[str, str, bool, str]] = (
    [(f"cov_{t}", f"CoV {t.upper()}", False, "{:.4f}") for t in TISSUES]
    + [("site_acc", "site-classifier acc. (→ chance)", None, "{:.2f}")])
ALL_METRICS = METRICS + SUBJECT_METRICS
_INFO = {k: (label, hi, fmt) for k, label, hi, fmt in ALL_METRICS}


# ----------------------------------------------------------------------------- tables

def write_rows(rows: list[dict], path: str) -> str:
    """Write dict rows as CSV; columns are the union of keys in first-seen order."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_open(path, "w", newline="") as f:   # renamed into place when complete
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: str, payload: dict) -> str:
    """Write ``payload`` as indented JSON.  Returns ``path``."""
    with atomic_open(path) as f:
        json.dump(payload, f, indent=2)
    return path


def aggregate(rows: list[dict], subject_rows: list[dict] = (), methods=None) -> list[dict]:
    """Mean, sd and 95 % CI over subjects, per (method, site) and per method ``overall``.

    Returns rows ``{"method", "site", "n_subjects", "<m>_mean", "<m>_sd", "<m>_ci_low",
    "<m>_ci_high", "<m>_n"}`` for every metric in :data:`ALL_METRICS` that any row has
    (``nan`` where it does not apply).
    """
    methods = list(methods) if methods is not None else list(
        dict.fromkeys([r["method"] for r in rows] + [r["method"] for r in subject_rows]))
    by_site = defaultdict(list)
    for r in rows:
        by_site[(r["method"], r["site"])].append(r)
    out = []

    present = {k for r in [*rows, *subject_rows] for k in r}
    keys = [k for k, *_ in ALL_METRICS if k in present]

    def summarize(method, site, values: dict[str, list[float]], n_subjects):
        row = {"method": method, "site": site, "n_subjects": n_subjects}
        for key in keys:
            mean, lo, hi, n = t_interval(values.get(key, []))
            v = np.asarray(values.get(key, []), float)
            v = v[np.isfinite(v)]
            sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            row.update({f"{key}_mean": mean, f"{key}_sd": sd, f"{key}_ci_low": lo,
                        f"{key}_ci_high": hi, f"{key}_n": n})
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


def read_summary(path: str) -> dict[tuple[str, str], dict[str, float]]:
    """Read back a ``benchmark.csv`` that :func:`write_rows` wrote from :func:`aggregate`.

    Returns ``{(method, site): {column: value}}`` with every column but ``method`` and ``site``
    as a float (``nan`` where empty: a metric that does not apply).  Raises FileNotFoundError if
    ``path`` does not exist and ValueError naming ``path`` if it has no ``method``/``site``
    columns, a non-numeric value or a ``(method, site)`` twice."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"method", "site"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: no 'method' and 'site' columns (not a benchmark summary).")
        for line, row in enumerate(reader, start=2):
            key = (row.pop("method"), row.pop("site"))
            if key in out:
                raise ValueError(f"{path}, line {line}: {key} appears twice.")
            try:
                out[key] = {k: float(v) if v not in ("", None) else math.nan
                            for k, v in row.items()}
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
    return out


def format_cell(row: dict, key: str, bold: bool = False, spread: str = "ci") -> str:
    """``mean ± spread`` (``spread``: ``"ci"`` = half-width of the 95 % CI, ``"sd"`` = sample SD);
    ``mean (n=1)`` for one subject; ``–`` where the metric does not apply."""
    if spread not in ("ci", "sd"):
        raise ValueError(f"spread must be 'ci' or 'sd', got {spread!r}.")
    _, _, fmt = _INFO[key]
    mean, lo, hi, n = (row.get(f"{key}_mean"), row.get(f"{key}_ci_low"),
                       row.get(f"{key}_ci_high"), row.get(f"{key}_n", 0))
    if not n or mean is None or not np.isfinite(mean):
        return "–"
    text = fmt.format(mean)
    half = (hi - lo) / 2 if spread == "ci" else row.get(f"{key}_sd", float("nan"))
    if n >= 2 and np.isfinite(half):
        text += " ± " + fmt.format(half)
    else:
        text += f" (n={n})"
    return f"**{text}**" if bold else text


def markdown_table(summary: list[dict], keys: list[str], site: str | None = OVERALL,
                   first: tuple[str, ...] = ("method",), spread: str = "ci") -> str:
    """Markdown table of :func:`aggregate` rows (``site`` filter; None = every site).

    Cells are ``mean ± spread`` (:func:`format_cell`); the best mean per column (per site) is
    bold where "better" is defined, among methods (a :data:`CEILINGS` row is marked as such and
    never bold).
    """
    rows = [r for r in summary if site is None or r["site"] == site]
    best = {}
    for key in keys:
        hi = _INFO[key][1]
        if hi is None:
            continue
        for s in {r["site"] for r in rows}:
            vals = [r[f"{key}_mean"] for r in rows if r["site"] == s
                    and r.get("method") not in CEILINGS and np.isfinite(r[f"{key}_mean"])]
            if len(vals) > 1:
                best[(s, key)] = max(vals) if hi else min(vals)
    arrows = {True: " ↑", False: " ↓", None: ""}
    header = [{"site": "source site"}.get(c, c) for c in first]
    header += [_INFO[k][0] + arrows[_INFO[k][1]] for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ceiling = r.get("method") in CEILINGS
        cells = [f"*{r[c]} (ceiling)*" if c == "method" and ceiling else str(r[c]) for c in first]
        for key in keys:
            b = not ceiling and (r["site"], key) in best and np.isfinite(r[f"{key}_mean"]) and math.isclose(
                r[f"{key}_mean"], best[(r["site"], key)], rel_tol=1e-9, abs_tol=1e-12)
            cells.append(format_cell(r, key, bold=b, spread=spread))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
