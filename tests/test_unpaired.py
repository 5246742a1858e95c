"""Unpaired measures (phyjax.evaluate.unpaired) on cases with known answers and against
independent implementations."""

import numpy as np
import pytest
from scipy import ndimage, stats

from phyjax.evaluate import downstream, unpaired


def test_identical_sites_are_zero_apart_and_shifted_ones_are_not():
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    assert unpaired.site_distance({"x": a, "y": a.copy()})["mean"] == 0.0
    # Equal-size samples: W1 is the mean absolute difference of the sorted values.
    b = a + 1.0
    within_sd = np.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)   # equal sizes
    expected = np.mean(np.abs(np.sort(a) - np.sort(b))) / within_sd
    d = unpaired.site_distance({"x": a, "y": b})
    assert d["mean"] == pytest.approx(expected, rel=1e-12) and d["pairs"]["x|y"] == d["mean"]
    # ... and it does not depend on the units of the method's output.
    assert unpaired.site_distance({"x": 7 * a, "y": 7 * b})["mean"] == pytest.approx(d["mean"])
    # A shift of 6 within-site SDs scores 6 (the SD of the pooled sample, which grows with the
    # shift itself, would give 6 / sqrt(1 + 9) = 1.9) and halving it halves the distance.
    far = unpaired.site_distance({"x": a, "y": a + 6 * a.std(ddof=1)})["mean"]
    assert far == pytest.approx(6.0, rel=1e-9)
    half = unpaired.site_distance({"x": a, "y": a + 3 * a.std(ddof=1)})["mean"]
    assert half == pytest.approx(far / 2, rel=1e-9)
    # Unequal sizes and three sites: the (n_i - 1)-weighted within-site variance.
    c = 2.0 * rng.normal(size=50) - 1.0
    groups = [a, b, c]
    dof = sum(len(g) - 1 for g in groups)
    sd = np.sqrt(sum(np.var(g, ddof=1) * (len(g) - 1) for g in groups) / dof)
    assert unpaired.within_site_sd(groups) == pytest.approx(sd, rel=1e-12)
    three = unpaired.site_distance({"x": a, "y": b, "z": c})
    assert three["pairs"]["x|z"] == pytest.approx(stats.wasserstein_distance(a, c) / sd)
    # No spread within any site: sites that differ are infinitely far apart, equal ones 0.
    assert unpaired.site_distance({"x": np.ones(3), "y": 2 * np.ones(3)})["mean"] == np.inf
    assert unpaired.site_distance({"x": np.ones(3), "y": np.ones(3)})["mean"] == 0.0
    assert np.isnan(unpaired.site_distance({"x": np.ones(1), "y": np.zeros(1)})["mean"])


def test_feature_distance_and_effect_sizes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    sites = np.repeat(["a", "b", "c"], 20)
    x_same = x.copy()
    x[:, 0] += np.repeat([0.0, 3.0, 6.0], 20)     # feature 0 carries the site
    eps = unpaired.effect_sizes(["f0", "f1", "f2"], x, sites)
    assert eps["f0"] > 0.8 and eps["f1"] < 0.1 and eps["f2"] < 0.1
    # Perfect separation by site: H = n - 1 - ... ; epsilon^2 with distinct ordered blocks:
    ordered = np.arange(60.0)[:, None]
    h_max = unpaired.effect_sizes(["o"], ordered, sites)["o"]
    n, k = 60, 3
    h = 12 / (n * (n + 1)) * sum(20 * (np.mean(np.arange(1, 61)[i * 20:(i + 1) * 20])) ** 2
                                 for i in range(k)) - 3 * (n + 1)
    assert h_max == pytest.approx(h / (n - 1), rel=1e-12)
    # ... which is the closed-form maximum (N^3 - sum n_i^3) / (N^3 - N), about 1 - 1/k^2.
    assert h_max == pytest.approx((n ** 3 - k * 20 ** 3) / (n ** 3 - n), rel=1e-12)
    assert h_max < 1 - 1 / k ** 2 + 0.01
    assert unpaired.feature_distance(x, sites) > unpaired.feature_distance(x_same, sites)


