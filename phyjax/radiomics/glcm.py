"""Grey Level Co-occurrence Matrix (GLCM) features, PyRadiomics 3.1.0 conventions.

Matrix (distance 1, symmetric): for every direction ``a`` (13 in 3D, 4 in-plane with ``force2D``)

    P_a(i, j) = sum_v m(v) m(v + a) w_i(v) w_j(v + a),    P_a <- P_a + P_a^T,    p_a = P_a / sum P_a

with ``m`` the ROI mask and ``w_i(v)`` the (one-hot or soft) grey-level memberships, so the hard
matrix counts the neighbour pairs exactly like PyRadiomics' C code. Grey levels ``i, j = 1..N`` are
the bin indices; levels absent from the ROI have empty rows and columns, which leaves every feature
below unchanged compared with PyRadiomics deleting them (``Ng`` in Idmn/Idn is the largest grey
level present, as in PyRadiomics). Features are computed per direction and averaged over the
non-empty directions (PyRadiomics deletes empty angles and takes ``nanmean``).

With ``eps = 2.2e-16``, ``p_x = sum_j p``, ``p_y = sum_i p``, ``mu_x = sum i p``, ``mu_y = sum j p``,
``sigma_x^2 = sum (i - mu_x)^2 p``, ``p_{x+y}(k) = sum_{i+j=k} p``, ``p_{x-y}(k) = sum_{|i-j|=k} p``,
``HX = -sum p_x log2(p_x + eps)`` (``HY`` alike), ``HXY = -sum p log2(p + eps)``,
``HXY1 = -sum p log2(p_x p_y + eps)``, ``HXY2 = -sum p_x p_y log2(p_x p_y + eps)``:

    Autocorrelation = sum p i j;  JointAverage = mu_x;  SumAverage = sum_k k p_{x+y}(k)
    ClusterProminence/Shade/Tendency = sum p (i + j - mu_x - mu_y)^{4,3,2};  Contrast = sum p (i-j)^2
    Correlation = (sum p (i - mu_x)(j - mu_y)) / (sigma_x sigma_y + eps)  (1 if sigma_x sigma_y = 0)
    DifferenceAverage = sum_k k p_{x-y}(k);  DifferenceVariance = sum_k (k - DA)^2 p_{x-y}(k)
    DifferenceEntropy = -sum p_{x-y} log2(p_{x-y} + eps);  SumEntropy = -sum p_{x+y} log2(p_{x+y} + eps)
    JointEnergy = sum p^2;  JointEntropy = HXY;  MaximumProbability = max p
    Imc1 = (HXY - HXY1) / max(HX, HY)  (0 if the max is 0);  Imc2 = sqrt(1 - exp(-2 (HXY2 - HXY)))
    Id = sum p_{x-y}(k) / (1 + k);  Idn = sum p_{x-y}(k) / (1 + k / Ng)
    Idm = sum p_{x-y}(k) / (1 + k^2);  Idmn = sum p_{x-y}(k) / (1 + k^2 / Ng^2)
    InverseVariance = sum_{k >= 1} p_{x-y}(k) / k^2;  SumSquares = sum p (i - mu_x)^2
    MCC = sqrt(second largest eigenvalue of Q),  Q(i, j) = sum_k p(i, k) p(j, k) / (p_x(i) p_y(k))
      (computed from the symmetric similar matrix D^{-1/2} (p D_y^{-1} p^T) D^{-1/2}, D = diag(p_x);
      1 when fewer than two grey levels are present).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GLCM_FEATURES", "directions", "glcm_features", "glcm_matrices", "static_shift"]

GLCM_FEATURES = (
    "Autocorrelation", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast",
    "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm",
    "Idmn", "Idn", "Imc1", "Imc2", "InverseVariance", "JointAverage", "JointEnergy", "JointEntropy",
    "MCC", "MaximumProbability", "SumAverage", "SumEntropy", "SumSquares",
)

_EPS = 2.220446049250313e-16


def directions(force2d: bool) -> tuple[tuple[int, int, int], ...]:
    """Unit offsets ``(dz, dy, dx)``: 13 in 3D, the 4 in-plane ones (``dz = 0``) with force2D.

    One of each opposite pair (first non-zero component positive); the features are symmetric in
    the sign. (PyRadiomics' force2Ddimension 0: the plane is (y, x) of the (z, y, x) array.)
    """
    out = []
    for a in itertools.product((-1, 0, 1), repeat=3):
        if a == (0, 0, 0):
            continue
        first = next(c for c in a if c != 0)
        if first < 0 or (force2d and a[0] != 0):
            continue
        out.append(a)
    return tuple(out)


def static_shift(arr, offset, fill):
    """``out[v] = arr[v - offset]`` over the leading ``len(offset)`` axes (static int offsets),
    ``fill`` where ``v - offset`` is outside the array; trailing axes are carried along."""
    pad = [(max(o, 0), max(-o, 0)) for o in offset] + [(0, 0)] * (arr.ndim - len(offset))
    out = jnp.pad(arr, pad, constant_values=fill)
    idx = tuple(slice(max(-o, 0), max(-o, 0) + arr.shape[ax]) for ax, o in enumerate(offset))
    return out[idx]


def glcm_matrices(dirs, *, n_bins: int, levels=None, membership=None, roi_index=None):
    """Symmetric, un-normalised GLCMs ``(Na, N, N)``.

    Soft: from masked memberships ``membership (D, H, W, N)`` as ``sum_v w(v) w(v + a)^T``
    (one matmul per direction). Hard: from ``levels (D, H, W)`` (1..N in the ROI, 0 outside) by
    counting the pairs ``(g(v), g(v + a))`` -- the same matrix as one-hot memberships, in
    O(voxels) instead of O(voxels N^2); with ``roi_index`` (flat ROI indices padded with
    ``levels.size``) only the ROI voxels are visited.
    """
    if membership is not None:
        flat = membership.reshape(-1, n_bins)
        # neighbour at v + a  ->  static shift by -a (static slices: 2x faster gradients than a
        # lax.map over traced offsets)
        p = jnp.stack([
            flat.T @ static_shift(membership, tuple(-c for c in a), 0.0).reshape(-1, n_bins)
            for a in dirs])
    else:
        # all directions in one integer scatter (much faster than float scatters on CPU)
        na = len(dirs)
        if roi_index is None:
            lv = levels.reshape(-1)
            idx = []
            for d, a in enumerate(dirs):
                nb = static_shift(levels, tuple(-c for c in a), 0).reshape(-1)
                ok = (lv > 0) & (nb > 0)
                idx.append(jnp.where(ok, d * n_bins * n_bins + (lv - 1) * n_bins + (nb - 1), -1))
            idx = jnp.concatenate(idx)
        else:
            # only the (compacted) ROI voxels and their neighbours
            shape = levels.shape
            flat = jnp.concatenate([levels.reshape(-1), jnp.zeros((1,), levels.dtype)])
            size = levels.size
            valid = roi_index < size
            coords = jnp.unravel_index(jnp.minimum(roi_index, size - 1), shape)
            g = flat[roi_index]
            d_off = jnp.arange(na, dtype=jnp.int32)[:, None]
            a = jnp.asarray(dirs, jnp.int32)  # (Na, 3)
            nc = [coords[ax][None, :] + a[:, ax:ax + 1] for ax in range(3)]  # (Na, K) each
            inb = valid[None, :]
            for ax in range(3):
                inb = inb & (nc[ax] >= 0) & (nc[ax] < shape[ax])
            nflat = (nc[0] * shape[1] + nc[1]) * shape[2] + nc[2]
            nb = flat[jnp.where(inb, nflat, size)]
            ok = (g[None, :] > 0) & (nb > 0)
            idx = jnp.where(ok, d_off * n_bins * n_bins + (g[None, :] - 1) * n_bins + (nb - 1), -1)
            idx = idx.reshape(-1)
        cnt = jax.ops.segment_sum((idx >= 0).astype(jnp.int32), jnp.maximum(idx, 0),
                                  num_segments=na * n_bins * n_bins)
        p = cnt.reshape(na, n_bins, n_bins).astype(jnp.result_type(float))
    return p + jnp.swapaxes(p, 1, 2)


def _diff_sum_operators(n, dtype):
    i = np.arange(1, n + 1)
    s = (i[:, None] + i[None, :] - 2).reshape(-1)  # k - 2 for k = i + j in 2..2N
    d = np.abs(i[:, None] - i[None, :]).reshape(-1)  # k = |i - j| in 0..N-1
    op_sum = np.zeros((n * n, 2 * n - 1))
    op_sum[np.arange(n * n), s] = 1.0
    op_diff = np.zeros((n * n, n))
    op_diff[np.arange(n * n), d] = 1.0
    return jnp.asarray(op_sum, dtype), jnp.asarray(op_diff, dtype)


def _safe_div(a, b):
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def _safe_sqrt(x):
    """sqrt with a finite (zero) gradient at 0."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _mcc(p, px, py, differentiable=True):
    """sqrt of the second largest eigenvalue of Q, per direction; p (Na, N, N).

    ``differentiable``: ``eigvalsh`` (has a JVP); otherwise Householder tridiagonalisation +
    bisection for the one eigenvalue needed (same value, about 4x faster on CPU; hard mode).
    """
    inv_py = _safe_div(1.0, py)  # (Na, N)
    a = jnp.einsum("aik,ak,ajk->aij", p, inv_py, p)
    sx = _safe_sqrt(px)
    inv_sx = _safe_div(1.0, sx)
    s = a * inv_sx[:, :, None] * inv_sx[:, None, :]
    s = 0.5 * (s + jnp.swapaxes(s, 1, 2))
    n = s.shape[-1]
    if differentiable or n < 3:
        lam2 = jnp.linalg.eigvalsh(s)[:, -2]
    else:
        from jax.scipy.linalg import eigh_tridiagonal

        _, d, e, _ = jax.lax.linalg.tridiagonal(s)
        lam2 = jax.vmap(lambda d, e: eigh_tridiagonal(d, e, eigvals_only=True, select="i",
                                                      select_range=(n - 2, n - 2)))(d, e)[:, 0]
    return _safe_sqrt(lam2)


def glcm_features(P, n_levels, differentiable=True):
    """GLCM features from un-normalised matrices ``P (Na, N, N)``; ``n_levels`` = PyRadiomics' Ng.

    ``differentiable=False`` (hard mode) picks a faster, non-differentiable eigenvalue routine for
    MCC.

    Returns dict name -> scalar (averaged over the non-empty directions).
    """
    na, n, _ = P.shape
    dt = P.dtype
    tot = jnp.sum(P, axis=(1, 2))
    valid = tot > 0
    p = P / jnp.where(valid, tot, 1.0)[:, None, None]
    g = jnp.arange(1, n + 1, dtype=dt)
    i = g[:, None]
    j = g[None, :]
    ng = n_levels.astype(dt)

    px = jnp.sum(p, axis=2)  # (Na, N)
    py = jnp.sum(p, axis=1)
    ux = jnp.sum(p * i, axis=(1, 2))
    uy = jnp.sum(p * j, axis=(1, 2))
    op_sum, op_diff = _diff_sum_operators(n, dt)
    pxy_sum = p.reshape(na, -1) @ op_sum  # (Na, 2N-1), k = 2..2N
    pxy_diff = p.reshape(na, -1) @ op_diff  # (Na, N), k = 0..N-1
    k_sum = jnp.arange(2, 2 * n + 1, dtype=dt)
    k_diff = jnp.arange(0, n, dtype=dt)

    def ent(q, axes):
        return -jnp.sum(q * jnp.log2(q + _EPS), axis=axes)

    hxy = ent(p, (1, 2))
    hx = ent(px, 1)
    hy = ent(py, 1)
    pxpy = px[:, :, None] * py[:, None, :]
    hxy1 = -jnp.sum(p * jnp.log2(pxpy + _EPS), axis=(1, 2))
    hxy2 = ent(pxpy, (1, 2))

    dx = i - ux[:, None, None]
    dy = j - uy[:, None, None]
    cl = (i + j) - ux[:, None, None] - uy[:, None, None]
    sigx = _safe_sqrt(jnp.sum(p * dx**2, axis=(1, 2)))
    sigy = _safe_sqrt(jnp.sum(p * dy**2, axis=(1, 2)))
    corm = jnp.sum(p * dx * dy, axis=(1, 2))
    sxy = sigx * sigy
    corr = jnp.where(sxy == 0, 1.0, corm / (sxy + _EPS))

    hmax = jnp.maximum(hx, hy)
    imc1 = _safe_div(hxy - hxy1, hmax)
    arg = 1.0 - jnp.exp(-2.0 * (hxy2 - hxy))
    imc2 = jnp.where(hxy2 == hxy, 0.0, _safe_sqrt(arg))

    diff_avg = jnp.sum(k_diff * pxy_diff, axis=1)
    n_present = jnp.sum(jnp.sum(P, axis=(0, 1)) > 0)  # grey levels present in the ROI
    mcc = jnp.where(n_present < 2, 1.0, _mcc(p, px, py, differentiable))

    per_angle = {
        "Autocorrelation": jnp.sum(p * i * j, axis=(1, 2)),
        "ClusterProminence": jnp.sum(p * cl**4, axis=(1, 2)),
        "ClusterShade": jnp.sum(p * cl**3, axis=(1, 2)),
        "ClusterTendency": jnp.sum(p * cl**2, axis=(1, 2)),
        "Contrast": jnp.sum(p * (i - j) ** 2, axis=(1, 2)),
        "Correlation": corr,
        "DifferenceAverage": diff_avg,
        "DifferenceEntropy": ent(pxy_diff, 1),
        "DifferenceVariance": jnp.sum(pxy_diff * (k_diff - diff_avg[:, None]) ** 2, axis=1),
        "Id": jnp.sum(pxy_diff / (1.0 + k_diff), axis=1),
        "Idm": jnp.sum(pxy_diff / (1.0 + k_diff**2), axis=1),
        "Idmn": jnp.sum(pxy_diff / (1.0 + k_diff**2 / ng**2), axis=1),
        "Idn": jnp.sum(pxy_diff / (1.0 + k_diff / ng), axis=1),
        "Imc1": imc1,
        "Imc2": imc2,
        "InverseVariance": jnp.sum(pxy_diff[:, 1:] / k_diff[1:] ** 2, axis=1),
        "JointAverage": ux,
        "JointEnergy": jnp.sum(p**2, axis=(1, 2)),
        "JointEntropy": hxy,
        "MCC": mcc,
        "MaximumProbability": jnp.max(p.reshape(na, -1), axis=1),
        "SumAverage": jnp.sum(k_sum * pxy_sum, axis=1),
        "SumEntropy": ent(pxy_sum, 1),
        "SumSquares": jnp.sum(p * dx**2, axis=(1, 2)),
    }
    w = valid.astype(dt)
    nvalid = jnp.sum(w)
    return {k: jnp.sum(jnp.where(valid, v, 0.0)) / nvalid for k, v in per_angle.items()}
