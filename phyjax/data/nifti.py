"""NIfTI input/output through nibabel, with validation that names the file."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from phyjax.data.atomic import atomic_path


class InputError(ValueError):
    """Bad user input (file, image, sidecar, parameter); the message names the source."""


def load_volume(path: str | os.PathLike, allow_4d_singleton: bool = True):
    """Load a 3-D NIfTI volume and check it.

    Args:
      path: ``.nii`` or ``.nii.gz`` file.
      allow_4d_singleton: accept shape ``(X, Y, Z, 1)`` and squeeze it.
    Returns:
      ``(data, image)``: float32 array ``(X, Y, Z)`` and the nibabel image
      (affine and header preserved for writing outputs).
    Raises:
      InputError: missing or unreadable file, complex voxels, a non-finite or singular affine,
        not 3-D, empty, or NaN/Inf voxels.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found.")
    try:
        image = nib.load(path)
        if image.get_data_dtype().kind == "c":   # a cast to float would drop the imaginary part
            raise InputError(f"{path}: complex-valued voxels ({image.get_data_dtype()}); give "
                             "the magnitude image.")
        data = np.asarray(image.dataobj, dtype=np.float32)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise InputError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc}).") from exc
    affine = np.asarray(image.affine, np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(f"{path}: its voxel-to-world affine (qform/sform) is not finite or not "
                         f"invertible: {affine[:3].tolist()}.")
    if data.ndim == 4 and data.shape[-1] == 1 and allow_4d_singleton:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {data.shape}.")
    if data.size == 0 or min(data.shape) < 2:
        raise InputError(f"{path}: volume is degenerate, shape {data.shape}.")
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(f"{path}: {int(bad.sum())} voxels are NaN or Inf.")
    return data, image


def save_like(data: np.ndarray, reference: nib.Nifti1Image, path: str | os.PathLike,
              dtype=np.float32) -> str:
    """Write ``data`` with the affine and header geometry of ``reference``.

    ``data`` must have the spatial shape of ``reference``.  The qform and the sform are copied
    each as it is, with its code (a reference whose qform differs from its sform -- common after
    FSL processing -- keeps both, so readers that use the qform, such as ITK/ANTs, and readers
    that use the sform, such as nibabel and FSL, place the output where they place the input),
    and so are the zooms; the data type is ``dtype``.  Written under a temporary name and
    renamed when complete (:func:`phyjax.data.atomic.atomic_path`).  Returns the path.
    Raises ValueError on a shape mismatch.
    """
    if tuple(data.shape[:3]) != tuple(reference.shape[:3]):
        raise ValueError(f"{path}: data shape {data.shape} != reference shape {reference.shape}.")
    if not isinstance(reference.header, nib.Nifti1Header):  # e.g. FreeSurfer .mgz: no q/sform
        return save_volume(data, np.asarray(reference.affine), path, dtype)
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    if not np.allclose(header.get_best_affine(), reference.affine, atol=1e-5):
        # an in-memory reference whose affine was changed after its header was made: the
        # affine is what nibabel would have written
        header.set_sform(reference.affine, code=int(header["sform_code"]) or 1)
        header.set_qform(reference.affine, code=int(header["qform_code"]) or 1)
    # affine=None: the header's own qform and sform (and their codes) are written unchanged;
    # passing an affine would make nibabel overwrite the qform with it.
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), None, header)
    with atomic_path(path) as tmp:   # a killed run leaves no finished-looking file
        nib.save(out, tmp)
    return os.fspath(path)


def save_volume(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
                dtype=np.float32) -> str:
    """Write a new NIfTI with ``affine`` (4x4, voxel -> RAS mm).  Returns the path."""
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return os.fspath(path)