def test_anatomy_preservation_rewards_monotone_maps_and_catches_erasure():
    rng = np.random.default_rng(2)
    img = ndimage.gaussian_filter(rng.random((20, 20, 12)), 1.5)
    mask = np.ones(img.shape, bool)
    mask[:2] = False
    same = unpaired.anatomy_preservation(3 * img ** 2 + 1, img, mask)   # monotone in-ROI map
    assert same["rank_corr"] == pytest.approx(1.0)
    assert same["edge_corr"] > 0.9
    affine = unpaired.anatomy_preservation(np.where(mask, 2.5 * img - 0.7, 0), img, mask)
    assert affine["edge_corr"] == pytest.approx(1.0, abs=1e-12)      # z-score-like maps keep edges
    erased = unpaired.anatomy_preservation(np.full(img.shape, 0.5), img, mask)
    assert erased == {"rank_corr": 0.0, "edge_corr": 0.0}
    scrambled = unpaired.anatomy_preservation(rng.permutation(img.ravel()).reshape(img.shape),
                                              img, mask)
    assert abs(scrambled["rank_corr"]) < 0.1 and abs(scrambled["edge_corr"]) < 0.2


def test_embedding_separates_separated_sites():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    x[20:] += 5.0
    e = unpaired.embedding(x)
    assert e.shape == (40, 2)
    assert abs(e[:20, 0].mean() - e[20:, 0].mean()) > 3 * e[:, 1].std()


def test_site_classifier_on_unpaired_data_chance_for_identical_sites():
    """One image per subject: identical sites give chance-level accuracy and a large p-value
    (the permutation test must permute across subjects); separated sites a small one."""
    from phyjax.evaluate.site_difference import site_classifier

    sites = np.tile(["a", "b"], 20)
    subjects = [f"s{i}" for i in range(40)]
    accuracy, p = [], []
    for seed in range(10):               # identical sites: pure noise features
        x = np.random.default_rng(seed).normal(size=(40, 4))
        r = site_classifier(x, sites, subjects, n_splits=5, n_permutations=49, seed=0)
        accuracy.append(r["accuracy"])
        p.append(r["p_value"])
    assert r["chance"] == 0.5 and abs(np.mean(accuracy) - 0.5) < 0.08
    assert sum(v <= 0.05 for v in p) <= 2 and np.mean(p) > 0.25   # p-values spread, not stuck
    x[sites == "b"] += 2.0
    apart = site_classifier(x, sites, subjects, n_splits=5, n_permutations=49, seed=0)
    assert apart["accuracy"] > 0.9 and apart["p_value"] <= 0.05


def test_icc_reproduces_shrout_and_fleiss():
    """Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; their Table 4 gives ICC(1,1) = .17,
    ICC(2,1) = .29, ICC(3,1) = .71."""
    table = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9],
                      [6, 2, 4, 7]], float)
    r = unpaired.icc(table)
    assert (round(r["icc1"], 2), round(r["icc21"], 2), round(r["icc31"], 2)) == (0.17, 0.29, 0.71)
    same = np.repeat(np.arange(5.0)[:, None], 3, axis=1)        # every rater agrees exactly
    assert unpaired.icc(same) == {"icc1": 1.0, "icc21": 1.0, "icc31": 1.0}
    shifted = same + np.array([0.0, 10.0, 20.0])                  # consistent, not in agreement
    r = unpaired.icc(shifted)
    assert r["icc31"] == pytest.approx(1.0) and r["icc21"] < 0.2


def test_location_scale_measures_what_combat_removes():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 4))
    sites = np.repeat(["ref", "b", "c"], 20)
    same = unpaired.location_scale(base, sites, "ref")
    assert same["location"] < 0.5 and same["log_scale"] < 0.4
    shifted = base.copy()
    shifted[sites == "b"] = 3.0 * shifted[sites == "b"] + 4.0     # site b: scale 3, shift 4
    r = unpaired.location_scale(shifted, sites, "ref")
    assert r["location"] > same["location"] + 0.5
    # Site b's spread is 3x the reference's: |log 3| = 1.10 for b, ~0 for c; the median of
    # the 8 (feature, site) values lies between.
    per_b = unpaired.location_scale(shifted[sites != "c"], sites[sites != "c"], "ref")
    assert per_b["log_scale"] == pytest.approx(np.log(3.0), abs=0.35)
    # The location is in within-site SDs (Cohen's d): a shift of 5 SDs reads about 5, where
    # SDs of the pooled sample (grown by the shift) would read about 2.
    moved = base.copy()
    moved[sites == "b"] += 5.0
    d = unpaired.location_scale(moved[sites != "c"], sites[sites != "c"], "ref")["location"]
    assert d == pytest.approx(5.0, abs=0.5)


