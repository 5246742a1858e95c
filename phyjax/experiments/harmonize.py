"""Harmonize mode: a saved harmonizer applied to a user's T1w NIfTI.

Needs only the fitted harmonizer's folder (``<workdir>/harmonizer``, written by training, or
``config.harmonize.harmonizer``, e.g. ``<benchmark workdir>/unet/harmonizer``) and the input: the
target protocol and the model come from the folder, the input's protocol from its sidecar and/or
the command line (``config.harmonize``).  Next to the output NIfTI (the input's grid and affine)
goes a JSON sidecar with the target protocol and every value's origin and assumption.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from phyjax import methods
from phyjax.data import geometry
from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.data.sidecar import (FIELDS, Reading, given_values, protocol_to_sidecar, read_given,
                                 sidecar_path)
from phyjax.data.volumes import Volume, normalize
from phyjax.evaluate import figures, report
from phyjax.physics.sequences import Protocol

def load_mask(spec: str, image_path: str, image: nib.Nifti1Image) -> np.ndarray:
    """Brain mask on the image's grid: the union of the comma-separated masks (or probability
    maps, summed) in ``spec``, each matched to the image by world coordinates
    (:func:`phyjax.data.geometry.mask_on_grid`); ``image > 0`` when ``spec`` is empty.
    Raises InputError naming the file if a mask is unreadable or misses the image."""
    if not spec:
        mask = np.asarray(image.dataobj) > 0
        if not mask.any():
            raise InputError(f"{image_path}: no voxel > 0 to use as a brain mask.")
        return mask
    total = np.zeros(image.shape[:3], np.float32)
    for part in spec.split(","):
        data, m_img = load_volume(part)
        if not geometry.same_grid(data.shape, m_img.affine, image.shape, image.affine):
            data = geometry.resample(data, m_img.affine, image.affine, image.shape)
        total += data
    return geometry.mask_on_grid(total, image.affine, image.shape, image.affine, source=spec)


def input_reading(h) -> Reading:
    """The input's protocol as read: its sidecar (``h.sidecar`` or next to ``h.input``), with
    the command-line values (s, degrees, T; negative = not given) overriding it."""
    return read_given(h.sidecar or sidecar_path(h.input), h.sequence, given_values(h),
                      require_file=bool(h.sidecar))


def harmonize_image(harmonizer, image: np.ndarray, img, mask: np.ndarray,
                    protocol: Protocol, path: str) -> np.ndarray:
    """Harmonized ``image`` on its own grid: resampled onto the harmonizer's training grid (an
    axis-aligned RAS grid of its voxel size, as training saw), normalized as in training,
    harmonized, resampled back; 0 outside ``mask``."""
    affine = np.asarray(img.affine, np.float64)
    if harmonizer.grid_mm is not None:
        lo, hi = geometry.world_box(mask, affine)
        n, target = geometry.box_grid(lo, hi, harmonizer.grid_mm, hi - lo)
        data = geometry.resample(np.where(mask, image, 0), affine, target, n)
        grid_mask = geometry.resample(mask, affine, target, n) > 0.5
    else:
        target, data, grid_mask = affine, image, mask
    volume = Volume(subject="input", site="input", protocol=protocol,
                    image=normalize(data, grid_mask), mask=grid_mask, path=path, affine=target)
    out = harmonizer.harmonize(volume)
    if harmonizer.grid_mm is not None:
        out = geometry.resample(out, target, affine, image.shape)
    return np.where(mask, np.asarray(out, np.float32), 0.0)


def output_sidecar(harmonizer, reading: Reading, input_path: str) -> dict:
    """The output's sidecar: the target protocol (BIDS units) and every assumption made."""
    out = protocol_to_sidecar(harmonizer.target_protocol)
    out.update({"Sources": [os.path.abspath(input_path)],
                "PhyjaxHarmonizer": {"method": harmonizer.name,
                                     "target_site": harmonizer.target_site,
                                     "fitted_on": sorted(harmonizer.fitted_on)},
                "PhyjaxSourceProtocol": {k: reading.values[k] for k in FIELDS
                                         if k in reading.values},
                "PhyjaxSourceProtocolOrigin": dict(reading.origin),
                "PhyjaxAssumptions": list(reading.assumed) + list(reading.notes)})
    return out


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
    harmonizer = methods.load(h.harmonizer or harmonizer_dir)
    if harmonizer.kind != "image":
        raise InputError(f"{harmonizer_dir}: method {harmonizer.name!r} does not harmonize images.")
    mask = load_mask(h.mask, h.input, img)
    reading = input_reading(h)
    protocol = reading.protocol()  # every missing or implausible value, named, before any work
    harmonized = harmonize_image(harmonizer, image, img, mask, protocol, h.input)
    out = h.output or os.path.join(
        default_output_dir, os.path.basename(h.input).split(".nii")[0] + "_harmonized.nii.gz")
    save_like(harmonized, img, out)
    report.write_json(out.split(".nii")[0] + ".json", output_sidecar(harmonizer, reading, h.input))
    if h.figure:
        figures.input_output_figure(np.where(mask, normalize(image, mask), 0.0), harmonized, mask,
                                    out.split(".nii")[0] + ".png",
                                    title=f"{os.path.basename(h.input)} ({protocol.sequence}, "
                                          f"{protocol.field_strength:g} T) -> "
                                          f"{harmonizer.target_site}")
    return out
