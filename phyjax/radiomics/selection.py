"""Radiomic feature selection for a harmonisation loss, after Kim et al. (IEEE Access 12:19482, 2024).

Given the features of a set of target-site images (``F`` features x ``n`` images):

1. rank the features by their coefficient of variation over the target images,
   ``CV_f = std_f / |mean_f|`` (sample std, ``ddof = 1`` by default), lowest first -- features that
   are stable within the target site are the ones worth pulling a harmonised image towards;
   features with ``mean_f = 0`` (CV undefined, reported as inf) or non-finite values are never
   selected; optionally keep only ``CV <= max_cv`` or the ``top_k`` best;
2. walk down the ranking and drop a feature when ``|Pearson r| > corr_threshold`` (0.8) with any
   better-ranked feature already kept (constant features have no defined r and are never
   dropped for correlation).

Returns the selected names (in rank order) and their target means (the loss targets).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

__all__ = ["SelectionResult", "coefficient_of_variation", "select_features"]


class SelectionResult(NamedTuple):
    names: list[str]  # selected, best (lowest CV) first
    target_means: np.ndarray  # (k,) mean over the target images, same order
    cv: dict[str, float]  # CV of every candidate feature


def coefficient_of_variation(values: np.ndarray, ddof: int = 1) -> np.ndarray:
    """``std / |mean|`` along axis 0 of ``values (n_images, n_features)``; inf where mean == 0."""
    values = np.asarray(values, np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=ddof)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean != 0, std / np.abs(mean), np.inf)
    return cv


def select_features(features: Mapping[str, Sequence[float]], *, corr_threshold: float = 0.8,
                    max_cv: float | None = None, top_k: int | None = None,
                    ddof: int = 1) -> SelectionResult:
    """CV ranking + Pearson redundancy filter (see module docstring).

    Args:
      features: name -> values over the target-site images (all the same length n >= 2).
      corr_threshold: drop a feature if |r| with a better-ranked kept feature exceeds this.
      max_cv: keep only candidates with CV <= max_cv (before the correlation filter).
      top_k: stop after this many selected features.
    """
    names = list(features)
    x = np.stack([np.asarray(features[k], np.float64) for k in names], axis=1)  # (n, F)
    if x.shape[0] < 2:
        raise ValueError("need at least two target images")
    finite = np.all(np.isfinite(x), axis=0)
    cv = coefficient_of_variation(x, ddof)
    order = sorted(range(len(names)), key=lambda f: (not finite[f], cv[f], names[f]))
    xc = x - x.mean(axis=0)
    norm = np.sqrt(np.sum(xc**2, axis=0))
    kept: list[int] = []
    for f in order:
        if not finite[f] or not np.isfinite(cv[f]) or (max_cv is not None and not cv[f] <= max_cv):
            continue
        redundant = False
        if norm[f] > 0:
            for g in kept:
                if norm[g] == 0:
                    continue
                r = float(np.dot(xc[:, f], xc[:, g]) / (norm[f] * norm[g]))
                if abs(r) > corr_threshold:
                    redundant = True
                    break
        if not redundant:
            kept.append(f)
            if top_k is not None and len(kept) >= top_k:
                break
    return SelectionResult(
        names=[names[f] for f in kept],
        target_means=x[:, kept].mean(axis=0),
        cv={names[f]: float(cv[f]) for f in range(len(names))},
    )
