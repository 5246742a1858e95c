"""Volumes as 2.5-D slices: padding, neighbour context and the slicing plane (view).

The networks (U-Net, PhyCHarm) work on axial slices (last array axis of the RAS grids they are
given) padded to a multiple of their down-sampling factor, each with its ``context`` neighbours
on each side as channels.  With more than one :data:`VIEWS` they also work on coronal and
sagittal slices: :func:`view_volume` moves the view's slicing axis last, so every function
below serves every view.
"""

from __future__ import annotations

import numpy as np

#: Slicing planes of an axis-aligned RAS grid and the voxel axis each one slices along.
VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}


def check_views(views, key: str = "config.model.views") -> tuple[str, ...]:
    """``views`` (names of :data:`VIEWS`, e.g. ``("axial", "coronal", "sagittal")``) as a tuple
    of distinct names; InputError naming ``key`` for an empty, repeated or unknown one."""
    from phyjax.data.nifti import InputError

    views = (views,) if isinstance(views, str) else tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if not views or unknown or len(set(views)) != len(views):
        raise InputError(f"{key}={views!r}; expected distinct names from {tuple(VIEWS)} "
                         "(at least one).")
    return views


def view_volume(volume: np.ndarray, view: str) -> np.ndarray:
    """``(X, Y, Z)`` RAS volume with ``view``'s slicing axis moved last (axial: unchanged;
    coronal: ``(X, Z, Y)``; sagittal: ``(Y, Z, X)``); :func:`unview_volume` inverts it."""
    return np.moveaxis(volume, VIEWS[view], -1)


def unview_volume(volume: np.ndarray, view: str) -> np.ndarray:
    """Inverse of :func:`view_volume`."""
    return np.moveaxis(volume, -1, VIEWS[view])


def view_key(key: str, view: str) -> str:
    """Name of ``view``'s slices of the stored volume ``key`` (axial: ``key`` itself, so a
    one-view store is what it was before views existed)."""
    return key if view == "axial" else f"{key}@{view}"


def view_grids(shape, depth: int, views) -> dict:
    """``{view: (pads, padded shape)}`` (:func:`grid`) of the slices of a ``shape`` volume in
    every one of ``views``."""
    shape = tuple(shape)
    return {v: grid(shape[:VIEWS[v]] + shape[VIEWS[v] + 1:] + shape[VIEWS[v]:VIEWS[v] + 1],
                    depth) for v in views}


def view_brain_slices(mask: np.ndarray, min_fraction: float, views) -> dict:
    """``{view: brain_slices of mask in that view}`` (:func:`brain_slices`)."""
    return {v: brain_slices(view_volume(mask, v), min_fraction) for v in views}


def view_cycle(i: int, groups: int, views) -> str:
    """The view of batch ``i`` when batches cycle through ``groups`` (sites, protocols) first
    and then through ``views``: with one view, every batch is what it was before views."""
    return views[(i // max(groups, 1)) % len(views)]


def brain_slices(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices of axial slices (last axis) with brain whose brain area is >= ``min_fraction`` of
    the largest (``0``: every slice with any brain)."""
    area = mask.reshape(-1, mask.shape[-1]).sum(0)
    return np.flatnonzero((area > 0) & (area >= min_fraction * area.max()))


def pad_to_multiple(shape2d, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding that makes both in-plane sizes multiples of ``multiple``."""
    pads = []
    for n in shape2d:
        total = (-n) % multiple
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def to_slices(volume: np.ndarray, pads, fill=0) -> np.ndarray:
    """``(X, Y, Z)`` -> ``(Z, X', Y')`` padded axial slices; the padding holds ``fill`` (e.g.
    NaN for a map that is unknown there)."""
    padded = np.pad(volume, (pads[0], pads[1], (0, 0)), constant_values=fill)
    return np.moveaxis(padded, -1, 0)


def slice_mask(mask: np.ndarray, z_slices=None) -> np.ndarray:
    """``mask`` (``(X, Y, Z)``) as bool, restricted to the slices ``z_slices`` along its third
    axis (``None``: all of it)."""
    mask = np.asarray(mask, bool)
    if z_slices is None:
        return mask
    keep = np.zeros(mask.shape[2], bool)
    keep[np.asarray(z_slices, int)] = True
    return mask & keep


def with_context(slices: np.ndarray, context: int) -> np.ndarray:
    """``(Z, H, W)`` -> ``(Z, H, W, 2 context + 1)``: each slice with its neighbours as channels.

    Neighbours beyond the volume repeat the edge slice (2.5-D input).
    """
    n = slices.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
    return np.moveaxis(slices[idx], 1, -1)


def from_slices(slices: np.ndarray, pads) -> np.ndarray:
    """Inverse of :func:`to_slices`: ``(Z, X', Y')`` -> ``(X, Y, Z)``."""
    vol = np.moveaxis(np.asarray(slices), 0, -1)
    (x0, x1), (y0, y1) = pads
    return vol[x0:vol.shape[0] - x1, y0:vol.shape[1] - y1]


def grid(shape, depth: int):
    """``(pads, padded shape)`` of axial slices of ``shape`` for a U-Net with ``depth`` levels."""
    pads = pad_to_multiple(shape[:2], 2 ** (depth - 1))
    return pads, (shape[0] + sum(pads[0]), shape[1] + sum(pads[1]))
