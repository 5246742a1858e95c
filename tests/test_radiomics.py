"""phyjax.radiomics: PyRadiomics parity (hard mode), gradients (soft mode), batching, selection.

The oracle is PyRadiomics 3.1.0 itself, run in the same test on the same arrays
(``bash tools/install_pyradiomics.sh`` builds it from PyPI); its own baseline tables
(tests/data/pyradiomics/baseline, BSD-3-Clause, see LICENSE.txt there) are checked with its 3 % rule.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phyjax import radiomics as rad

DATA = Path(__file__).parent / "data" / "pyradiomics"

# (image, label map, label): the real PyRadiomics test cases (MR brain x2, breast, prostate phantom)
CASES = {
    "brain1": ("brain1_image.nrrd", "brain1_label.nrrd", 1),
    "brain2": ("brain2_image.nrrd", "brain2_label.nrrd", 1),
    "breast1": ("breast1_image.nrrd", "breast1_label.nrrd", 1),
    **{f"prostate{lab}": ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd",
                          lab) for lab in (1, 7, 8, 9)},
}
# PyRadiomics settings; the first three are the settings of its baseline columns
# <case>, <case>_2d and <case>_FBN.
SETTINGS = {
    "binwidth_3d": dict(binWidth=25, voxelArrayShift=2000),
    "binwidth_2d": dict(binWidth=25, force2D=True),
    "bincount_3d": dict(binCount=64),
    "bincount_2d": dict(binCount=64, force2D=True),
}
BASELINE_COLUMN = {"binwidth_3d": "", "binwidth_2d": "_2d", "bincount_3d": "_FBN"}
# Features whose soft-mode value depends on the (hard) run lengths only.
RUN_LENGTH_ONLY = {
    "glrlm_ShortRunEmphasis", "glrlm_LongRunEmphasis", "glrlm_RunLengthNonUniformity",
    "glrlm_RunLengthNonUniformityNormalized", "glrlm_RunPercentage", "glrlm_RunVariance",
}


@pytest.fixture(scope="module", autouse=True)
def x64():
    """float64 for the whole module (parity at 1e-5 needs it); restored afterwards."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _load(name):
    ip, mp, label = CASES[name]
    image, spacing = rad.read_nrrd(DATA / ip)
    labels, _ = rad.read_nrrd(DATA / mp)
    return image, labels, label, spacing


def _kwargs(s):
    return dict(bin_width=s.get("binWidth"), bin_count=s.get("binCount"),
                force2d=s.get("force2D", False), voxel_array_shift=s.get("voxelArrayShift", 0.0))


LAYOUTS = ("packed", "canvas")


@pytest.fixture(scope="module")
def jax_results_by_layout():
    """All 7 ROIs of the 4 cases in one call per setting and layout: packed (all ROI voxels in
    one list) and canvas (one padded (16, 72, 88) batch, vmap)."""
    loaded = {n: _load(n) for n in CASES}
    images = [loaded[n][0] for n in CASES]
    masks = [loaded[n][1] == loaded[n][2] for n in CASES]
    spacings = [loaded[n][3] for n in CASES]
    out = {}
    for layout in LAYOUTS:
        for sname, s in SETTINGS.items():
            feats = rad.extract(images, masks, label=None, spacings=spacings, layout=layout,
                                **_kwargs(s))
            out[layout, sname] = {case: {k: float(v[b]) for k, v in feats.items()}
                                  for b, case in enumerate(CASES)}
    return out


@pytest.fixture(scope="module")
def jax_results(jax_results_by_layout):
    """The default (packed) layout's results, per setting."""
    return {s: jax_results_by_layout["packed", s] for s in SETTINGS}


def _pyradiomics(name, settings):
    pytest.importorskip("radiomics")
    from phyjax.radiomics.oracle import pyradiomics_features

    image, labels, label, spacing = _load(name)
    return pyradiomics_features(image, labels, spacing, label=label, **settings)


def _rel(a, b):
    return abs(a - b) / abs(b) if b != 0 else abs(a)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_hard_mode_matches_pyradiomics(jax_results_by_layout, setting):
    """Every first-order, GLCM and GLRLM feature, 7 real ROIs, both layouts: rel. error <= 1e-5
    (float64)."""
    pytest.importorskip("radiomics")
    refs = {case: _pyradiomics(case, SETTINGS[setting]) for case in CASES}
    for layout in LAYOUTS:
        worst = {}
        for case, ref in refs.items():
            mine = jax_results_by_layout[layout, setting][case]
            assert set(ref) == set(mine), set(ref) ^ set(mine)
            for k, v in ref.items():
                err = _rel(mine[k], v)
                cls = k.split("_")[0]
                if err >= worst.get(cls, (-1.0,))[0]:
                    worst[cls] = (err, case, k, mine[k], v)
        print(f"\n{setting}, {layout}: max rel. error per class:",
              {c: f"{w[0]:.1e} ({w[1]} {w[2]})" for c, w in worst.items()})
        for cls, (err, case, k, a, b) in worst.items():
            assert err <= 1e-5, (f"{layout} {case} {k}: phyjax {a!r} vs PyRadiomics {b!r} "
                                 f"(rel {err:.2e})")
        assert set(worst) == {"firstorder", "glcm", "glrlm"}


