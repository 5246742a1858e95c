"""Evaluation of tissue segmenters across protocols: Dice against the physics gold standard,
tissue volumes, their coefficient of variation across protocols, and bridging.

Borges et al. (2019, arXiv:2001.10767) measure consistency as the coefficient of variation
(sample sd / mean, :func:`phyjax.evaluate.overlap.coefficient_of_variation`) of each subject's
GM / WM volume across the protocols of a family, and bridge two protocols whose parameters are
unknown by choosing the parameters that make the volumes of training pairs agree (their
Sec. 3.5).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from phyjax.evaluate.overlap import coefficient_of_variation, tissue_overlap
from phyjax.segment.gold import CLASSES

#: ``(image (X, Y, Z), mask (X, Y, Z) bool, protocol) -> probabilities (X, Y, Z, 3)``
Method = Callable[..., np.ndarray]


def labels(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hard labels ``(X, Y, Z)`` int8: argmax + 1 (1 CSF, 2 GM, 3 WM) inside ``mask``, else 0."""
    return np.where(mask, np.argmax(probs, -1) + 1, 0).astype(np.int8)


def one_hot(label_map: np.ndarray) -> np.ndarray:
    """``(X, Y, Z, 3)`` float32 probabilities of a label map (1, 2, 3 -> CSF, GM, WM)."""
    return np.stack([label_map == k + 1 for k in range(3)], -1).astype(np.float32)


def volumes_ml(probs: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """``{tissue: mL}``: the sum of each class's probabilities times the voxel volume (a soft
    volume; for one-hot probabilities the voxel count).  Raises ValueError for a non-positive
    voxel volume."""
    if not voxel_mm3 > 0:
        raise ValueError(f"voxel volume must be positive, got {voxel_mm3}.")
    sums = np.asarray(probs, np.float64).reshape(-1, probs.shape[-1]).sum(0)
    return {t: float(s) * voxel_mm3 / 1000.0 for t, s in zip(CLASSES, sums)}


def score(probs: np.ndarray, gold: np.ndarray, mask: np.ndarray, voxel_mm3: float) -> dict:
    """Dice of the hard labels against the gold standard's hard labels (inside ``mask``) and
    the volumes (mL) of ``probs``: keys ``dice_<tissue>``, ``vol_<tissue>``."""
    overlap = tissue_overlap(labels(probs, mask), labels(gold, mask), mask)
    out = {f"dice_{t}": overlap[f"dice_{t}"] for t in CLASSES}
    out.update({f"vol_{t}": v for t, v in volumes_ml(probs, voxel_mm3).items()})
    return out


def cov_table(rows: list[dict], tissues=("gm", "wm")) -> list[dict]:
    """Per (method, family, subject): the CoV of each tissue's volume over its protocols, and
    the mean Dice.

    ``rows``: one per (subject, family, protocol[, draw], method) with ``vol_*`` and ``dice_*``
    keys.  Rows that share a ``protocol`` (noise draws of the same acquisition) are averaged
    before the CoV, so that it measures the protocol's effect on the volume and not the noise;
    ``draw_sd_<tissue>`` is the mean over protocols of the draws' relative sd (sample sd /
    mean; NaN with one draw), the noise's own contribution.  Without a ``protocol`` key every
    row is its own protocol.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["family"], r["subject"]), []).append(r)
    out = []
    for (method, family, subject), rs in groups.items():
        by_protocol: dict = {}
        for k, r in enumerate(rs):
            by_protocol.setdefault(r.get("protocol", k), []).append(r)
        row = {"method": method, "family": family, "subject": subject,
               "n_protocols": len(by_protocol),
               "n_draws": max(len(v) for v in by_protocol.values())}
        for t in tissues:
            vols = [[r[f"vol_{t}"] for r in v] for v in by_protocol.values()]
            row[f"cov_{t}"] = coefficient_of_variation([np.mean(v) for v in vols])
            row[f"draw_sd_{t}"] = (float(np.mean([np.std(v, ddof=1) / np.mean(v) for v in vols]))
                                   if row["n_draws"] > 1 else float("nan"))
        for t in CLASSES:
            row[f"dice_{t}"] = float(np.nanmean([r[f"dice_{t}"] for r in rs]))
        out.append(row)
    return out


def summarize(subject_rows: list[dict], keys: list[str]) -> list[dict]:
    """Mean and sd over subjects of ``keys`` per (method, family)."""
    groups: dict[tuple, list[dict]] = {}
    for r in subject_rows:
        groups.setdefault((r["method"], r["family"]), []).append(r)
    out = []
    for (method, family), rs in groups.items():
        row = {"method": method, "family": family, "n_subjects": len(rs)}
        for k in keys:
            v = np.asarray([r[k] for r in rs], np.float64)
            row[k] = float(np.mean(v))
            row[f"{k}_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        out.append(row)
    return out


def relative_difference(a, b) -> np.ndarray:
    """``100 |a - b| / ((a + b) / 2)`` (%), elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 100.0 * np.abs(a - b) / (0.5 * (a + b))


def fit_linear(source, target) -> tuple[float, float]:
    """Least-squares ``target ~ slope * source + intercept`` (one tissue's volumes over
    training subjects).  Raises ValueError for fewer than two subjects."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.size < 2:
        raise ValueError("a linear volume correction needs at least two training subjects.")
    slope, intercept = np.polyfit(source, target, 1)
    return float(slope), float(intercept)


def bridge_parameters(vol_a: np.ndarray, vol_b: np.ndarray) -> tuple[int, int, float]:
    """Borges et al. (2019) Sec. 3.5: the pair of candidate parameters ``(i, j)`` minimising the
    mean relative volume difference between site A analysed with candidate ``i`` and site B
    analysed with candidate ``j`` over training subjects and tissues.

    Args: ``vol_a``, ``vol_b``: ``(n_subjects, n_candidates, n_tissues)`` volumes of the
      training subjects' site-A and site-B images analysed with each candidate parameter.
    Returns: ``(i, j, mean difference in %)``; ties go to the first pair in row-major order.
    """
    vol_a, vol_b = np.asarray(vol_a, np.float64), np.asarray(vol_b, np.float64)
    if vol_a.shape != vol_b.shape or vol_a.ndim != 3:
        raise ValueError(f"volume arrays must share a (subjects, candidates, tissues) shape, got "
                         f"{vol_a.shape} and {vol_b.shape}.")
    diff = relative_difference(vol_a[:, :, None, :], vol_b[:, None, :, :]).mean(axis=(0, 3))
    i, j = np.unravel_index(int(np.argmin(diff)), diff.shape)
    return int(i), int(j), float(diff[i, j])