def test_biology_kept_when_a_method_keeps_the_covariate_and_lost_when_it_erases_it():
    rng = np.random.default_rng(6)
    age = rng.uniform(20, 80, size=30)
    x = rng.normal(size=(30, 12))
    x[:, :3] += 0.3 * age[:, None]                 # three features carry the covariate
    assert unpaired.covariate_strength(x, age)[:3].min() > 0.8
    kept = unpaired.biology_kept(x, 2.0 * x + 1.0, age, top=3)          # a monotone map
    assert kept["kept"] == pytest.approx(1.0)
    erased = x.copy()
    erased[:, :3] = 5.0                            # those features made equal for everyone
    assert unpaired.biology_kept(x, erased, age, top=3)["kept"] == 0.0
    sex = np.where(age > 50, "F", "M")             # categorical: epsilon squared
    assert unpaired.covariate_strength(x, sex)[:3].min() > 0.3
    assert np.isnan(unpaired.covariate_strength(x, np.ones(30))).all()


# ----------------------------------------------------------------------------- downstream task

def _blob_scans(n_per_site, sites, seed=0, core=1.0, rim=0.3, noise=0.05):
    """Tiny ``(12, 12, 8)`` scans with a box ROI whose core is ``core`` and rim ``rim`` bright
    (plus noise), 2 mm voxels; returns images, masks, site per scan."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((12, 12, 8), bool)
    mask[2:10, 2:10, 1:7] = True
    images, masks, labels = [], [], []
    for site in sites:
        for _ in range(n_per_site):
            c, r = downstream.core_and_rim(mask, (2.0, 2.0, 2.0), 2.0)
            img = np.where(c, core, np.where(r, rim, 0.0)) + noise * rng.random(mask.shape)
            images.append(np.where(mask, img, 0.0).astype(np.float32))
            masks.append(mask)
            labels.append(site)
    return images, masks, labels


def test_core_and_rim_follow_world_distances():
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True                       # a 7-voxel cube
    core, rim = downstream.core_and_rim(mask, (1.0, 1.0, 1.0), 1.0)
    assert not (core & rim).any() and ((core | rim) == mask).all()
    assert core.sum() == 5 ** 3                      # one boundary layer of 1 mm voxels
    core2, _ = downstream.core_and_rim(mask, (2.0, 2.0, 2.0), 3.0)
    assert core2.sum() == 5 ** 3                     # 2 mm voxels: 3 mm reaches one layer
    core3, _ = downstream.core_and_rim(mask, (1.0, 1.0, 1.0), 2.0)
    assert core3.sum() == 3 ** 3
    # 3 mm slices: a boundary slice's centre lies 3 mm from the outside (EDT between centres),
    # so a 2 mm rim takes two in-plane layers and no slice, a 3 mm rim three layers and one.
    aniso, _ = downstream.core_and_rim(mask, (1.0, 1.0, 3.0), 2.0)
    assert aniso.sum() == 3 * 3 * 7
    aniso, _ = downstream.core_and_rim(mask, (1.0, 1.0, 3.0), 3.0)
    assert aniso.sum() == 1 * 1 * 5 and aniso[4, 4, 2] and not aniso[4, 4, 1]
    edge = np.ones((4, 4, 4), bool)                  # an ROI filling the array: edge = boundary
    assert downstream.core_and_rim(edge, (1.0, 1.0, 1.0), 1.0)[0].sum() == 2 ** 3


def test_leave_one_site_out_known_answers():
    rng = np.random.default_rng(0)
    sites = np.repeat(["a", "b", "c"], 20)
    y = np.tile([0, 1], 30)
    x = rng.normal(size=(60, 3))
    x[:, 0] += 4.0 * y                               # class carried by feature 0
    res = downstream.leave_one_site_out(x, y, sites)
    assert [r["site"] for r in res] == ["a", "b", "c"]
    assert all(r["auc"] > 0.97 and r["accuracy"] > 0.9 and r["chance"] == 0.5 for r in res)
    # A site-specific offset larger than the class difference: the ranking within the test site
    # survives (AUC), the threshold learnt on the other sites does not (accuracy).
    shifted = x.copy()
    shifted[sites == "c", 0] += 12.0
    c = downstream.leave_one_site_out(shifted, y, sites)[2]
    assert c["auc"] > 0.97 and c["accuracy"] == pytest.approx(0.5)
    # The same affine map of every feature at every site changes nothing (standardization).
    same = downstream.leave_one_site_out(3.0 * x - 7.0, y, sites)
    for r, s in zip(res, same):
        assert (r["accuracy"], r["auc"]) == pytest.approx((s["accuracy"], s["auc"]))
    # Pure noise: chance-level AUC on average; constant features: exactly 0.5.
    noise = [downstream.mean_over_sites(downstream.leave_one_site_out(
        np.random.default_rng(k).normal(size=(60, 3)), y, sites), "auc") for k in range(10)]
    assert abs(np.mean(noise) - 0.5) < 0.07
    flat = downstream.leave_one_site_out(np.ones((60, 3)), y, sites)
    assert all(r["auc"] == 0.5 and r["accuracy"] == 0.5 for r in flat)
    # Test site a: its training part (b, c) has one class only, no classifier (nan); b: one
    # class in the test site, an accuracy but no AUC.
    one = downstream.leave_one_site_out(x, np.where(sites == "a", 1, 0), sites)
    assert np.isnan(one[0]["accuracy"]) and np.isnan(one[0]["auc"])
    assert np.isfinite(one[1]["accuracy"]) and np.isnan(one[1]["auc"])


def test_core_vs_rim_task_on_images():
    """Through the benchmark's feature extractor: a strong core/rim contrast is told apart in
    every fold; the same scans after a method returning a constant image are at chance; an
    identity method changes nothing."""
    from phyjax.evaluate.site_difference import FeatureExtractor

    ext = FeatureExtractor(batch_size=4)
    images, masks, sites = _blob_scans(3, ["a", "b", "c"])
    regions = downstream.regions(masks, [(2.0, 2.0, 2.0)] * len(masks), 2.0)
    names, x, labels, scan = downstream.region_features(ext, images, regions)
    assert x.shape == (2 * len(images), len(names)) and "firstorder_Mean" in names
    assert not set(names) & set(downstream.SIZE_DEPENDENT)
    assert (labels[::2] == downstream.CORE).all() and (scan[::2] == np.arange(len(images))).all()
    site_of = np.asarray(sites)[scan]
    res = downstream.leave_one_site_out(x, labels, site_of)
    assert all(r["auc"] == 1.0 and r["accuracy"] == 1.0 for r in res)
    again = downstream.leave_one_site_out(
        downstream.region_features(ext, [im.copy() for im in images], regions)[1], labels,
        site_of)
    assert again == res
    flat = [np.where(m, 0.5, 0.0).astype(np.float32) for m in masks]
    _, xf, _, _ = downstream.region_features(ext, flat, regions)
    res = downstream.leave_one_site_out(xf, labels, site_of)
    assert all(r["auc"] == 0.5 and r["accuracy"] == 0.5 for r in res)
    # An ROI too thin for a core is left out of the task.
    thin = np.zeros((12, 12, 8), bool)
    thin[2:10, 2:10, 3] = True
    assert downstream.regions([thin], [(2.0, 2.0, 2.0)], 2.0) == [None]


def test_covariate_transfer_regresses_numbers_and_classifies_labels():
    rng = np.random.default_rng(1)
    sites = np.repeat(["a", "b", "c"], 15)
    age = rng.uniform(20, 80, size=45)
    x = rng.normal(size=(45, 4))
    x[:, 0] = 0.1 * age + 0.05 * rng.normal(size=45)
    res = downstream.covariate_transfer(x, age, sites)
    assert all(r["kind"] == "numeric" and r["mae"] < 0.2 * r["chance_mae"] for r in res)
    sex = np.where(age > 50, "F", "M")
    res = downstream.covariate_transfer(x, sex, sites)
    assert all(r["kind"] == "categorical" and r["auc"] > 0.9 for r in res)
    coded = downstream.covariate_transfer(x, (age > 50).astype(float), sites)   # 0/1: a category
    assert all(r["kind"] == "categorical" for r in coded)
    lost = downstream.covariate_transfer(np.ones((45, 4)), age, sites)          # erased
    assert all(r["mae"] == r["chance_mae"] for r in lost)
    far = x.copy()
    far[sites == "c"] += 1e3                     # a site effect far beyond the training range:
    c = downstream.covariate_transfer(far, age, sites)[2]   # predictions clipped to it
    train_age, test_age = age[sites != "c"], age[sites == "c"]
    bound = np.maximum(np.abs(test_age - train_age.min()), np.abs(test_age - train_age.max()))
    assert c["mae"] <= bound.mean() + 1e-9 and c["mae"] > 2 * c["chance_mae"]