def _baseline(cls):
    with open(DATA / "baseline" / f"baseline_{cls}.csv") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    return {r[0]: dict(zip(header[1:], r[1:])) for r in rows[1:]}


@pytest.mark.parametrize("setting", list(BASELINE_COLUMN))
def test_pyradiomics_baseline_tables(jax_results, setting):
    """PyRadiomics' own baseline tables agree within its rule abs(1 - value / baseline) < 0.03.

    (The first-order table has no _2d / _FBN columns.)
    """
    checked = 0
    for cls in ("firstorder", "glcm", "glrlm"):
        table = _baseline(cls)
        for case in ("brain1", "brain2", "breast1"):
            column = case + BASELINE_COLUMN[setting]
            for key, row in table.items():
                if not key.startswith(f"original_{cls}_") or column not in row:
                    continue
                name = key[len("original_"):]
                base = float(row[column])
                mine = jax_results[setting][case][name]
                if base == 0:
                    assert abs(mine) < 1e-9, (column, name, mine)
                else:
                    assert abs(1 - mine / base) < 0.03, (column, name, mine, base)
                checked += 1
    assert checked == 3 * ((18 if setting == "binwidth_3d" else 0) + 24 + 16)


# ----------------------------------------------------------------------------- batching, padding


@pytest.fixture(scope="module")
def breast1_single():
    """breast1 alone through the host API (packed layout: its 143 voxels only)."""
    image, labels, label, spacing = _load("breast1")
    out = rad.extract([image], [labels], label=label, spacings=[spacing],
                      **_kwargs(SETTINGS["binwidth_3d"]))
    return {k: float(v[0]) for k, v in out.items()}


def test_batch_equals_single_roi(jax_results, breast1_single):
    """breast1 packed with 6 other ROIs == breast1 alone (no leakage between ROIs)."""
    for k, v in breast1_single.items():
        assert v == pytest.approx(jax_results["binwidth_3d"]["breast1"][k], rel=1e-10, abs=1e-12), k


def test_padding_invariance(breast1_single):
    """The ROI moved inside a canvas filled with random values outside the mask: same features."""
    image, labels, label, spacing = _load("breast1")
    (xs,), (ms,) = rad.crop_and_pad([image], [labels == label], multiple=1)  # (3, 12, 9) box
    rng = np.random.default_rng(0)
    big_x = rng.uniform(-500, 3000, (8, 16, 16))
    big_m = np.zeros(big_x.shape, bool)
    sl = (slice(4, 7), slice(3, 15), slice(6, 15))
    big_x[sl], big_m[sl] = xs, ms
    # the configuration rad.extract chooses for breast1 alone
    cfg = rad.RadiomicsConfig(bin_width=25, n_bins=8, voxel_array_shift=2000, max_voxels=256)
    out = rad.extract_batch(big_x[None], big_m[None], cfg, spacing[None])
    for k, v in breast1_single.items():
        assert float(out[k][0]) == pytest.approx(v, rel=1e-10, abs=1e-12), k


def test_packed_layout_rejects_bad_input():
    image, labels, label, spacing = _load("breast1")
    with pytest.raises(ValueError, match="hard features only"):
        rad.extract([image], [labels], label=label, layout="packed", temperature=0.1)
    with pytest.raises(ValueError, match="layout must be"):
        rad.extract([image], [labels], label=label, layout="dense")
    with pytest.raises(ValueError, match="ROI 1: empty ROI"):
        rad.extract([image, image], [labels, np.zeros_like(labels)], label=label)
    bad = image.astype(np.float64).copy()
    bad[labels == label] = np.nan
    with pytest.raises(ValueError, match="ROI 0: ROI contains non-finite"):
        rad.extract([bad], [labels], label=label)


def test_bucket_sizes_bound_padding():
    from phyjax.radiomics.packed import bucket_size

    sizes = {bucket_size(n) for n in range(1, 5000)}
    for n in range(1, 5000):
        b = bucket_size(n)
        assert b >= n and (n < 8 or b <= 1.25 * n + 1), (n, b)
    assert len(sizes) < 40  # few distinct shapes -> few compilations


