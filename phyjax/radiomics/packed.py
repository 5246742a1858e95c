"""Hard-mode features of many ROIs of any sizes, packed into one voxel list (no canvas padding).

The canvas path (:func:`phyjax.radiomics.api.extract_batch`) pads every ROI to the largest
bounding box of the batch and runs ``vmap``: its cost is ``B x`` the largest box, however small the
other ROIs are. Here the cost follows the number of ROI voxels, as in PyRadiomics' C code:

* **Host, from the masks only** (:func:`pack`): the ROI voxels of all ROIs are concatenated into one
  list (ROI by ROI, C order), with their ROI index ``segment``. For every direction ``a`` the list
  is also ordered *along the lines* of ``a`` (key = (ROI, line, position on the line)), with a flag
  ``adjacent[m]``: list entry ``m`` is the ``a``-neighbour of entry ``m - 1``. Those adjacent pairs
  are exactly the GLCM neighbour pairs ``(v, v + a)`` with both voxels in the ROI, and within a
  line the GLRLM runs are the maximal stretches of adjacent entries with equal grey level.
  PyRadiomics' "direction with no line holding two ROI voxels is dropped" rule (``multiElement``)
  is a geometric fact, also computed here.
* **Device, one jit** (:func:`packed_features`): per-ROI bin edges (segment min / max), grey
  levels, first-order features through the same formulas as the canvas path
  (:func:`~phyjax.radiomics.firstorder.firstorder_core` with segment sums; order statistics by a
  (ROI, value) sort, :func:`~phyjax.radiomics.firstorder.sort_by_segment`), GLCM and GLRLM
  matrices by one integer scatter each (codes carry the ROI index), run starts by log-doubling a
  running maximum over the ordered list (``ceil(log2(longest line))`` shifted maxima), and the
  GLCM / GLRLM feature formulas of :mod:`~phyjax.radiomics.glcm` / :mod:`~phyjax.radiomics.glrlm`,
  ``vmap``-ed over the ROIs.

This path is hard mode only (the PyRadiomics features, for measuring site differences on many
ROIs); the host geometry (one numpy argsort per direction) makes it slower than the canvas for
large ROIs that fill their box, which :func:`~phyjax.radiomics.api.extract` then picks. The
differentiable soft mode runs on canvases (:func:`~phyjax.radiomics.api.extract_features`),
which is what a training loss sees anyway (a batch of same-size images). Both are checked against
PyRadiomics in the tests.

Array sizes (list length, number of ROIs, run-length axis) are rounded up to a few buckets so that
batches of different sizes reuse compilations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.radiomics.discretize import digitize, edges_from_range
from phyjax.radiomics.firstorder import FIRSTORDER_FEATURES, firstorder_core, sort_by_segment
from phyjax.radiomics.glcm import GLCM_FEATURES, directions, glcm_features
from phyjax.radiomics.glrlm import GLRLM_FEATURES, glrlm_features

__all__ = ["PackedROIs", "bounding_box", "bucket_size", "pack", "packed_features", "roi_box"]


def bucket_size(n: int, minimum: int = 8) -> int:
    """Smallest ``m 2^e >= n`` with ``m`` in {4, 5, 6, 7} (<= 25 % padding, few distinct sizes)."""
    n = max(int(n), minimum)
    e = max(0, n.bit_length() - 3)
    m = -(-n // (1 << e))  # ceil
    return m << e


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of a boolean mask, any rank (axis projections: cheaper than
    argwhere). Raises ValueError("empty ROI") for an empty mask."""
    sl = []
    for ax in range(mask.ndim):
        proj = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if not proj.size:
            raise ValueError("empty ROI")
        sl.append(slice(int(proj[0]), int(proj[-1]) + 1))
    return tuple(sl)


def roi_box(mask: np.ndarray) -> tuple[int, int, int]:
    """``(D, H, W)`` of the bounding box of a non-empty 2-D or 3-D mask (2-D: ``D = 1``)."""
    m = np.asarray(mask).astype(bool)
    if m.ndim == 2:
        m = m[None]
    return tuple(s.stop - s.start for s in bounding_box(m))


