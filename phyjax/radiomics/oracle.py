"""PyRadiomics as oracle / evaluator: the same arrays through ``RadiomicsFeatureExtractor``.

PyRadiomics is an optional dependency (no wheel for Python >= 3.10; ``bash
tools/install_pyradiomics.sh`` builds 3.1.0 from PyPI). Imported lazily.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from phyjax.radiomics.firstorder import FIRSTORDER_FEATURES

__all__ = ["pyradiomics_features"]


def pyradiomics_features(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         label: int = 1, classes: Sequence[str] = ("firstorder", "glcm", "glrlm"),
                         **settings) -> dict[str, float]:
    """Features of one ROI computed by PyRadiomics, named like :func:`phyjax.radiomics.feature_names`.

    Args:
      image: (z, y, x) array. mask: label map, same shape (ROI = ``== label``).
      spacing: (z, y, x) voxel spacing in mm.
      classes: PyRadiomics feature classes; first-order includes the deprecated StandardDeviation
        (phyjax computes it too).
      settings: PyRadiomics settings (``binWidth``, ``binCount``, ``force2D``, ``voxelArrayShift``...).
    """
    import radiomics
    import SimpleITK as sitk
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    sitk_image = sitk.GetImageFromArray(np.asarray(image))
    sitk_image.SetSpacing(tuple(float(s) for s in np.asarray(spacing)[::-1]))
    sitk_mask = sitk.GetImageFromArray(np.asarray(mask).astype(np.int32))
    sitk_mask.CopyInformation(sitk_image)
    ext = featureextractor.RadiomicsFeatureExtractor(label=int(label), **settings)
    ext.disableAllFeatures()
    enabled = {c: [] for c in classes}
    if "firstorder" in enabled:
        enabled["firstorder"] = list(FIRSTORDER_FEATURES)
    ext.enableFeaturesByName(**enabled)
    res = ext.execute(sitk_image, sitk_mask)
    return {k[len("original_"):]: float(v) for k, v in res.items() if k.startswith("original_")}
