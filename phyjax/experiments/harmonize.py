"""Harmonize mode: a saved harmonizer applied to a user's T1w NIfTI.

Needs only the fitted harmonizer's folder (``<workdir>/harmonizer``, written by training) and the
input: the target protocol and the model come from the folder, the input's protocol from its
sidecar and/or the command line (``config.harmonize``).
"""

from __future__ import annotations

import os
import warnings

import nibabel as nib
import numpy as np
from nilearn.image import resample_img

from phyjax import methods
from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.data.sidecar import protocol_from_sidecar, read_sidecar, sidecar_path
from phyjax.data.volumes import Volume, normalize
from phyjax.evaluate import figures
from phyjax.physics.sequences import Protocol

OVERRIDES = {"tr": "RepetitionTime", "te": "EchoTime", "ti": "InversionTime",
             "flip_angle": "FlipAngle", "field_strength": "MagneticFieldStrength"}


def load_mask(spec: str, image_path: str, image: nib.Nifti1Image) -> np.ndarray:
    """Brain mask on the image's grid: the union of the comma-separated masks (or probability
    maps, summed) in ``spec``, each matched to the image by world coordinates (resampled when
    its grid differs); ``image > 0`` when ``spec`` is empty.  Raises InputError if empty."""
    if not spec:
        mask = np.asarray(image.dataobj) > 0
    else:
        total = np.zeros(image.shape[:3], np.float32)
        for part in spec.split(","):
            data, m_img = load_volume(part)
            if data.shape != image.shape[:3] or not np.allclose(m_img.affine, image.affine,
                                                                atol=1e-3):
                data = _resample(nib.Nifti1Image(data, m_img.affine), image.affine,
                                 image.shape[:3])
            total += data
        mask = total > 0.5
    if not mask.any():
        raise InputError(f"{spec or image_path}: brain mask is empty.")
    return mask


def input_protocol(h) -> Protocol:
    """The input's protocol: its sidecar (``h.sidecar`` or next to ``h.input``) with the
    command-line values (s, degrees, T; negative = not given) overriding it."""
    path = h.sidecar or sidecar_path(h.input)
    overrides = {key: h[name] for name, key in OVERRIDES.items() if h[name] is not None
                 and h[name] >= 0}
    sidecar = read_sidecar(path) if h.sidecar or os.path.exists(path) or not overrides else {}
    try:
        return protocol_from_sidecar(sidecar, source=path if sidecar else "command line",
                                     sequence=h.sequence or None, overrides=overrides)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _resample(img, affine, shape=None):
    with warnings.catch_warnings():  # binary masks are resampled smoothly, then thresholded
        warnings.filterwarnings("ignore", message="Resampling binary images")
        out = resample_img(img, target_affine=affine, target_shape=shape,
                           interpolation="continuous", force_resample=True, copy_header=True)
    return out


def harmonize_image(harmonizer, image: np.ndarray, img, mask: np.ndarray,
                    protocol: Protocol, path: str) -> np.ndarray:
    """Harmonized ``image`` on its own grid: resampled to the harmonizer's voxel size (an
    axis-aligned RAS grid) when it has one, normalized as in training, harmonized, resampled
    back; 0 outside ``mask``."""
    masked = nib.Nifti1Image(np.where(mask, image, 0).astype(np.float32), img.affine)
    vs = harmonizer.voxel_size_mm
    low = _resample(masked, np.diag([vs, vs, vs])) if vs else masked
    low_mask = (_resample(nib.Nifti1Image(mask.astype(np.float32), img.affine), low.affine,
                          low.shape).get_fdata() > 0.5) if vs else mask
    data = np.asarray(low.get_fdata(), np.float32)
    volume = Volume(subject="input", site="input", protocol=protocol,
                    image=normalize(data, low_mask), mask=low_mask, path=path)
    out = harmonizer.harmonize(volume)
    if vs:
        out = _resample(nib.Nifti1Image(out.astype(np.float32), low.affine), img.affine,
                        image.shape).get_fdata()
    return np.where(mask, np.asarray(out, np.float32), 0.0)


def harmonize(h, harmonizer_dir: str, default_output_dir: str) -> str:
    """Harmonize ``h.input`` with the harmonizer saved in ``harmonizer_dir``; returns the output.

    The output has the input's affine and shape; intensities are in the target protocol's units
    (white matter ~ its 99th-percentile normalization, as in training).  Writes a figure next to
    it when ``h.figure``.  Raises InputError naming the file for a missing/invalid input, mask,
    sidecar or harmonizer folder.
    """
    if not h.input:
        raise InputError("--config.harmonize.input is required in harmonize mode.")
    image, img = load_volume(h.input)  # the user's file first: its errors matter most
    harmonizer = methods.load(harmonizer_dir)
    if harmonizer.kind != "image":
        raise InputError(f"{harmonizer_dir}: method {harmonizer.name!r} does not harmonize images.")
    mask = load_mask(h.mask, h.input, img)
    protocol = input_protocol(h)
    harmonized = harmonize_image(harmonizer, image, img, mask, protocol, h.input)
    out = h.output or os.path.join(
        default_output_dir, os.path.basename(h.input).split(".nii")[0] + "_harmonized.nii.gz")
    save_like(harmonized, img, out)
    if h.figure:
        figures.input_output_figure(np.where(mask, normalize(image, mask), 0.0), harmonized, mask,
                                    out.split(".nii")[0] + ".png",
                                    title=f"{os.path.basename(h.input)} ({protocol.sequence}, "
                                          f"{protocol.field_strength:g} T) -> "
                                          f"{harmonizer.target_site}")
    return out