@dataclasses.dataclass(frozen=True)
class PackedROIs:
    """ROI voxels of a batch of ROIs in one list, with the line geometry of every direction.

    ``K`` is the padded list length, ``B`` the padded number of ROIs (``n_rois`` real ones, then
    empty ones), ``Na`` the number of directions; padding entries of the list have ``segment == B``.

    values: (K,) float64 ROI intensities, ROI by ROI, C order inside each ROI.
    segment: (K,) int32 ROI index of each entry (``B`` for padding).
    counts: (B,) int32 voxels per ROI. offsets: (B,) int32 start of each ROI in ``values``.
    order: (Na, K) int32 list order along the lines of each direction.
    adjacent: (Na, K) bool, ``adjacent[d, m]``: entry ``order[d, m]`` is the ``dirs[d]``-neighbour
      of entry ``order[d, m - 1]``.
    multi: (B, Na) bool, some line along ``dirs[d]`` holds two or more voxels of ROI ``b``.
    voxel_volume: (B,) float64, mm^3.
    n_rois: number of real ROIs. dirs: the directions (dz, dy, dx).
    steps: per direction, doubling steps covering the longest line. n_runs: run-length axis size.
    """

    values: np.ndarray
    segment: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    order: np.ndarray
    adjacent: np.ndarray
    multi: np.ndarray
    voxel_volume: np.ndarray
    n_rois: int
    dirs: tuple[tuple[int, int, int], ...]
    steps: tuple[int, ...]
    n_runs: int


def _line_order(coords, segment, extent, a):
    """Order of the voxels along the lines of ``a``; adjacency and same-line flags (host).

    ``coords`` (K, 3) ints inside boxes of size ``extent`` (3,). A line is parametrised by the
    coordinate ``t`` of an axis ``k`` where ``a`` moves (``a`` taken with ``a_k = +1``) and by the
    point where it meets ``t = 0``; the key (ROI, line, t) sorts every line's voxels in order.
    """
    moving = [ax for ax in range(3) if a[ax] != 0]
    k = min(moving, key=lambda ax: (extent[ax], ax))
    s = a[k]
    ak = [c * s for c in a]  # a_k = +1
    t = coords[:, k].astype(np.int64)
    key = segment.astype(np.int64)
    for ax in range(3):
        if ax == k:
            continue
        base = coords[:, ax].astype(np.int64) - t * ak[ax] + extent[k]  # in [0, extent + 2 e_k)
        key = key * (extent[ax] + 2 * extent[k]) + base
    key = key * (extent[k] + 1) + t  # + 1: the last t of a line and the first of the next differ by 2
    order = np.argsort(key, kind="stable")
    ks = key[order]
    line = ks // (extent[k] + 1)
    adjacent = np.zeros(len(ks), bool)
    adjacent[1:] = ks[1:] == ks[:-1] + 1
    same_line = np.zeros(len(ks), bool)
    same_line[1:] = line[1:] == line[:-1]
    return order, adjacent, same_line, int(extent[k])


def _collect(names, images, masks):
    """Per ROI: in-mask values (C order), their box coordinates and the box shape; validated."""
    vals, coords, extents = [], [], []
    depth_one = True
    for name, im, m in zip(names, images, masks):
        im = np.asarray(im)
        m = np.asarray(m).astype(bool)
        if im.ndim == 2:
            im, m = im[None], m[None]
        if im.shape != m.shape or im.ndim != 3:
            raise ValueError(f"{name}: image {im.shape} and mask {m.shape} must be the same 2-D "
                             "or 3-D shape")
        if not m.any():
            raise ValueError(f"{name}: empty ROI")
        sl = bounding_box(m)
        mc = m[sl]
        v = np.asarray(im[sl][mc], np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name}: ROI contains non-finite values")
        vals.append(v)
        coords.append(np.argwhere(mc).astype(np.int32))  # C order, as `v`
        extents.append(mc.shape)
        depth_one &= mc.shape[0] == 1
    return vals, coords, extents, depth_one


def _line_geometry(xyz, segment, extent, dirs, n_rois, b_pad):
    """Per direction: the voxel order along its lines, the adjacency flags, PyRadiomics'
    ``multiElement`` flag per ROI, the doubling steps of the run scan and the longest line."""
    k_pad = len(segment)
    order = np.empty((len(dirs), k_pad), np.int32)
    adjacent = np.empty((len(dirs), k_pad), bool)
    multi = np.zeros((b_pad, len(dirs)), bool)
    steps, longest = [], 1
    for d, a in enumerate(dirs):
        o, adj, same, ext = _line_order(xyz, segment, extent, a)
        order[d], adjacent[d] = o, adj
        seg_o = segment[o]
        multi[seg_o[same & (seg_o < n_rois)], d] = True
        steps.append(max(0, math.ceil(math.log2(ext))) if ext > 1 else 0)
        longest = max(longest, ext)
    return order, adjacent, multi, steps, longest