# ----------------------------------------------------------------------------- soft mode

SOFT_CFG = rad.RadiomicsConfig(bin_width=5.0, n_bins=48)
SOFT_NAMES = rad.feature_names(SOFT_CFG)


@pytest.fixture(scope="module")
def soft_setup():
    """breast1 on an (8, 16, 16) canvas, bin width 5; jitted hard/soft feature vectors."""
    image, labels, label, spacing = _load("breast1")
    (xs,), (ms,) = rad.crop_and_pad([image], [labels == label])
    # Break ties and keep every value >= 0.1 away from the bin edges (multiples of 5), so the
    # piecewise-constant parts (hard run lengths, order-statistic ranks) are locally constant.
    x = xs + 0.1 + 0.8 * np.random.default_rng(1).uniform(size=xs.shape)
    m = jnp.asarray(ms)

    def feats(x, temperature):
        f = rad.extract_features(x, m, SOFT_CFG, spacing, temperature)
        return jnp.stack([f[n] for n in SOFT_NAMES])

    hard = jax.jit(lambda y: feats(y, None))
    soft = jax.jit(feats)
    return jnp.asarray(x), m, feats, hard, soft


def test_soft_gradients_finite_nonzero_and_match_finite_differences(soft_setup):
    """Forward-mode derivatives of every soft feature vs central finite differences."""
    x, m, feats, _, soft = soft_setup
    tau = 0.5
    v = jnp.asarray(np.random.default_rng(2).normal(size=x.shape)) * m
    f0, jv = jax.jit(lambda x, v: jax.jvp(lambda y: feats(y, tau), (x,), (v,)))(x, v)
    h = 1e-3
    fd = (soft(x + h * v, tau) - soft(x - h * v, tau)) / (2 * h)
    f0, jv, fd = np.asarray(f0), np.asarray(jv), np.asarray(fd)
    assert np.all(np.isfinite(jv)) and np.all(np.isfinite(f0))
    for n, a, b, f in zip(SOFT_NAMES, jv, fd, f0):
        if n in RUN_LENGTH_ONLY:
            # hard run lengths: piecewise constant (see the glrlm docstring); zero up to round-off
            assert abs(a) <= 1e-10 * (1 + abs(f)), (n, a)
        else:
            assert abs(a) > 1e-12 * (1 + abs(f)), f"{n}: zero gradient"
        assert abs(a - b) <= 1e-4 * max(abs(a), abs(b)) + 1e-9 * (1 + abs(f)), (n, a, b)


def test_soft_tends_to_hard_as_temperature_goes_to_zero(soft_setup):
    """Soft features -> hard features as tau -> 0, also for values exactly on bin edges."""
    x, m, _, hard, soft = soft_setup
    x_int = jnp.floor(x)  # the original integer image: many voxels sit exactly on an edge
    assert int(jnp.sum((jnp.mod(x_int, 5.0) == 0) & m)) > 10
    for name, y in (("off-edge", x), ("integer", x_int)):
        h = np.asarray(hard(y))
        errs = []
        for tau in (1e-1, 1e-2, 1e-3, 1e-4):
            s = np.asarray(soft(y, tau))
            errs.append(np.max(np.abs(s - h) / np.maximum(np.abs(h), 1e-12)))
        print(f"\n{name}: max rel. |soft - hard| at tau = 1e-1 .. 1e-4:", [f"{e:.1e}" for e in errs])
        assert all(b <= a for a, b in zip(errs, errs[1:])), errs
        assert errs[-1] < 1e-3, errs


