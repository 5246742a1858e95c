"""A downstream task across sites, before and after harmonization: train on some sites, test on
another (leave one site out), from radiomic features.

Any folder with an ROI mask per scan can pose the **core-vs-rim task**: each scan's ROI is split,
by world geometry, into its *rim* (the voxels within ``rim_mm`` of the ROI's boundary,
:func:`core_and_rim`) and its *core* (the rest); the first-order radiomic features of each
region (without those that grow with the region's voxel count, :data:`SIZE_DEPENDENT`, so that
the regions' sizes and shapes cannot decide the task) form one sample, labelled core (1) or rim (0).
In the brain this asks cortex-and-CSF against deep grey and white matter; in a tumour, its
periphery (and partial volume with the surrounding tissue) against its interior.  Both regions
lie inside the ROI, which every image method harmonizes (they set the outside to 0, so the
surroundings of an ROI could not be compared after harmonization).  A site effect that moves the
features of one site's regions away from another's breaks the transfer of a classifier trained
elsewhere: accuracy (which needs the decision threshold to transfer) falls before ROC AUC (which
needs only the ranking within the test site).

:func:`leave_one_site_out` trains a standardized logistic regression on every site but one and
tests it on that one (per test site: accuracy, ROC AUC and the chance level);
:func:`covariate_transfer` does the same for a ``participants.tsv`` covariate predicted from each
scan's ROI features (logistic regression for a categorical covariate, ridge regression for a
numeric one).  scikit-learn implements the models; folds whose training part has a single class
are skipped (``nan``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

# First-order features that scale with the number of voxels (Energy, TotalEnergy) or whose
# expected value does (the sample extremes): left out so that region size cannot decide a task.
SIZE_DEPENDENT = ("firstorder_Energy", "firstorder_TotalEnergy", "firstorder_Minimum",
                  "firstorder_Maximum", "firstorder_Range")
CORE, RIM = 1, 0


def task_feature_names(names: Sequence[str]) -> list[str]:
    """The features of the core-vs-rim task: first-order, without :data:`SIZE_DEPENDENT`."""
    return [n for n in names if n.startswith("firstorder_") and n not in SIZE_DEPENDENT]


def core_and_rim(mask: np.ndarray, spacing: Sequence[float], rim_mm: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(core, rim)`` bool arrays of ``mask``'s shape: the ROI voxels farther than ``rim_mm``
    (mm) from the nearest voxel outside the ROI, and the others.

    ``spacing``: voxel edge lengths (mm) along the array axes (:func:`phyjax.data.geometry.zooms`).
    Distances are Euclidean in world units (scipy's exact EDT with ``sampling``), so a
    boundary voxel lies one voxel edge from the outside; voxels on the array's edge count as
    next to the outside.
    """
    mask = np.asarray(mask, bool)
    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {mask.ndim}-D mask.")
    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=[float(s) for s in spacing])
    dist = dist[(slice(1, -1),) * mask.ndim]
    core = mask & (dist > rim_mm)
    return core, mask & ~core


