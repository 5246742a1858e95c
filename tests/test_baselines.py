"""Nyúl, WhiteStripe and ComBat against constructed cases with hand-computable answers.

Oracles: analytic percentiles of a constructed (uniform / squared-uniform) histogram for Nyúl;
a three-class Gaussian mixture with a known white-matter mode and affine equivariance for
WhiteStripe; neuroCombat's own output on its training data, the closed form of
location/scale ComBat without empirical Bayes, and an injected site shift for ComBat.
"""

import numpy as np
import pytest

from phyjax.baselines import BASELINES, ComBat, NyulStandardization, WhiteStripe

# ----------------------------------------------------------------------------- Nyúl

N = 10001   # np.linspace(0, 1, N): the p-th percentile is exactly p / 100


def _uniform(a=1.0, b=0.0, power=1):
    u = np.linspace(0.0, 1.0, N) ** power
    return (a * u + b).reshape(N, 1, 1), np.ones((N, 1, 1), bool)


def test_nyul_standard_scale_on_constructed_histograms():
    (i1, m1), (i2, m2) = _uniform(2.0, 1.0), _uniform(4.0, 3.0)
    nyul = NyulStandardization(min_percentile=1, max_percentile=99, step=10).fit([i1, i2], [m1, m2])
    p = np.array([1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99], float)
    np.testing.assert_allclose(nyul.percentiles_, p)
    # Each image is linear in U, so its mapped landmarks lie on the line through
    # (p_min, s1), (p_max, s2) with s1, s2 the mean 1st/99th percentiles: s(p) = 3 p/100 + 2.
    np.testing.assert_allclose(nyul.standard_scale_, 3.0 * p / 100 + 2.0, rtol=1e-6)
    np.testing.assert_allclose(nyul.landmarks(i1, m1), 2.0 * p / 100 + 1.0, rtol=1e-9)
    # A new linear image is mapped exactly onto the standard line.
    test, mt = _uniform(7.0, -2.0)
    out = nyul(test, mt)
    np.testing.assert_allclose(out.ravel(), 3.0 * np.linspace(0, 1, N) + 2.0, rtol=1e-5, atol=1e-5)
    # A non-linear histogram (U^2): its landmarks land on the standard scale.
    curved, mc = _uniform(5.0, 0.0, power=2)
    np.testing.assert_allclose(nyul.landmarks(nyul(curved, mc), mc), nyul.standard_scale_,
                               rtol=1e-5)


def test_nyul_bad_input():
    img, m = _uniform()
    with pytest.raises(RuntimeError, match="fit"):
        NyulStandardization()(img, m)
    nyul = NyulStandardization().fit([img], [m])
    with pytest.raises(ValueError, match="shape mismatch"):
        nyul(img, m[:-1])
    with pytest.raises(ValueError, match="empty mask"):
        nyul(img, np.zeros_like(m))
    with pytest.raises(ValueError, match="constant"):
        NyulStandardization().fit([np.ones_like(img)], [m])
    with pytest.raises(ValueError, match="repeated"):
        nyul(np.round(img), m)   # two distinct values: landmarks collide
    with pytest.raises(ValueError):
        NyulStandardization(min_percentile=20, step=10)


# ----------------------------------------------------------------------------- WhiteStripe

