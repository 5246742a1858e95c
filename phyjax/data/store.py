"""Arrays on disk, read when used: memory that does not grow with the number of subjects.

Two layouts, both plain ``.npy`` files (``numpy.save``) under one folder:

* :class:`SliceStore` -- volumes as slice-major ``(Z, H, W)`` padded axial slices
  (:func:`phyjax.data.slices.to_slices`), so that a training batch reads only its own slices (and
  their neighbours) through a memory map that is closed right after the read: resident memory is
  one batch, whatever the dataset's size;
* :func:`save_array` / :func:`load_array` -- whole volumes for :class:`phyjax.data.volumes.Volume`
  (read at each access).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

import numpy as np

from phyjax.data.slices import to_slices, view_key, view_volume


def safe_name(key: str) -> str:
    """``key`` as a file name: anything but letters, digits, ``.``, ``-`` and ``_`` -> ``_``,
    and then, when something was replaced, ``-`` and 8 hex digits of the key's SHA-1, so that
    keys differing only there (sites "Prisma fit" and "Prisma_fit") never share a file."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", key)
    if clean == key:
        return key
    return f"{clean}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def save_array(directory: str, key: str, array: np.ndarray) -> str:
    """Write ``array`` as ``<directory>/<key>.npy``; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, safe_name(key) + ".npy")
    np.save(path, np.ascontiguousarray(array))
    return path


def load_array(path: str) -> np.ndarray:
    """The array :func:`save_array` wrote (read into memory, no memory map kept)."""
    return np.load(path)


class SliceStore:
    """Padded axial slices of volumes on disk (``<directory>/<key>.npy``, ``(Z, H, W)``).

    ``pads``: in-plane padding (:func:`phyjax.data.slices.grid`).  Raises KeyError on reading a
    key that was never added.
    """

    def __init__(self, directory: str, pads):
        self.directory, self.pads = directory, pads
        self.shapes: dict[str, tuple[int, ...]] = {}
        os.makedirs(directory, exist_ok=True)

    @classmethod
    def temporary(cls, directory: str | None, pads, prefix: str = ".slices-") -> "SliceStore":
        """A store in a new temporary folder inside ``directory`` (created if needed; None: the
        system's), removed when the store is garbage-collected."""
        if directory:
            os.makedirs(directory, exist_ok=True)
        tmp = tempfile.TemporaryDirectory(prefix=prefix, dir=directory)
        store = cls(tmp.name, pads)
        store._tmp = tmp           # owned: the folder lives as long as the store
        return store

    def add(self, key: str, volume: np.ndarray, dtype=np.float32, pads=None) -> None:
        """Store ``volume`` ``(X, Y, Z)`` as its padded axial slices (``pads``: this volume's
        in-plane padding, default the store's -- another view's slices have other sizes,
        :func:`phyjax.data.slices.view_volume`)."""
        slices = to_slices(np.asarray(volume, dtype), self.pads if pads is None else pads)
        save_array(self.directory, key, slices)
        self.shapes[key] = slices.shape

    def add_views(self, key: str, volume: np.ndarray, grids: dict, dtype=np.float32) -> None:
        """Store ``volume`` ``(X, Y, Z)`` (a RAS grid) in every view of ``grids``
        (``{view: (pads, padded)}``, :func:`phyjax.data.slices.view_grids`), each as
        :func:`phyjax.data.slices.view_key` ``(key, view)``."""
        for view, (pads, _) in grids.items():
            self.add(view_key(key, view), view_volume(volume, view), dtype, pads)

    def read(self, key: str, z: np.ndarray, context: int | None = None) -> np.ndarray:
        """Slices ``z`` of ``key`` as float32: ``(n, H, W, 1)``, or with ``context`` neighbours
        on each side as channels ``(n, H, W, 2 context + 1)`` (edge slices repeated, as
        :func:`phyjax.data.slices.with_context`)."""
        n = self.shapes[key][0]
        z = np.asarray(z, int)
        idx = z[:, None] if context is None else np.clip(
            z[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
        mapped = np.load(os.path.join(self.directory, safe_name(key) + ".npy"), mmap_mode="r")
        out = np.array(mapped[idx], np.float32)          # (n, C, H, W): a copy
        del mapped                                        # unmapped: nothing stays resident
        return np.moveaxis(out, 1, -1)

    def gather(self, rows, key_of, context: int | None = None) -> np.ndarray:
        """Slices of many volumes in ``rows`` order: ``rows`` is ``(volume id, z)`` pairs and
        ``key_of(volume id)`` names the stored array."""
        rows = np.asarray(rows, int).reshape(-1, 2)
        out = None
        for vid in np.unique(rows[:, 0]):
            sel = np.flatnonzero(rows[:, 0] == vid)
            part = self.read(key_of(int(vid)), rows[sel, 1], context)
            if out is None:
                out = np.empty((len(rows),) + part.shape[1:], np.float32)
            out[sel] = part
        return out