def test_gradient_descent_moves_hard_features_toward_target(soft_setup):
    """Optimise an image on a soft-feature L1 loss; its *hard* features approach the target.

    Also checks the reverse-mode gradient of the loss against a finite difference.
    """
    import optax

    x0, m, feats, hard, _ = soft_setup
    mean = jnp.sum(x0 * m) / jnp.sum(m)
    target_image = mean + 1.6 * (x0 - mean) + 12.0  # "target site": more contrast, brighter
    names = ["firstorder_Mean", "firstorder_Variance", "firstorder_Entropy", "glcm_Contrast",
             "glcm_JointEntropy", "glcm_Idm", "glrlm_GrayLevelNonUniformity",
             "glrlm_HighGrayLevelRunEmphasis"]
    sel = np.array([SOFT_NAMES.index(n) for n in names])
    target = hard(target_image)[sel]
    scale = jnp.abs(target)

    def loss(x):
        return jnp.mean(jnp.abs(feats(x, 0.5)[sel] - target) / scale)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    # reverse mode vs finite differences along a random direction
    v = jnp.asarray(np.random.default_rng(4).normal(size=x0.shape)) * m
    l0, g0 = value_and_grad(x0)
    assert np.all(np.isfinite(np.asarray(g0))) and float(jnp.max(jnp.abs(g0))) > 0
    h = 1e-3
    fd = (value_and_grad(x0 + h * v)[0] - value_and_grad(x0 - h * v)[0]) / (2 * h)
    assert float(jnp.vdot(g0, v)) == pytest.approx(float(fd), rel=1e-4)

    opt = optax.adam(1.0)
    x, state = x0, opt.init(x0)

    def hard_dist(x):
        return float(jnp.mean(jnp.abs(hard(x)[sel] - target) / scale))

    d0 = hard_dist(x0)
    for _ in range(60):
        _, g = value_and_grad(x)
        upd, state = opt.update(g * m, state)
        x = optax.apply_updates(x, upd)
    d1 = hard_dist(x)
    print(f"\nmean relative distance of the hard features to the target: {d0:.3f} -> {d1:.3f}")
    assert d1 < 0.4 * d0, (d0, d1)


# ----------------------------------------------------------------------------- selection, API


def test_feature_selection_hand_computed():
    feats = {
        "A": [10.0, 11.0, 12.0, 13.0],  # CV = 1.2910 / 11.5 = 0.11227
        "B": [21.0, 23.0, 25.0, 27.0],  # = 2A + 1: CV = 2.5820 / 24 = 0.10758 -> rank 1
        "C": [5.0, 1.0, 5.0, 1.0],  # CV = 2.3094 / 3 = 0.76980; r(C, B) = -0.4472
        "D": [0.0, 0.0, 0.0, 0.0],  # mean 0: CV undefined (inf), never selected
        "E": [3.0, 1.0, 3.1, 0.9],  # CV = 1.2138 / 2 = 0.6069; r(E, B) = -0.4467: kept
    }  # r(C, E) = 0.9989 and E ranks before C, so C is dropped; A is dropped (r(A, B) = 1)
    res = rad.select_features(feats)
    assert res.names == ["B", "E"]
    np.testing.assert_allclose(res.target_means, [24.0, 2.0])
    assert res.cv["A"] == pytest.approx(np.std(feats["A"], ddof=1) / 11.5)
    assert res.cv["B"] == pytest.approx(0.107583, rel=1e-5)
    assert res.cv["D"] == np.inf
    top1 = rad.select_features(feats, top_k=1)
    assert top1.names == ["B"]
    assert rad.select_features(feats, corr_threshold=1.1).names == ["B", "A", "E", "C"]


def test_extract_files_nifti_matches_arrays(tmp_path, jax_results, breast1_single):
    """Public API on NIfTI files: same features as the arrays (x, y, z on disk)."""
    nib = pytest.importorskip("nibabel")
    image, labels, label, spacing = _load("breast1")
    affine = np.diag(list(spacing[::-1]) + [1.0])
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0).astype(np.int16), affine), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0).astype(np.int16), affine), tmp_path / "m.nii.gz")
    out = rad.extract_files([tmp_path / "i.nii.gz"], [tmp_path / "m.nii.gz"], label=label,
                            **_kwargs(SETTINGS["binwidth_3d"]))
    assert set(out) == set(rad.feature_names())
    for k, v in out.items():
        # NIfTI stores the spacing as float32: only TotalEnergy (uses the voxel volume) moves
        rel = 1e-6 if k == "firstorder_TotalEnergy" else 1e-10
        assert float(v[0]) == pytest.approx(jax_results["binwidth_3d"]["breast1"][k], rel=rel), k


def test_auto_layout_picks_the_cheaper_one_and_both_agree():
    """Small ROIs in big boxes -> packed; ROIs filling their box -> canvas; same features."""
    from phyjax.radiomics.api import _cheaper_layout

    rng = np.random.default_rng(3)
    sparse = np.zeros((16, 40, 40), bool)
    sparse[2:5, 3:9, 30:38] = True
    sparse[10, 30, 2] = True
    dense = np.ones((8, 16, 16), bool)
    assert _cheaper_layout([sparse, sparse], 8) == "packed"
    assert _cheaper_layout([dense, dense], 8) == "canvas"
    images = [rng.uniform(0, 200, m.shape) for m in (sparse, dense)]
    a = rad.extract(images, [sparse, dense], label=None, bin_width=25.0, layout="packed")
    b = rad.extract(images, [sparse, dense], label=None, bin_width=25.0, layout="canvas")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_integer_key_sorts_match_numpy(dtype):
    """Hard-mode sorts through integer keys == numpy's sort, incl. signs, zeros, ties, inf."""
    from phyjax.radiomics.firstorder import sort_by_segment, sort_values

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 1e3, 500), rng.integers(-3, 3, 200), [0.0, -0.0, 5e-300,
                        -np.inf, np.inf, np.finfo(dtype).max]]).astype(dtype)
    rng.shuffle(x)
    np.testing.assert_array_equal(np.asarray(sort_values(jnp.asarray(x))), np.sort(x))
    seg = rng.integers(0, 5, x.size).astype(np.int32)
    got = np.asarray(sort_by_segment(jnp.asarray(x), jnp.asarray(seg), 5))
    np.testing.assert_array_equal(got, x[np.lexsort((x, seg))])


