"""The anatomy-keeping loss terms of PhyCHarm (issue 14): gradient difference, normalized
gradient fields, soft tissue classes, intensity distribution, the segmenter's Gaussian mixture -- against NumPy transcriptions of the published
formulas and properties that would fail if they were wrong."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phyjax.losses import (
    edge_agreement,
    gradient_difference,
    intensity_distribution,
    mixture_consistency,
    mixture_posteriors,
    tissue_consistency,
    tissue_distribution,
)
from phyjax.data.nifti import InputError
from phyjax.methods import phycharm
from phyjax.models.phycharm import reference_signal
from phyjax.physics.sequences import Protocol
from phyjax.physics.tissues import tissue_parameters


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:24, :20]
    disk = ((yy - 12) ** 2 + (xx - 10) ** 2 < 49).astype(np.float32)
    x = (0.3 + 0.6 * disk + 0.02 * rng.standard_normal(disk.shape)).astype(np.float32)
    mask = np.ones_like(x)
    mask[:2] = 0
    return x[None, ..., None], mask[None, ..., None], rng


def _gdl_numpy(x, y, m):
    total = count = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < x.shape[0] and j + dj < x.shape[1] and m[i, j] and m[i + di, j + dj]:
                    gx = abs(x[i + di, j + dj] - x[i, j])
                    gy = abs(y[i + di, j + dj] - y[i, j])
                    total += abs(gy - gx)
                    count += 1
    return total / count


def test_gradient_difference_is_mathieu_eq5_and_blind_to_offsets(images):
    x, mask, rng = images
    y = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    got = float(gradient_difference(x, y, mask))
    assert got == pytest.approx(_gdl_numpy(x[0, ..., 0], y[0, ..., 0], mask[0, ..., 0]), rel=1e-5)
    assert float(gradient_difference(x, x + 0.4, mask)) == pytest.approx(0.0, abs=1e-7)
    # a blurred copy has weaker edges: it costs, and more blur costs more
    from scipy.ndimage import gaussian_filter
    b1 = gaussian_filter(x, (0, 0.7, 0.7, 0))
    b2 = gaussian_filter(x, (0, 1.5, 1.5, 0))
    assert 0 < float(gradient_difference(b1, x, mask)) < float(gradient_difference(b2, x, mask))


def _ngf_numpy(a, b, m, eta):
    def grads(z):
        return (0.5 * (np.roll(z, -1, 0) - np.roll(z, 1, 0)),
                0.5 * (np.roll(z, -1, 1) - np.roll(z, 1, 1)))
    inner = m * np.roll(m, 1, 0) * np.roll(m, -1, 0) * np.roll(m, 1, 1) * np.roll(m, -1, 1)
    out = []
    for z in (a, b):
        gx, gy = grads(z.astype(np.float64))
        mag = np.sqrt(gx ** 2 + gy ** 2)
        e = eta * (mag * inner).sum() / inner.sum()
        out.append((gx, gy, gx ** 2 + gy ** 2 + e ** 2))
    (ax, ay, na), (bx, by, nb) = out
    return 1 - ((ax * bx + ay * by) ** 2 / (na * nb) * inner).sum() / inner.sum()


def test_edge_agreement_is_haber_modersitzki_and_contrast_free(images):
    x, mask, rng = images
    other = np.roll(x, 3, axis=2)              # the same disk, moved: edges elsewhere
    got = float(edge_agreement(x, other, mask))
    assert got == pytest.approx(_ngf_numpy(x[0, ..., 0], other[0, ..., 0], mask[0, ..., 0], 0.5),
                                abs=1e-5)
    same = float(edge_agreement(x, x, mask))
    # inverted, rescaled contrast (another protocol's view of the same anatomy): same distance
    assert float(edge_agreement(x, 2.5 - 3.0 * x, mask)) == pytest.approx(same, abs=1e-5)
    assert same < got - 0.1


def test_edge_agreement_has_a_finite_gradient_on_a_slice_without_interior_pixels(images):
    """A batch holding a slice whose mask is a thin line (no pixel with 4 in-mask neighbours: the
    top of a brain) next to a full slice: the value is the full slice's (NumPy oracle) and the
    gradient is finite (it was NaN: 0 * inf where zeroed pixels' normalisers underflow)."""
    x, mask, _ = images
    thin = np.zeros_like(mask[:1])
    thin[0, 6:9, 7, 0] = 1
    batch_mask = np.concatenate([thin, mask[:1]])
    other = np.roll(x, 3, axis=2)
    a = jnp.asarray(np.concatenate([x[:1] * thin, x[:1]]))
    b = jnp.asarray(np.concatenate([other[:1] * thin, other[:1]]))
    value, grad = jax.value_and_grad(edge_agreement)(a, b, batch_mask)
    assert float(value) == pytest.approx(
        _ngf_numpy(x[0, ..., 0], other[0, ..., 0], mask[0, ..., 0], 0.5), abs=1e-5)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_tissue_consistency_charges_boundary_crossings_most():
    levels = jnp.array([0.2, 0.6, 1.0])       # CSF, GM, WM of some protocol
    mask = jnp.ones((1, 1, 2, 1))
    target = jnp.array([0.8, 0.95]).reshape(1, 1, 2, 1)  # near the GM/WM midpoint; inside WM
    err = 0.1
    across = float(tissue_consistency(target[:, :, :1] - err, target[:, :, :1], mask[:, :, :1],
                                      levels))
    inside = float(tissue_consistency(target[:, :, 1:] + err, target[:, :, 1:], mask[:, :, 1:],
                                      levels))
    assert across > 20 * inside
    # NumPy transcription of the soft classes (width = a quarter of the smallest gap = 0.1)
    def p(v):
        w = np.exp(-(v - np.array([0.2, 0.6, 1.0])) ** 2 / (2 * 0.1 ** 2))
        return w / w.sum()
    assert across == pytest.approx(np.abs(p(0.7) - p(0.8)).sum(), rel=1e-5)


def _three_tissues(seed=0, shape=(3, 40, 50, 1)):
    """CSF/GM/WM-like values (means 0.2/0.55/0.8, proportions 1/4, 5/12, 1/3) shuffled."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    counts = [n // 4, 5 * n // 12]
    counts.append(n - sum(counts))
    labels = np.repeat([0, 1, 2], counts)
    rng.shuffle(labels)
    values = np.array([0.2, 0.55, 0.8])[labels] + np.array([0.05, 0.06, 0.04])[labels] * \
        rng.standard_normal(n)
    return values.reshape(shape).astype(np.float32), labels.reshape(shape)


def test_mixture_posteriors_are_sklearns_em_on_the_masked_voxels():
    """The EM fit is scikit-learn's GaussianMixture (1-D, one variance per class) started from
    the same means, priors and spreads, with as many iterations: parameters fitted on the
    in-mask voxels only, posteriors for every voxel."""
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    x, _ = _three_tissues()
    mask = np.ones_like(x)
    mask[:, :6] = 0                                  # voxels that must not enter the fit
    x[:, :6] = 5.0                                   # (an outlier class if they did)
    init = np.array([0.25, 0.5, 0.75], np.float32)
    post, mu, sd, pi = mixture_posteriors(jnp.asarray(x), jnp.asarray(mask), init, iterations=5)
    gm = sklearn_mixture.GaussianMixture(
        3, covariance_type="spherical", max_iter=5, tol=0.0, reg_covar=0.0,
        means_init=init[:, None], weights_init=np.full(3, 1 / 3),
        precisions_init=np.full(3, 1 / (0.5 * 0.25) ** 2))
    with pytest.warns(Warning):                      # 5 iterations: "did not converge"
        gm.fit(x[mask > 0].astype(np.float64)[:, None])
    np.testing.assert_allclose(np.asarray(mu), gm.means_[:, 0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(sd), np.sqrt(gm.covariances_), atol=1e-5)
    np.testing.assert_allclose(np.asarray(pi), gm.weights_, atol=1e-5)
    inside = mask[..., 0] > 0
    np.testing.assert_allclose(np.asarray(post)[..., 0, :][inside],
                               gm.predict_proba(x[mask > 0][:, None]), atol=1e-4)
    assert np.asarray(post).shape == x.shape + (3,)


def test_mixture_consistency_sees_tissue_moved_not_contrast_rescaled():
    """Zero for the target itself and (up to EM's convergence) for an affine contrast change,
    which the segmenter re-estimates away and the fixed-level tissue term charges; about
    2 x the fraction of voxels moved when grey-matter voxels take white-matter values
    (each moved voxel's posteriors change from GM to WM: |dp| summed = 2)."""
    y, labels = _three_tissues(1)
    mask = np.ones_like(y)
    levels = jnp.asarray([0.2, 0.55, 0.8], jnp.float32)
    yj, mj = jnp.asarray(y), jnp.asarray(mask)
    assert float(mixture_consistency(yj, yj, mj, levels)) == 0.0
    rescaled = jnp.asarray(0.85 * y + 0.05)
    assert float(mixture_consistency(rescaled, yj, mj, levels, iterations=30)) < 0.01
    assert float(tissue_consistency(rescaled, yj, mj, levels)) > 0.05
    rng = np.random.default_rng(2)
    gm = np.flatnonzero(labels.ravel() == 1)
    moved = rng.choice(gm, size=gm.size // 5, replace=False)
    x = y.copy().ravel()
    x[moved] = 0.8 + 0.04 * rng.standard_normal(moved.size)
    got = float(mixture_consistency(jnp.asarray(x.reshape(y.shape)), yj, mj, levels))
    expected = 2 * moved.size / y.size
    assert abs(got - expected) < 0.25 * expected, (got, expected)
    g = jax.grad(lambda a: mixture_consistency(a, yj, mj, levels))(jnp.asarray(x.reshape(y.shape)))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_intensity_distribution_is_scipys_wasserstein_per_slice():
    """Oracle: SciPy's 1-D Wasserstein-1 distance of each slice's in-mask values, averaged over
    the slices that have any; voxels outside the mask and empty slices count for nothing."""
    from scipy.stats import wasserstein_distance
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (4, 12, 10, 1)).astype(np.float32)
    y = (rng.uniform(0, 1, x.shape) ** 2).astype(np.float32)
    mask = (rng.uniform(size=x.shape) > 0.3).astype(np.float32)
    mask[3] = 0                                          # an empty slice
    got = float(intensity_distribution(x, y, mask))
    want = np.mean([wasserstein_distance(x[i][mask[i] > 0], y[i][mask[i] > 0]) for i in range(3)])
    assert got == pytest.approx(want, rel=1e-5)
    # outside the mask nothing counts, in value or gradient
    far = np.where(mask > 0, x, 50.0).astype(np.float32)
    assert float(intensity_distribution(far, y, mask)) == pytest.approx(got, rel=1e-6)
    g = np.asarray(jax.grad(intensity_distribution)(jnp.asarray(x), jnp.asarray(y),
                                                    jnp.asarray(mask)))
    assert np.isfinite(g).all() and np.abs(g[mask == 0]).max() == 0 and np.abs(g).max() > 0


def test_intensity_distribution_sees_a_narrowed_histogram_that_l1_forgives():
    """Blind to where a voxel is (a permutation inside the mask costs nothing), but not to an
    output shrunk toward the mean: the regression to the mean that moves the class boundaries
    a histogram-fitting segmenter draws."""
    rng = np.random.default_rng(6)
    y = rng.uniform(0.1, 1.0, (1, 16, 16, 1)).astype(np.float32)
    mask = np.ones_like(y)
    shuffled = rng.permutation(y.ravel()).reshape(y.shape)
    assert float(intensity_distribution(shuffled, y, mask)) == pytest.approx(0.0, abs=1e-7)
    shrunk = (y.mean() + 0.8 * (y - y.mean())).astype(np.float32)
    # the sorted differences of an affine shrink are 0.2 |y - mean| exactly
    want = float(np.mean(0.2 * np.abs(y - y.mean())))
    assert float(intensity_distribution(shrunk, y, mask)) == pytest.approx(want, rel=1e-4)


def test_tissue_distribution_is_scipys_wasserstein_per_target_tissue():
    """Oracle: per slice, SciPy's 1-D Wasserstein-1 distance inside each class of the target
    (nearest tissue level), weighted by the class's share of the slice's mask; outside the mask
    nothing counts, in value or gradient."""
    from scipy.stats import wasserstein_distance
    rng = np.random.default_rng(8)
    levels = np.array([0.15, 0.55, 0.85], np.float32)
    y = rng.uniform(0, 1, (3, 14, 12, 1)).astype(np.float32)
    x = np.clip(y + 0.1 * rng.standard_normal(y.shape), 0, 1).astype(np.float32)
    mask = (rng.uniform(size=y.shape) > 0.25).astype(np.float32)
    mask[2] = 0                                          # an empty slice
    cls = np.argmin(np.abs(y[..., None] - levels), -1)
    want = []
    for i in range(2):
        inside = mask[i] > 0
        total = 0.0
        for k in range(3):
            sel = inside & (cls[i] == k)
            if sel.any():
                total += sel.sum() * wasserstein_distance(x[i][sel], y[i][sel])
        want.append(total / inside.sum())
    got = float(tissue_distribution(x, y, mask, jnp.asarray(levels)))
    assert got == pytest.approx(np.mean(want), rel=1e-5)
    far = np.where(mask > 0, x, 50.0).astype(np.float32)
    assert float(tissue_distribution(far, y, mask, levels)) == pytest.approx(got, rel=1e-6)
    g = np.asarray(jax.grad(tissue_distribution)(jnp.asarray(x), jnp.asarray(y),
                                                 jnp.asarray(mask), jnp.asarray(levels)))
    assert np.isfinite(g).all() and np.abs(g[mask == 0]).max() == 0 and np.abs(g).max() > 0
    # never below the whole-slice distance (fewer couplings allowed)
    assert got >= float(intensity_distribution(x, y, mask)) - 1e-6


def test_tissue_distribution_sees_brightness_traded_between_tissues():
    """An output whose grey matter is as bright as the target's white matter and vice versa has
    the target's whole histogram (the whole-slice distance is 0) but not its tissues';
    shuffling values within each tissue costs nothing."""
    rng = np.random.default_rng(9)
    levels = np.array([0.1, 0.5, 0.9], np.float32)
    labels = rng.integers(0, 3, (1, 16, 16, 1))
    y = (levels[labels] + 0.02 * rng.standard_normal(labels.shape)).astype(np.float32)
    mask = np.ones_like(y)
    swapped = y.copy()
    gm, wm = labels == 1, labels == 2
    n = min(gm.sum(), wm.sum())
    gi, wi = np.flatnonzero(gm)[:n], np.flatnonzero(wm)[:n]
    flat = swapped.reshape(-1)
    flat[gi], flat[wi] = y.reshape(-1)[wi], y.reshape(-1)[gi]
    assert float(intensity_distribution(swapped, y, mask)) == pytest.approx(0.0, abs=1e-7)
    assert float(tissue_distribution(swapped, y, mask, levels)) > 0.1
    shuffled = y.copy().reshape(-1)
    for k in range(3):
        idx = np.flatnonzero(labels == k)
        shuffled[idx] = rng.permutation(shuffled[idx])
    assert float(tissue_distribution(shuffled.reshape(y.shape), y, mask, levels)) == \
        pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("b0", [1.5, 3.0])
def test_tissue_levels_are_the_reference_signals_of_each_tissue(b0):
    target = Protocol(tr=2.4, te=0.0022, ti=1.0, flip_angle=np.deg2rad(8), field_strength=b0,
                      sequence="mprage")
    ref = float(reference_signal(target, tissue_parameters(b0)["wm"]))
    got = np.asarray(jax.jit(phycharm.tissue_levels)(target, ref))
    want = [float(reference_signal(target, tissue_parameters(b0)[t])) / ref
            for t in ("csf", "gm", "wm")]
    np.testing.assert_allclose(got, want, rtol=1e-4)   # float32 vs float64
    assert got[2] == pytest.approx(1.0) and got[0] < got[1] < got[2]   # T1w: CSF < GM < WM


def test_an_unpaired_batch_does_not_see_the_target_image():
    """The adaptation weights zero every term that needs a target image: the loss and its
    gradient do not depend on what the batch's target holds."""
    model = phycharm.make_model(dict(features=(4, 8), cond_features=4, t1_max=5.0, m0_max=1.5))
    params = phycharm.init_params(model, (16, 16), 1, 0)
    b = conftest.tiny_slice_batch()
    src = Protocol(tr=0.02, te=0.004, flip_angle=0.4, sequence="spgr")
    tgt = Protocol(tr=2.4, te=0.002, ti=1.0, flip_angle=0.14, sequence="mprage")
    w = {k: np.float32(1.0) for k in phycharm.WEIGHTS}
    adapt = dict(w, **{k: np.float32(0.0) for k in phycharm.PAIRED_TERMS})
    loss = phycharm.make_loss(model)
    grad = jax.jit(jax.grad(lambda p, bb, ww: loss(p, bb, src, tgt, 1.0, ww)[0]))
    other = dict(b, target=b["target"][::-1] * 3)
    g1, g2 = grad(params, b, adapt), grad(params, other, adapt)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # ... while a paired batch does
    d = [np.abs(np.asarray(a) - np.asarray(c)).max()
         for a, c in zip(jax.tree.leaves(grad(params, b, w)), jax.tree.leaves(grad(params, other, w)))]
    assert max(d) > 0
    # and the edge term alone reaches the parameters on an unpaired batch
    edge_only = {k: np.float32(k == "w_edge") for k in phycharm.WEIGHTS}
    assert any(np.abs(np.asarray(a)).max() > 0 for a in jax.tree.leaves(grad(params, b, edge_only)))


def test_terms_switched_off_in_the_config_are_not_computed(monkeypatch):
    """``make_loss(model, active)`` computes only the config's non-zero terms: the same loss and
    gradient as every term at weight 0 where those are finite, only the active terms' metrics,
    and a non-finite term that is off cannot reach the parameters (``0 * nan`` is nan)."""
    model = phycharm.make_model(dict(features=(4, 8), cond_features=4, t1_max=5.0, m0_max=1.5))
    params = phycharm.init_params(model, (16, 16), 1, 0)
    b = conftest.tiny_slice_batch()
    src = Protocol(tr=0.02, te=0.004, flip_angle=0.4, sequence="spgr")
    tgt = Protocol(tr=2.4, te=0.002, ti=1.0, flip_angle=0.14, sequence="mprage")
    train = conftest.load_config("phycharm").train
    active = phycharm.active_terms(train)
    assert "w_tissue_hist" not in active and "w_harm" in active     # the default's zeros
    w = {k: np.float32(train[k]) for k in phycharm.WEIGHTS}

    def value_and_grad(loss):
        fn = jax.value_and_grad(lambda p: loss(p, b, src, tgt, 1.0, w), has_aux=True)
        return jax.jit(fn)(params)

    (full, _), g_full = value_and_grad(phycharm.make_loss(model))
    (part, metrics), g_part = value_and_grad(phycharm.make_loss(model, active))
    np.testing.assert_allclose(float(part), float(full), rtol=1e-6)
    # float rounding: the sums run in another order; tolerance relative to the largest gradient
    scale = max(float(np.max(np.abs(c))) for c in jax.tree.leaves(g_full))
    for a, c in zip(jax.tree.leaves(g_part), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-5 * scale)
    assert set(metrics) == {"loss"} | {phycharm.METRIC_NAMES[k] for k in active}
    # a term that is off and not finite: poisons the all-terms loss, not the active one
    monkeypatch.setattr(phycharm, "tissue_distribution", lambda x, *a: jnp.sum(x) * jnp.nan)
    assert not np.isfinite(float(value_and_grad(phycharm.make_loss(model))[0][0]))
    (part, _), g_part = value_and_grad(phycharm.make_loss(model, active))
    assert np.isfinite(float(part))
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g_part))
    with pytest.raises(ValueError, match="w_typo"):
        phycharm.make_loss(model, ("w_harm", "w_typo"))


def test_histogram_weight_follows_the_per_site_maps():
    """``train.w_hist`` where per-site output maps follow the network (traveling-subject pairs
    with ``calibrate=sites``), ``train.w_hist_no_maps`` everywhere else; the other weights as
    configured; a negative or non-numeric weight is an error naming its key."""
    train = conftest.load_config("phycharm").train
    train.w_hist, train.w_hist_no_maps = 0.0, 2.0
    maps = phycharm.resolve_loss_weights(train, "paired", "sites")
    assert maps["w_hist"] == 0.0 and "w_hist" not in phycharm.active_terms(maps)
    assert {k: v for k, v in maps.items() if k != "w_hist"} == {
        k: float(train[k]) for k in phycharm.WEIGHTS if k != "w_hist"}
    for pairs, calibrate in (("simulated", "sites"), ("simulated", "none"), ("paired", "none"),
                             ("paired", "p99")):
        w = phycharm.resolve_loss_weights(train, pairs, calibrate)
        assert w["w_hist"] == 2.0 and "w_hist" in phycharm.active_terms(w), (pairs, calibrate)
    train.w_hist_no_maps = -1.0
    with pytest.raises(InputError, match=r"config\.train\.w_hist_no_maps"):
        phycharm.resolve_loss_weights(train, "simulated", "none")
    train.w_hist_no_maps, train.w_ssim = 2.0, float("nan")
    with pytest.raises(InputError, match=r"config\.train\.w_ssim"):
        phycharm.resolve_loss_weights(train, "paired", "sites")
