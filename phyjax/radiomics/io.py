"""Image + ROI readers returning arrays in (z, y, x) order (SimpleITK / PyRadiomics convention).

* NIfTI through nibabel (``(x, y, z)`` on disk, transposed here);
* NRRD (the PyRadiomics test data) through a small reader for the subset used there: a
  ``NRRD000x`` header, ``encoding: raw|gzip``, little/big endian, scalar types; no external
  dependency, so the tests run without SimpleITK.

Both return ``(array (z, y, x), spacing (z, y, x) in mm)``.
"""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np

__all__ = ["read_image", "read_nifti", "read_nrrd"]

_NRRD_TYPES = {
    "signed char": "i1", "int8": "i1", "int8_t": "i1", "uchar": "u1", "unsigned char": "u1",
    "uint8": "u1", "uint8_t": "u1", "short": "i2", "short int": "i2", "signed short": "i2",
    "int16": "i2", "int16_t": "i2", "ushort": "u2", "unsigned short": "u2", "uint16": "u2",
    "uint16_t": "u2", "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4", "longlong": "i8",
    "int64": "i8", "int64_t": "i8", "ulonglong": "u8", "uint64": "u8", "uint64_t": "u8",
    "float": "f4", "double": "f8",
}


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D scalar NRRD file (attached header). Returns (array (z, y, x), spacing (z, y, x))."""
    with open(path, "rb") as f:
        raw = f.read()
    magic_end = raw.index(b"\n")
    if not raw[:magic_end].startswith(b"NRRD"):
        raise ValueError(f"{path}: not a NRRD file")
    header_end = raw.index(b"\n\n")
    fields = {}
    for line in raw[magic_end + 1:header_end].decode("latin-1").splitlines():
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    data = raw[header_end + 2:]
    enc = fields.get("encoding", "raw").lower()
    if enc in ("gzip", "gz"):
        data = gzip.decompress(data)
    elif enc != "raw":
        raise ValueError(f"{path}: unsupported NRRD encoding {enc!r}")
    sizes = [int(s) for s in fields["sizes"].split()]
    endian = "<" if fields.get("endian", "little") == "little" else ">"
    dtype = np.dtype(endian + _NRRD_TYPES[fields["type"].lower()])
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(sizes))).reshape(sizes[::-1])
    if "space directions" in fields:
        vecs = [v for v in fields["space directions"].replace(")", ") ").split() if v != "none"]
        spacing = [float(np.linalg.norm([float(c) for c in v.strip("()").split(",")])) for v in vecs]
    elif "spacings" in fields:
        spacing = [float(s) for s in fields["spacings"].split()]
    else:
        spacing = [1.0] * len(sizes)
    return arr.astype(dtype.newbyteorder("=")), np.asarray(spacing[::-1], dtype=np.float64)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI image with nibabel. Returns (array (z, y, x), spacing (z, y, x))."""
    img = nib.load(os.fspath(path))
    arr = np.asanyarray(img.dataobj)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, got shape {arr.shape}")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), zooms[::-1].copy()


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``) by file name."""
    name = os.fspath(path).lower()
    if name.endswith(".nrrd"):
        return read_nrrd(path)
    return read_nifti(path)
