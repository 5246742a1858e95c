"""Image metrics against scikit-image, and loss/baseline properties."""

import numpy as np
import pytest
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from phyjax.baselines import HistogramMatching, NoHarmonization, ZScore
from phyjax.evaluate import metrics
from phyjax.losses import physics_consistency, ssim_loss


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ref = rng.random((20, 24, 18)).astype(np.float64)
    x = ref + 0.1 * rng.standard_normal(ref.shape)
    return x, ref


@pytest.mark.parametrize("ndim", [2, 3])
def test_ssim_map_matches_skimage(pair, ndim):
    x, ref = pair
    if ndim == 2:
        x, ref = x[..., 5], ref[..., 5]
    rng_ = float(ref.max() - ref.min())
    mssim, full = structural_similarity(x, ref, data_range=rng_, full=True)
    ours = np.asarray(metrics.ssim_map(x.astype(np.float32), ref.astype(np.float32), rng_))
    np.testing.assert_allclose(ours, full, atol=2e-4)
    pad = 3
    crop = tuple(slice(pad, -pad) for _ in range(ndim))
    assert abs(ours[crop].mean() - mssim) < 1e-4


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_float32_ssim_keeps_its_accuracy_far_from_zero(pair, offset):
    """Images in raw units: float32 local variances must not cancel away (skimage in float64
    is the oracle; a running-sum filter of E[x^2] - E[x]^2 missed by up to 10^3 here)."""
    x, ref = pair
    x, ref = x + offset, ref + offset
    _, full = structural_similarity(x, ref, data_range=1.0, full=True)
    ours = np.asarray(metrics.ssim_map(x.astype(np.float32), ref.astype(np.float32), 1.0))
    np.testing.assert_allclose(ours, full, atol=2e-5 * offset / 100)


def test_masked_metrics_match_skimage_on_mask_voxels(pair):
    x, ref = pair
    mask = np.zeros(ref.shape, bool)
    mask[4:15, 3:20, 2:16] = True
    rng_ = float(ref[mask].max() - ref[mask].min())
    ours = metrics.image_metrics(x, ref, mask)
    assert ours["psnr"] == pytest.approx(
        peak_signal_noise_ratio(ref[mask], x[mask], data_range=rng_), rel=1e-4)
    assert ours["nrmse"] == pytest.approx(normalized_root_mse(ref[mask], x[mask]), rel=1e-4)
    # SSIM compares the images with everything outside the mask set to zero.
    _, full = structural_similarity(np.where(mask, x, 0), np.where(mask, ref, 0),
                                    data_range=rng_, full=True)
    assert ours["ssim"] == pytest.approx(full[mask].mean(), abs=2e-4)


def test_output_equal_to_reference_in_mask_is_perfect(pair):
    """Harmonizers zero the background; an output equal to the truth in the brain scores 1."""
    _, ref = pair
    mask = np.zeros(ref.shape, bool)
    mask[4:15, 3:20, 2:16] = True
    m = metrics.image_metrics(np.where(mask, ref, 0), ref + 5.0 * ~mask, mask)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["nrmse"] == pytest.approx(0.0, abs=1e-6)


def test_identical_images_are_perfect(pair):
    _, ref = pair
    mask = np.ones(ref.shape, bool)
    m = metrics.image_metrics(ref, ref, mask)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["nrmse"] == pytest.approx(0.0, abs=1e-6)
    assert np.isinf(m["psnr"])


def test_metrics_reject_bad_input(pair):
    x, ref = pair
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.image_metrics(x[:-1], ref, np.ones(ref.shape, bool))
    with pytest.raises(ValueError, match="empty mask"):
        metrics.image_metrics(x, ref, np.zeros(ref.shape, bool))


def test_physics_consistency_is_gain_invariant():
    rng = np.random.default_rng(1)
    s = rng.random((2, 8, 8, 1)).astype(np.float32)
    mask = np.ones_like(s)
    assert float(physics_consistency(s, 3.7 * s, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(physics_consistency(s, s + 0.5 * rng.random(s.shape), mask)) > 0.01


def test_ssim_loss_zero_for_identical_and_positive_otherwise():
    rng = np.random.default_rng(2)
    x = rng.random((2, 16, 16, 1)).astype(np.float32)
    mask = np.ones_like(x)
    assert float(ssim_loss(x, x, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(ssim_loss(x, np.flip(x, 1), mask)) > 0.1


def _volumes(seed, scale, offset):
    rng = np.random.default_rng(seed)
    img = np.abs(scale * rng.standard_normal((10, 10, 10)) + offset).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    return img, mask


def _fit_and_apply(method):
    """Fit ``method`` on 3 target volumes; apply it to a differently scaled source.

    Returns (pooled target ROI values, source, mask, harmonized source)."""
    targets = [_volumes(s, 0.2, 1.0) for s in range(3)]
    fitted = method.fit([t[0] for t in targets], [t[1] for t in targets])
    pooled = np.concatenate([t[0][t[1]] for t in targets])
    src, mask = _volumes(9, 3.0, 10.0)
    return pooled, src, mask, fitted(src, mask)


def test_zscore_maps_moments_onto_training_target():
    pooled, src, mask, out = _fit_and_apply(ZScore())
    assert out[mask].mean() == pytest.approx(pooled.mean(), rel=1e-5)
    assert out[mask].std() == pytest.approx(pooled.std(), rel=1e-4)
    assert np.all(out[~mask] == 0)


def test_histogram_matching_matches_quantiles_and_none_is_identity():
    pooled, src, mask, out = _fit_and_apply(HistogramMatching())
    q = np.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(np.quantile(out[mask], q), np.quantile(pooled, q), rtol=0.03)
    assert np.array_equal(NoHarmonization()(src, mask)[mask], src[mask])