def _three_class(n=(4000, 8000, 12000), means=(0.25, 0.55, 0.85), sd=0.03, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(k, i) for i, k in enumerate(n)])
    values = np.concatenate([rng.normal(mu, sd, k) for mu, k in zip(means, n)])
    shape = (len(values) // 40, 40, 1)
    return values.reshape(shape), labels.reshape(shape), np.ones(shape, bool)


def test_whitestripe_finds_white_matter_and_is_affine_invariant():
    img, labels, mask = _three_class()
    ws = WhiteStripe(width=0.05)
    mean, sd, stripe = ws.stripe(img, mask)
    assert mean == pytest.approx(0.85, abs=0.01)          # the last (WM) mode
    assert np.mean(labels[stripe] == 2) > 0.99            # the stripe is white matter
    assert stripe.sum() == pytest.approx(0.10 * img.size, rel=0.05)  # +-5 % quantiles
    assert sd < 0.03                                      # a narrow slice of the WM peak
    ref_img = 2.0 * img + 0.1
    ws.fit([ref_img], [mask])
    out = ws(img, mask)
    np.testing.assert_allclose(ws(3.0 * img + 5.0, mask), out, rtol=1e-4, atol=1e-4)
    # The source's white matter lands on the reference's white matter.
    assert out[labels == 2].mean() == pytest.approx(ref_img[labels == 2].mean(), rel=0.01)


def test_whitestripe_bad_input():
    img, _, mask = _three_class(n=(400, 400, 400))
    with pytest.raises(RuntimeError, match="fit"):
        WhiteStripe()(img, mask)
    with pytest.raises(ValueError, match="empty mask"):
        WhiteStripe().stripe(img, np.zeros_like(mask))
    with pytest.raises(ValueError, match="distinct"):
        WhiteStripe().stripe(np.ones_like(img), mask)
    with pytest.raises(ValueError, match="width"):
        WhiteStripe(width=0.7)


def test_registered_image_baselines_zero_outside_mask():
    img, _, mask = _three_class(n=(400, 400, 400))
    mask = mask.copy()
    mask[:3] = False
    for name in ("nyul", "whitestripe"):
        out = BASELINES[name]().fit([img], [mask])(img, mask)
        assert out.shape == img.shape and np.all(out[~mask] == 0) and np.isfinite(out).all()


# ----------------------------------------------------------------------------- ComBat

SITES = ("a", "b", "c")


def _features(n_subjects=30, seed=0, shift=(0.0, 3.0, -2.0), scale=(1.0, 2.0, 0.5)):
    """Subject effects shared across sites + an injected additive/multiplicative site effect."""
    rng = np.random.default_rng(seed)
    anatomy = rng.standard_normal((n_subjects, 5)) * [1, 2, 3, 4, 5] + [10, 0, -5, 2, 1]
    x, sites, subjects = [], [], []
    for s in range(n_subjects):
        for k, site in enumerate(SITES):
            x.append((anatomy[s] - anatomy.mean(0)) * scale[k] + anatomy.mean(0) + shift[k]
                     + 0.1 * rng.standard_normal(5))
            sites.append(site)
            subjects.append(s)
    return np.array(x), np.array(sites), np.array(subjects)


def test_combat_port_reproduces_neurocombat_on_training_data():
    x, sites, _ = _features()
    for eb in (True, False):
        c = ComBat(eb=eb).fit(x, sites)
        np.testing.assert_allclose(c.transform(x, sites), c.training_output_, rtol=1e-10,
                                   atol=1e-10)


def test_combat_without_eb_equals_closed_form_location_scale():
    x, sites, _ = _features(n_subjects=12)
    out = ComBat(eb=False).fit(x, sites).transform(x, sites)
    # Closed form (no covariates): grand mean and pooled residual variance (over all samples).
    grand = x.mean(0)
    resid = np.concatenate([x[sites == s] - x[sites == s].mean(0) for s in SITES])
    pooled = (resid ** 2).mean(0)
    for s in SITES:
        np.testing.assert_allclose(out[sites == s].mean(0), grand, rtol=1e-9)
        np.testing.assert_allclose(out[sites == s].var(0, ddof=1), pooled, rtol=1e-9)


def test_combat_removes_injected_site_shift_on_held_out_subjects():
    x, sites, subjects = _features(n_subjects=40)
    train, test = subjects < 30, subjects >= 30
    c = ComBat().fit(x[train], sites[train])
    before = np.ptp([x[test][sites[test] == s].mean(0) for s in SITES], axis=0)
    y = c.transform(x[test], sites[test])
    after = np.ptp([y[sites[test] == s].mean(0) for s in SITES], axis=0)
    assert np.all(after < 0.2 * before)
    # Mapped into site "a": the held-out subjects' features at every site match site "a".
    z = c.transform(x[test], sites[test], to_site="a")
    np.testing.assert_allclose(z[sites[test] == "a"], x[test][sites[test] == "a"], atol=1e-9)
    err_before = np.abs(x[test][sites[test] == "b"] - x[test][sites[test] == "a"]).mean()
    err_after = np.abs(z[sites[test] == "b"] - x[test][sites[test] == "a"]).mean()
    assert err_after < 0.2 * err_before


def test_combat_bad_input_and_constant_features():
    x, sites, subjects = _features(n_subjects=6)
    x = np.c_[x, np.full(len(x), 7.0)]        # a constant feature passes through unchanged
    c = ComBat().fit(x, sites)
    assert np.all(c.transform(x, sites)[:, -1] == 7.0)
    one = (sites != "c") | (subjects == 0)    # site "c" with a single subject
    with pytest.raises(ValueError, match=r"at least 2 training samples per site.*'c' \(1\)"):
        ComBat().fit(x[one], sites[one])
    with pytest.raises(ValueError, match="at least 2 sites"):
        ComBat().fit(x[sites == "a"], sites[sites == "a"])
    with pytest.raises(ValueError, match="not in the ComBat training data"):
        c.transform(x[:2], ["a", "z"])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="nan"):
        ComBat().fit(bad, sites)
    with pytest.raises(ValueError, match="site labels"):
        ComBat().fit(x, sites[:-1])
    with pytest.raises(RuntimeError, match="fit"):
        ComBat().transform(x, sites)
