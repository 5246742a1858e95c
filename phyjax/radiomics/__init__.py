"""Differentiable radiomics in JAX: PyRadiomics-exact hard mode, soft mode with gradients.

Discretisation (fixed bin width / bin count), first-order, GLCM and GLRLM features following
PyRadiomics 3.1.0 to float64 round-off (hard mode), the same code with soft grey-level
memberships (``temperature > 0``) for gradient-based harmonisation losses, batched with
``jax.vmap`` and compiled with ``jax.jit``; feature selection after Kim et al. (IEEE Access 12:19482,
2024). See :mod:`phyjax.radiomics.api` for the entry points.
"""

from phyjax.radiomics.api import (
    RadiomicsConfig,
    as_table,
    auto_n_bins,
    crop_and_pad,
    extract,
    extract_batch,
    extract_features,
    extract_files,
    feature_names,
)
from phyjax.radiomics.io import read_image, read_nifti, read_nrrd
from phyjax.radiomics.selection import SelectionResult, select_features

__all__ = [
    "RadiomicsConfig", "as_table", "auto_n_bins", "crop_and_pad", "extract",
    "extract_batch", "extract_features", "extract_files", "feature_names", "read_image",
    "read_nifti", "read_nrrd", "select_features", "SelectionResult",
]
