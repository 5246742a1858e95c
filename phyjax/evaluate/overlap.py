"""Segmentation overlap and tissue-volume agreement (plain NumPy; label maps in, floats out).

Conventions (each one tested in ``tests/test_evaluation.py``):

* Label maps are integer arrays with ``0`` = outside the brain and ``1, 2, 3`` = CSF, GM, WM
  (:data:`TISSUE_LABELS`); the same as :func:`phyjax.evaluate.segmentation.segment_tissues`.
* For one tissue, with TP, FP, FN counted voxel-wise between a prediction and a reference:
  Dice = 2TP / (2TP + FP + FN), IoU (Jaccard) = TP / (TP + FP + FN),
  precision = TP / (TP + FP), recall (sensitivity) = TP / (TP + FN) and
  F1 = 2 precision recall / (precision + recall) = 2TP / (2TP + FP + FN).  For binary masks F1
  and Dice are the same number; both are reported because papers quote either.  A ratio whose denominator is 0
  (e.g. precision when the prediction has no voxel of that tissue) is ``nan``, never a guess;
  aggregations skip ``nan`` and report how many values they used.
* Volumes are in millilitres: voxel count x voxel volume (mm^3) / 1000.
* The coefficient of variation is ``sd / mean`` with the *sample* standard deviation
  (``ddof=1``), as in the traveling-subject literature (e.g. Borges et al. 2019).
"""

from __future__ import annotations

import numpy as np

from phyjax.physics.tissues import TISSUES

#: label of each tissue in a segmentation (1, 2, 3 in the order of :data:`TISSUES`)
TISSUE_LABELS = {t: i + 1 for i, t in enumerate(TISSUES)}

__all__ = ["TISSUES", "TISSUE_LABELS", "binary_overlap", "coefficient_of_variation",
           "tissue_intensity_ratios", "tissue_overlap", "tissue_volumes", "volume_differences"]


def _check_same_shape(a, b, what=("prediction", "reference")):
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {what[0]} {a.shape} != {what[1]} {b.shape}.")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def binary_overlap(pred, ref) -> dict[str, float]:
    """``{"dice", "iou", "f1", "precision", "recall"}`` of two boolean masks of equal shape.

    Raises ValueError on a shape mismatch.  Undefined ratios (0/0) are ``nan``.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    _check_same_shape(pred, ref)
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    # F1 = 2PR/(P+R) = 2TP/(2TP+FP+FN) whenever P and R are defined; the second form is also
    # defined when only one of them is (then F1 = 0), as in scikit-learn's f1_score.
    return {"dice": dice, "iou": _ratio(tp, tp + fp + fn), "f1": dice,
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn)}


def tissue_overlap(pred_labels, ref_labels, mask=None,
                   labels: dict[str, int] = TISSUE_LABELS) -> dict[str, float]:
    """Per-tissue :func:`binary_overlap` as flat keys ``"<metric>_<tissue>"`` (e.g. ``dice_gm``).

    ``mask`` (optional, same shape) restricts the comparison to its voxels.
    Raises ValueError on shape mismatches or an empty ``mask``.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_same_shape(pred_labels, ref_labels)
    if mask is not None:
        mask = np.asarray(mask, bool)
        _check_same_shape(mask, ref_labels, ("mask", "reference"))
        if not mask.any():
            raise ValueError("empty mask: no voxels to compare.")
        pred_labels, ref_labels = pred_labels[mask], ref_labels[mask]
    out = {}
    for tissue, label in labels.items():
        for k, v in binary_overlap(pred_labels == label, ref_labels == label).items():
            out[f"{k}_{tissue}"] = v
    return out


def tissue_volumes(labels_map, voxel_volume_mm3: float,
                   labels: dict[str, int] = TISSUE_LABELS) -> dict[str, float]:
    """``{tissue: volume in mL}`` of a label map.  Raises ValueError for a non-positive voxel volume."""
    if not voxel_volume_mm3 > 0:
        raise ValueError(f"voxel volume must be positive, got {voxel_volume_mm3}.")
    labels_map = np.asarray(labels_map)
    return {t: float(np.count_nonzero(labels_map == lab)) * float(voxel_volume_mm3) / 1000.0
            for t, lab in labels.items()}


def volume_differences(volumes: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Absolute ``|V - V_ref|`` (mL) and relative ``|V - V_ref| / V_ref`` (%) per tissue.

    Keys ``vol_absdiff_<tissue>`` and ``vol_reldiff_<tissue>``; the relative difference is
    ``nan`` when the reference volume is 0.
    """
    out = {}
    for t in reference:
        diff = abs(float(volumes[t]) - float(reference[t]))
        out[f"vol_absdiff_{t}"] = diff
        out[f"vol_reldiff_{t}"] = 100.0 * _ratio(diff, float(reference[t]))
    return out


def tissue_intensity_ratios(image, reference, ref_labels, mask=None,
                            labels: dict[str, int] = TISSUE_LABELS) -> dict[str, float]:
    """``{"ratio_<tissue>": median(image) / median(reference)}`` in each tissue of the
    reference's label map ``ref_labels`` (inside ``mask`` if given; arrays of one shape).

    A harmonized image can match its target in SSIM and PSNR yet carry a tissue-contrast error
    -- grey matter a few per cent too bright against white matter -- that moves a
    histogram-fitting segmenter's GM/WM boundary and so its volumes; ``ratio_gm / ratio_wm``
    is that error (1: the reference's contrast).  A tissue without voxels (or with a zero
    reference median) gives ``nan``.  Raises ValueError for arrays of different shapes.
    """
    image, reference = np.asarray(image), np.asarray(reference)
    ref_labels = np.asarray(ref_labels)
    _check_same_shape(image, reference, ("image", "reference"))
    _check_same_shape(ref_labels, reference, ("labels", "reference"))
    inside = np.ones(reference.shape, bool) if mask is None else np.asarray(mask, bool)
    _check_same_shape(inside, reference, ("mask", "reference"))
    out = {}
    for t, lab in labels.items():
        sel = inside & (ref_labels == lab)
        out[f"ratio_{t}"] = _ratio(float(np.median(image[sel])),
                                   float(np.median(reference[sel]))) if sel.any() else float("nan")
    return out


def coefficient_of_variation(values) -> float:
    """``sd(values, ddof=1) / mean(values)`` of a 1-D sequence.

    Raises ValueError for fewer than two values or a non-positive mean (volumes are positive).
    """
    values = np.asarray(values, np.float64).ravel()
    if values.size < 2:
        raise ValueError(f"coefficient of variation needs at least 2 values, got {values.size}.")
    mean = float(values.mean())
    if not mean > 0:
        raise ValueError(f"coefficient of variation of values with mean {mean} (must be > 0).")
    return float(values.std(ddof=1) / mean)
