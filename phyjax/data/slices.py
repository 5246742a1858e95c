"""Volumes as 2.5-D axial slices: padding and neighbour context.

The networks (U-Net, PhyCHarm) work on axial slices (last array axis) padded to a multiple of their
down-sampling factor, each with its ``context`` neighbours on each side as channels.
"""

from __future__ import annotations

import numpy as np


def brain_slices(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices of axial slices (last axis) whose brain area is >= ``min_fraction`` of the largest."""
    area = mask.reshape(-1, mask.shape[-1]).sum(0)
    return np.flatnonzero(area >= min_fraction * area.max())


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