def pack(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *, spacings=None,
         force2d: bool = False, sources: Sequence[str] | None = None) -> PackedROIs:
    """Pack ROIs of any sizes into one voxel list with their line geometry (host side, numpy).

    Args:
      images: sequence of (D, H, W) or (H, W) arrays. masks: same shapes, bool (the ROIs).
      spacings: sequence of per-image voxel spacings (mm), or None (1 mm).
      force2d: PyRadiomics ``force2D``: only the 4 in-plane directions.
      sources: optional names of the ROIs for error messages.
    Raises:
      ValueError: shapes differ, a mask is empty, or an ROI value is not finite (naming the ROI).
    """
    names = list(sources) if sources is not None else [f"ROI {i}" for i in range(len(images))]
    if len(images) != len(masks) or not len(images):
        raise ValueError(f"need as many masks as images (got {len(images)} and {len(masks)})")
    vals, coords, extents, depth_one = _collect(names, images, masks)
    n_rois = len(vals)
    counts = np.array([len(v) for v in vals], np.int32)
    n_vox = int(counts.sum())
    k_pad = bucket_size(n_vox + 1)  # >= 1 padding entry
    b_pad = bucket_size(n_rois, minimum=1)
    values = np.zeros(k_pad, np.float64)
    values[:n_vox] = np.concatenate(vals)
    segment = np.full(k_pad, b_pad, np.int32)  # padding: one past the last (padded) ROI
    segment[:n_vox] = np.repeat(np.arange(n_rois, dtype=np.int32), counts)
    xyz = np.zeros((k_pad, 3), np.int32)
    xyz[:n_vox] = np.concatenate(coords)
    extent = np.max(np.array(extents), axis=0)
    dirs = directions(force2d or depth_one)
    order, adjacent, multi, steps, longest = _line_geometry(xyz, segment, extent, dirs, n_rois,
                                                            b_pad)
    if spacings is None:
        volume = np.ones(n_rois)
    else:
        volume = np.array([float(np.prod(np.asarray(s, np.float64))) for s in spacings])
        if len(volume) != n_rois:
            raise ValueError(f"got {len(volume)} spacings for {n_rois} ROIs")
    counts_p = np.zeros(b_pad, np.int32)
    counts_p[:n_rois] = counts
    offsets = np.zeros(b_pad, np.int32)
    offsets[1:] = np.minimum(np.cumsum(counts_p)[:-1], k_pad - 1)
    vol_p = np.ones(b_pad)
    vol_p[:n_rois] = volume
    return PackedROIs(values=values, segment=segment, counts=counts_p, offsets=offsets,
                      order=order, adjacent=adjacent, multi=multi, voxel_volume=vol_p,
                      n_rois=n_rois, dirs=dirs, steps=tuple(steps),
                      n_runs=bucket_size(longest))


def _shift_fill(x, step, fill):
    """``out[m] = x[m - step]`` (static ``step > 0``), ``fill`` for ``m < step``."""
    if step >= x.shape[0]:
        return jnp.full_like(x, fill)
    return jnp.concatenate([jnp.full((step,), fill, x.dtype), x[:-step]])


def _pair_and_run_codes(levels, seg_c, order, adjacent, *, classes, n_dirs, steps, n_bins,
                        n_runs):
    """Per direction, the flat GLCM pair codes (ROI, direction, level pair) and GLRLM run codes
    (ROI, direction, level, run length - 1) of every voxel; -1 where there is none."""
    k = levels.shape[0]
    pos = jnp.arange(k, dtype=jnp.int32)
    g_codes, r_codes = [], []
    for d in range(n_dirs):
        o = order[d]
        lv = levels[o]
        sg = seg_c[o]
        adj = adjacent[d]
        prev = _shift_fill(lv, 1, 0)
        base = sg * n_dirs + d
        if "glcm" in classes:  # the pair (v - a, v): grey levels (prev, lv)
            code = (base * n_bins + prev - 1) * n_bins + lv - 1
            g_codes.append(jnp.where(adj, code, -1))
        if "glrlm" in classes:
            cont = adj & (prev == lv)  # v continues the run of v - a
            end = (lv > 0) & ~jnp.concatenate([cont[1:], jnp.zeros((1,), bool)])
            start = jnp.where(cont, -1, pos)  # index of each run's first entry, by doubling
            for i in range(steps[d]):
                start = jnp.maximum(start, _shift_fill(start, 2**i, -1))
            length = jnp.clip(pos - start, 0, n_runs - 1)  # length - 1
            r_codes.append(jnp.where(end, (base * n_bins + lv - 1) * n_runs + length, -1))
    return g_codes, r_codes


@functools.partial(jax.jit, static_argnames=(
    "n_bins", "bin_width", "bin_count", "voxel_array_shift", "classes", "dirs", "steps", "n_runs"))