def _runs_brute_force(levels, a):
    """Run length through every voxel along ``a`` by walking each run voxel by voxel (numpy)."""
    out = np.zeros(levels.shape, int)
    shape = np.array(levels.shape)
    a = np.array(a)
    inside = lambda p: bool(np.all(p >= 0) and np.all(p < shape))  # noqa: E731
    for v in np.argwhere(levels > 0):
        g, n = levels[tuple(v)], 1
        for sense in (1, -1):
            p = v + sense * a
            while inside(p) and levels[tuple(p)] == g:
                n += 1
                p = p + sense * a
        out[tuple(v)] = n
    lines_with_two = False
    for v in np.argwhere(levels > 0):
        p = v + a
        while inside(p):
            if levels[tuple(p)] > 0:
                lines_with_two = True
            p = p + a
    return out, lines_with_two


@pytest.mark.parametrize("shape", [(5, 7, 6), (1, 9, 8), (12, 4, 3)])
def test_run_lengths_match_brute_force(shape):
    """Scan run lengths (all 13 directions, any scan axis) == walking the runs voxel by voxel."""
    from phyjax.radiomics.glcm import directions
    from phyjax.radiomics.glrlm import run_lengths

    rng = np.random.default_rng(sum(shape))
    levels = rng.integers(1, 3, shape) * (rng.uniform(size=shape) < 0.8)
    for a in directions(False):
        got, multi = run_lengths(jnp.asarray(levels), a)
        want, want_multi = _runs_brute_force(levels, a)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(a))
        assert bool(multi) == want_multi, a
    sparse = np.zeros((4, 5, 5), int)
    sparse[0, 0, 0] = sparse[2, 0, 0] = 1  # two ROI voxels on one z line, not adjacent
    assert bool(run_lengths(jnp.asarray(sparse), (1, 0, 0))[1])
    assert not bool(run_lengths(jnp.asarray(sparse), (0, 1, 0))[1])


def test_packed_batches_of_other_rois_reuse_the_compilation():
    """ROI sets of different sizes that round to the same buckets share one compiled kernel."""
    from phyjax.radiomics import packed as pk

    image, labels, label, spacing = _load("prostate1")
    m = labels == label
    rng = np.random.default_rng(11)
    runs = []
    for drop in (0, 3, 7):  # remove a few ROI voxels: other voxel counts, same buckets
        mm = m.copy()
        mm[tuple(np.argwhere(mm)[:drop].T)] = False
        runs.append(([image, image + rng.normal(0, 5, image.shape)], [mm, m]))
    size = None
    for images, masks in runs:
        p = pk.pack(images, masks, spacings=[spacing] * 2)
        pk.packed_features(p, n_bins=64, bin_width=25.0)
        if size is None:
            size = pk._packed_features_jit._cache_size()
    assert pk._packed_features_jit._cache_size() == size


def test_soft_features_ignore_what_lies_outside_the_mask_nan_included():
    """'Values outside the mask are ignored' holds in soft mode too: NaN (a padded scan) or any
    other value outside the ROI gives the features of the image with zeros there (before, soft
    memberships were masked by multiplication and NaN * 0 made 42 of 59 features NaN)."""
    rng = np.random.default_rng(3)
    img = rng.normal(100, 30, (3, 6, 6)).astype(np.float32)
    m = rng.random((3, 6, 6)) < 0.7
    cfg = rad.RadiomicsConfig(bin_width=10.0, n_bins=32)
    zeros = rad.extract_features(np.where(m, img, 0), m, cfg, temperature=1e-3)
    for outside in (np.nan, 1e4):
        got = rad.extract_features(np.where(m, img, outside), m, cfg, temperature=1e-3)
        for k in zeros:
            assert float(got[k]) == pytest.approx(float(zeros[k]), rel=1e-5, nan_ok=False), k