def _finite_varying(x: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(x), axis=0) & (np.ptp(x, axis=0) > 0) if len(x) else np.zeros(
        x.shape[1], bool)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def leave_one_site_out(x: np.ndarray, labels: Sequence, sites: Sequence[str], *,
                       c: float = 1.0) -> list[dict]:
    """Train on every site but one, test on that one: a standardized L2 logistic regression.

    Args:
      x: ``(n_samples, n_features)`` features; columns not finite everywhere in the training
        part, or constant there, are dropped (with none left, the classifier predicts the
        training majority with a constant score).
      labels: class per sample (two or more classes).  sites: site per sample.
      c: inverse regularization strength of the logistic regression.
    Returns one dict per test site (sorted): ``site``, ``n_train``, ``n_test``, ``accuracy``,
    ``auc`` (ROC AUC of the score for the larger label, binary labels with both in the test site;
    ``nan`` otherwise), ``chance`` (accuracy of predicting the training majority); ``nan``
    metrics where the training part has fewer than two classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, np.float64)
    labels, sites = np.asarray(labels), np.asarray(sites, str)
    if not (len(x) == len(labels) == len(sites)):
        raise ValueError(f"{len(x)} samples, {len(labels)} labels and {len(sites)} sites.")
    out = []
    for site in sorted(set(sites.tolist())):
        test, train = sites == site, sites != site
        row = {"site": site, "n_train": int(train.sum()), "n_test": int(test.sum()),
               "accuracy": float("nan"), "auc": float("nan"), "chance": float("nan")}
        out.append(row)
        classes, counts = np.unique(labels[train], return_counts=True)
        if len(classes) < 2:
            continue
        majority = classes[np.argmax(counts)]
        row["chance"] = float(np.mean(labels[test] == majority))
        cols = _finite_varying(x[train])
        if not cols.any():
            pred, score = np.full(test.sum(), majority), np.zeros(test.sum())
        else:
            model = make_pipeline(StandardScaler(),
                                  LogisticRegression(C=c, solver="newton-cg", max_iter=1000))
            model.fit(x[train][:, cols], labels[train])
            xt = np.nan_to_num(x[test][:, cols], nan=0.0, posinf=0.0, neginf=0.0)
            pred = model.predict(xt)
            score = model.decision_function(xt) if len(classes) == 2 else np.zeros(test.sum())
        row["accuracy"] = float(np.mean(pred == labels[test]))
        if len(classes) == 2:
            row["auc"] = _auc(labels[test] == classes[1], score)
    return out


def covariate_transfer(x: np.ndarray, covariate: Sequence, sites: Sequence[str], *,
                       c: float = 1.0, alphas: Sequence[float] = tuple(np.logspace(-2, 4, 13))
                       ) -> list[dict]:
    """Leave-one-site-out prediction of a covariate from ROI features.

    A covariate whose values all parse as numbers is regressed: a standardized ridge regression
    whose penalty is chosen by leave-one-out on the training part (``alphas``), its predictions
    clipped to the training range (a few training scans and features far outside their range,
    as a site effect makes them, would otherwise extrapolate without bound); per test site
    ``mae`` and ``chance_mae`` (the MAE of predicting the training mean).  Otherwise (or with at
    most two distinct values) it is classified (:func:`leave_one_site_out` with inverse
    regularization ``c``: ``accuracy``, ``auc``, ``chance``).  Rows carry ``kind``
    ("numeric" or "categorical").
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, sites = np.asarray(x, np.float64), np.asarray(sites, str)
    try:
        y = np.asarray(covariate, np.float64)
    except ValueError:
        y = None
    if y is None or len(np.unique(y)) <= 2:          # text, or a 0/1-coded category
        return [{**r, "kind": "categorical"}
                for r in leave_one_site_out(x, np.asarray(covariate, str), sites, c=c)]
    out = []
    for site in sorted(set(sites.tolist())):
        test, train = sites == site, sites != site
        row = {"site": site, "n_train": int(train.sum()), "n_test": int(test.sum()),
               "kind": "numeric", "mae": float("nan"), "chance_mae": float("nan")}
        out.append(row)
        if train.sum() < 2:
            continue
        row["chance_mae"] = float(np.mean(np.abs(y[test] - y[train].mean())))
        cols = _finite_varying(x[train])
        if not cols.any():
            row["mae"] = row["chance_mae"]
            continue
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
        model.fit(x[train][:, cols], y[train])
        pred = model.predict(np.nan_to_num(x[test][:, cols], nan=0.0, posinf=0.0, neginf=0.0))
        pred = np.clip(pred, y[train].min(), y[train].max())
        row["mae"] = float(np.mean(np.abs(pred - y[test])))
    return out


def mean_over_sites(rows: Sequence[dict], key: str) -> float:
    """Unweighted mean of ``key`` over the test sites where it is defined (``nan`` if none)."""
    v = np.array([r[key] for r in rows if key in r], np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def regions(masks: Sequence[np.ndarray], spacings: Sequence[Sequence[float]], rim_mm: float,
            min_voxels: int = 8) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """:func:`core_and_rim` of every ROI; ``None`` where either region has fewer than
    ``min_voxels`` voxels (an ROI too thin for the task)."""
    out = []
    for mask, spacing in zip(masks, spacings):
        core, rim = core_and_rim(mask, spacing, rim_mm)
        out.append((core, rim) if min(core.sum(), rim.sum()) >= min_voxels else None)
    return out


def region_features(extractor, images: Sequence[np.ndarray], scan_regions, canvas=None
                    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """First-order features of each image's core and rim (:func:`regions`; scans with ``None``
    are skipped) through ``extractor`` (a :class:`~phyjax.evaluate.site_difference
    .FeatureExtractor`, restricted to its first-order class).

    Returns ``(names, x, labels, scan)``: :func:`task_feature_names`, ``x`` of shape
    ``(2 k, len(names))`` (core then rim of each of the ``k`` usable scans), ``labels``
    (:data:`CORE` / :data:`RIM`) and ``scan`` (the index of each row's image).
    """
    import dataclasses

    first = dataclasses.replace(extractor, classes=("firstorder",))
    scan = [i for i, r in enumerate(scan_regions) if r is not None for _ in range(2)]
    ims = [images[i] for i in scan]
    rois = [m for r in scan_regions if r is not None for m in r]
    all_names, table = first.table(ims, rois, canvas)
    names = task_feature_names(all_names)
    cols = [list(all_names).index(n) for n in names]
    labels = np.tile([CORE, RIM], len(scan) // 2)
    return names, table[:, cols], labels, np.asarray(scan, int)