def _packed_features_jit(values, segment, counts, offsets, order, adjacent, multi, voxel_volume, *,
                         n_bins, bin_width, bin_count, voxel_array_shift, classes, dirs, steps,
                         n_runs):
    n_roi = counts.shape[0]
    na = len(dirs)
    dt = values.dtype
    valid = segment < n_roi
    seg_c = jnp.minimum(segment, n_roi - 1)  # padding entries read ROI n_roi - 1; masked below

    def roi_sum(f):
        return jax.ops.segment_sum(jnp.where(valid, f, 0.0), segment, num_segments=n_roi + 1)[:n_roi]

    def expand(per_roi):
        return per_roi[seg_c]

    big = jnp.asarray(jnp.finfo(dt).max, dt)
    vmin = jax.ops.segment_min(jnp.where(valid, values, big), segment, num_segments=n_roi + 1)
    vmax = jax.ops.segment_max(jnp.where(valid, values, -big), segment, num_segments=n_roi + 1)
    vmin = jnp.where(counts > 0, vmin[:n_roi], 0.0)
    vmax = jnp.where(counts > 0, vmax[:n_roi], 0.0)
    edges, h = jax.vmap(lambda lo, hi: edges_from_range(
        lo, hi, n_bins=n_bins, bin_width=bin_width, bin_count=bin_count))(vmin, vmax)
    levels = jax.vmap(digitize)(values, edges[seg_c], h[seg_c])
    levels = jnp.where(valid, levels, 0).astype(jnp.int32)
    n_levels = jax.ops.segment_max(levels, segment, num_segments=n_roi + 1)[:n_roi]

    out = {}
    if "firstorder" in classes:
        hist = jax.ops.segment_sum(valid.astype(jnp.int32), seg_c * n_bins + jnp.maximum(levels - 1, 0),
                                   num_segments=n_roi * n_bins).reshape(n_roi, n_bins)
        xs = sort_by_segment(values, segment, n_roi + 1)
        f = firstorder_core(values, roi_sum, expand, counts, xs, offsets, hist.astype(dt),
                            voxel_volume, voxel_array_shift)
        out.update({f"firstorder_{name}": f[name] for name in FIRSTORDER_FEATURES})
    if "glcm" in classes or "glrlm" in classes:
        g_codes, r_codes = _pair_and_run_codes(levels, seg_c, order, adjacent, classes=classes,
                                               n_dirs=na, steps=steps, n_bins=n_bins,
                                               n_runs=n_runs)

        def count(codes, size):
            idx = jnp.concatenate(codes)
            return jax.ops.segment_sum((idx >= 0).astype(jnp.int32), jnp.maximum(idx, 0),
                                       num_segments=size).astype(dt)

        if "glcm" in classes:
            p = count(g_codes, n_roi * na * n_bins * n_bins).reshape(n_roi, na, n_bins, n_bins)
            p = p + jnp.swapaxes(p, -1, -2)
            f = jax.vmap(lambda pp, ng: glcm_features(pp, ng, differentiable=False))(p, n_levels)
            out.update({f"glcm_{name}": f[name] for name in GLCM_FEATURES})
        if "glrlm" in classes:
            r = count(r_codes, n_roi * na * n_bins * n_runs).reshape(n_roi, na, n_bins, n_runs)
            r = r * multi.astype(dt)[:, :, None, None]
            f = jax.vmap(glrlm_features)(r)
            out.update({f"glrlm_{name}": f[name] for name in GLRLM_FEATURES})
    return out


def packed_features(packed: PackedROIs, *, n_bins: int, bin_width: float | None = 25.0,
                    bin_count: int | None = None, voxel_array_shift: float = 0.0,
                    classes: Sequence[str] = ("firstorder", "glcm", "glrlm")) -> dict[str, np.ndarray]:
    """Hard-mode (PyRadiomics) features of packed ROIs; one jit-compiled call.

    Args:
      packed: from :func:`pack`. n_bins: static size of the grey-level axis (covering every
        ROI's fixed-width bins, or ``bin_count``). bin_width / bin_count: exactly one.
      voxel_array_shift: PyRadiomics ``voxelArrayShift``. classes: feature classes.
    Returns:
      dict name -> numpy (n_rois,) array.
    """
    if bin_count is not None:
        bin_width, n_bins = None, int(bin_count)
    res = _packed_features_jit(
        packed.values, packed.segment, packed.counts, packed.offsets, packed.order,
        packed.adjacent, packed.multi, packed.voxel_volume, n_bins=int(n_bins),
        bin_width=None if bin_width is None else float(bin_width),
        bin_count=None if bin_count is None else int(bin_count),
        voxel_array_shift=float(voxel_array_shift), classes=tuple(classes), dirs=packed.dirs,
        steps=packed.steps, n_runs=packed.n_runs)
    return {name: np.asarray(v)[: packed.n_rois] for name, v in res.items()}
