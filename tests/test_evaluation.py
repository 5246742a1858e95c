"""Evaluation metrics against hand-computed cases and independent implementations.

Oracles: scikit-learn's classification metrics (Dice/F1, IoU/Jaccard, precision, recall),
hand-counted voxels, scipy's coefficient of variation and Student-t interval, a synthetic
three-tissue phantom with known volumes (segmenter), PyRadiomics (radiomic features).
"""

import math
import os

import numpy as np
import pytest
from scipy import stats

from phyjax.evaluate import report
from phyjax.evaluate.overlap import (
    binary_overlap,
    coefficient_of_variation,
    tissue_intensity_ratios,
    tissue_overlap,
    tissue_volumes,
    volume_differences,
)
from phyjax.evaluate.segmentation import (
    AtroposSegmenter,
    TissueSegmenter,
    make_segmenter,
    rescale_for_segmentation,
)
from phyjax.evaluate.site_difference import (
    FeatureExtractor,
    radiomic_relative_error,
    site_classifier,
    site_difference,
    site_features,
    t_interval,
)

# ----------------------------------------------------------------------------- overlap

def test_binary_overlap_hand_counted():
    pred = np.zeros((4, 4, 2), bool)
    ref = np.zeros((4, 4, 2), bool)
    pred[0, :3, 0] = pred[1, :3, 0] = True        # 6 voxels
    ref[0, :2, 0] = ref[1, 0, 0] = ref[3, 3, 1] = True  # 4 voxels, 3 shared
    m = binary_overlap(pred, ref)                 # TP 3, FP 3, FN 1
    assert m["dice"] == pytest.approx(6 / 10)
    assert m["f1"] == pytest.approx(6 / 10)
    assert m["iou"] == pytest.approx(3 / 7)
    assert m["precision"] == pytest.approx(3 / 6)
    assert m["recall"] == pytest.approx(3 / 4)


def test_binary_overlap_matches_sklearn():
    from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    for p in (0.1, 0.5, 0.8):
        pred = rng.random((9, 8, 7)) < p
        ref = rng.random((9, 8, 7)) < 0.4
        m = binary_overlap(pred, ref)
        a, b = ref.ravel(), pred.ravel()
        assert m["dice"] == pytest.approx(f1_score(a, b))
        assert m["f1"] == pytest.approx(f1_score(a, b))
        assert m["iou"] == pytest.approx(jaccard_score(a, b))
        assert m["precision"] == pytest.approx(precision_score(a, b))
        assert m["recall"] == pytest.approx(recall_score(a, b))


def test_undefined_ratios_are_nan_and_bad_input_raises():
    ref = np.zeros((3, 3, 3), bool)
    ref[1, 1, 1] = True
    empty = np.zeros_like(ref)
    m = binary_overlap(empty, ref)        # nothing predicted
    assert np.isnan(m["precision"]) and m["recall"] == 0 and m["dice"] == 0
    m = binary_overlap(empty, empty)      # tissue absent everywhere
    assert all(np.isnan(v) for v in m.values())
    with pytest.raises(ValueError, match="shape mismatch"):
        binary_overlap(ref, ref[:2])
    labels = ref.astype(np.int8) * 2
    with pytest.raises(ValueError, match="empty mask"):
        tissue_overlap(labels, labels, mask=empty)
    with pytest.raises(ValueError, match="shape mismatch"):
        tissue_overlap(labels, labels, mask=ref[:2])


def test_tissue_overlap_per_label_and_mask():
    ref = np.array([[[1, 1, 2, 2, 3, 3, 0]]])
    pred = np.array([[[1, 2, 2, 2, 3, 1, 3]]])
    m = tissue_overlap(pred, ref)
    assert m["dice_csf"] == pytest.approx(2 * 1 / (2 + 2))    # TP1 FP1 FN1
    assert m["dice_gm"] == pytest.approx(2 * 2 / (4 + 1))     # TP2 FP1 FN0
    assert m["recall_wm"] == pytest.approx(1 / 2)
    assert m["precision_wm"] == pytest.approx(1 / 2)          # the voxel outside the brain
    m = tissue_overlap(pred, ref, mask=ref > 0)               # ... is excluded by the mask
    assert m["precision_wm"] == pytest.approx(1.0)


def test_volumes_differences_and_cov_known_numbers():
    labels = np.zeros((10, 10, 10), np.int8)
    labels[:2] = 1      # 200 voxels
    labels[2:5] = 2     # 300
    labels[5:9] = 3     # 400
    v = tissue_volumes(labels, voxel_volume_mm3=8.0)
    assert v == {"csf": 1.6, "gm": 2.4, "wm": 3.2}
    d = volume_differences({"csf": 1.0, "gm": 3.0, "wm": 3.2}, v)
    assert d["vol_absdiff_csf"] == pytest.approx(0.6)
    assert d["vol_reldiff_csf"] == pytest.approx(37.5)
    assert d["vol_reldiff_gm"] == pytest.approx(25.0)
    assert d["vol_absdiff_wm"] == 0
    assert coefficient_of_variation([1, 2, 3]) == pytest.approx(0.5)
    assert coefficient_of_variation([10, 12, 14]) == pytest.approx(1 / 6)
    x = [412.0, 398.5, 405.2, 420.9]
    assert coefficient_of_variation(x) == pytest.approx(stats.variation(x, ddof=1))
    with pytest.raises(ValueError, match="at least 2"):
        coefficient_of_variation([3.0])
    with pytest.raises(ValueError, match="mean"):
        coefficient_of_variation([0.0, 0.0])
    with pytest.raises(ValueError, match="positive"):
        tissue_volumes(labels, 0.0)


def test_tissue_intensity_ratios_are_per_tissue_median_ratios():
    rng = np.random.default_rng(3)
    labels = np.zeros((12, 10, 8), np.int8)
    labels[:3], labels[3:7], labels[7:11] = 1, 2, 3
    ref = rng.uniform(0.2, 1.0, labels.shape)
    # GM 6 % too bright, WM unchanged, CSF halved: the medians' ratios, whatever the values
    img = ref * np.select([labels == 1, labels == 2], [0.5, 1.06], 1.0)
    r = tissue_intensity_ratios(img, ref, labels)
    assert r["ratio_csf"] == pytest.approx(0.5)
    assert r["ratio_gm"] == pytest.approx(1.06)
    assert r["ratio_wm"] == pytest.approx(1.0)
    # the mask restricts the voxels: a GM median computed by hand on the masked voxels only
    mask = np.zeros(labels.shape, bool)
    mask[:, :5] = True
    img2 = img.copy()
    img2[:, 5:] = 100.0                      # outside the mask: must not count
    r2 = tissue_intensity_ratios(img2, ref, labels, mask)
    sel = mask & (labels == 2)
    assert r2["ratio_gm"] == pytest.approx(np.median(img2[sel]) / np.median(ref[sel]))
    assert r2["ratio_gm"] == pytest.approx(1.06)
    assert math.isnan(tissue_intensity_ratios(img, ref, np.minimum(labels, 2))["ratio_wm"])
    with pytest.raises(ValueError, match="shape mismatch"):
        tissue_intensity_ratios(img[:-1], ref, labels)
    with pytest.raises(ValueError, match="mask"):
        tissue_intensity_ratios(img, ref, labels, mask[:-1])


# ----------------------------------------------------------------------------- segmenter

def _phantom(n=28, noise=0.04, seed=0):
    """Concentric CSF / GM / WM spheres (labels 1 / 2 / 3) with known voxel counts."""
    g = np.indices((n, n, n)) - n / 2 + 0.5
    r = np.sqrt((g ** 2).sum(0))
    truth = np.zeros((n, n, n), np.int8)
    truth[r < 12] = 1
    truth[r < 9] = 2
    truth[r < 6] = 3
    rng = np.random.default_rng(seed)
    image = np.select([truth == 1, truth == 2, truth == 3], [0.3, 0.6, 0.9], 0.0)
    return image + noise * rng.standard_normal(truth.shape), truth


SEGMENTERS = {"hmrf": lambda: TissueSegmenter(max_iter=30), "atropos": AtroposSegmenter}


@pytest.fixture(scope="module", params=sorted(SEGMENTERS))
def phantom_segmentation(request):
    image, truth = _phantom()
    seg = SEGMENTERS[request.param]()
    return image, truth, seg, seg(image, truth > 0)


def test_segmenter_recovers_known_tissue_volumes(phantom_segmentation):
    _, truth, _, labels = phantom_segmentation
    known = tissue_volumes(truth, 1.0)
    found = tissue_volumes(labels, 1.0)
    for t in known:
        assert found[t] == pytest.approx(known[t], rel=0.01), t
    m = tissue_overlap(labels, truth, truth > 0)
    assert min(m["dice_csf"], m["dice_gm"], m["dice_wm"]) > 0.98
    assert np.all(labels[truth == 0] == 0)


def test_segmenter_is_deterministic_and_intensity_scale_invariant(phantom_segmentation):
    image, truth, seg, labels = phantom_segmentation
    np.testing.assert_array_equal(seg(image, truth > 0), labels)
    np.testing.assert_array_equal(seg(3.7 * image + 12.0, truth > 0), labels)


def test_segmenter_does_not_use_dipys_unseeded_jitter(monkeypatch):
    """DIPY replaces exact zeros by unseeded noise; the wrapper never hands it a zero."""
    from dipy.segment import tissue

    image, truth = _phantom()
    seg = TissueSegmenter(max_iter=30)
    labels = seg(image, truth > 0)
    seeds = iter(range(1000))
    monkeypatch.setattr(tissue, "add_noise", lambda sig, *a, **k: sig + 0.5 * np.random.default_rng(
        next(seeds)).random(np.shape(sig)))
    np.testing.assert_array_equal(seg(image, truth > 0), labels)


def test_atropos_orders_classes_by_intensity_and_leaves_no_files(tmp_path, monkeypatch):
    """Inverted (T2-like) contrast: label 1 is still the darkest class (here the truth's WM);
    antspyx's posterior files (named by tempfile.mktemp, never deleted upstream) are removed."""
    import tempfile

    image, truth = _phantom(n=20)
    inverted = 1.2 - image
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    labels = AtroposSegmenter()(inverted, truth > 0)
    assert tempfile.tempdir == str(tmp_path)
    assert list(tmp_path.iterdir()) == []
    expected = np.select([truth == 3, truth == 2, truth == 1], [1, 2, 3], 0)
    m = tissue_overlap(labels, expected, truth > 0)
    assert min(m["dice_csf"], m["dice_gm"], m["dice_wm"]) > 0.95


def test_atropos_labels_do_not_depend_on_the_thread_count():
    """ITK runs Atropos on all cores; the constant seed makes the labels the same on one."""
    import subprocess
    import sys

    code = ("import numpy as np, sys; sys.path.insert(0, 'tests');"
            "from test_evaluation import _phantom;"
            "from phyjax.evaluate.segmentation import AtroposSegmenter;"
            "i, t = _phantom(n=20, noise=0.15, seed=3);"
            "sys.stdout.write(AtroposSegmenter()(i, t > 0).tobytes().hex())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = [subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          check=True, env={**os.environ,
                                           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n}).stdout
           for n in ("1", "2", "2")]
    assert out[0] == out[1] == out[2]
    _, truth = _phantom(n=20, noise=0.15, seed=3)
    labels = np.frombuffer(bytes.fromhex(out[0]), np.int8).reshape(truth.shape)
    assert 0.5 < np.mean(labels[truth > 0] == truth[truth > 0]) < 1.0   # noisy: not trivial


def test_make_segmenter_from_config():
    import conftest

    seg = conftest.load_config("benchmark").segmentation
    made = make_segmenter(seg)
    assert made == AtroposSegmenter(seg.mrf_smoothing, seg.mrf_radius, seg.iterations)
    seg.method = "hmrf"
    assert make_segmenter(seg) == TissueSegmenter(seg.beta, seg.max_iter, seg.tolerance)
    seg.method = "fast"
    with pytest.raises(ValueError, match="segmentation.method"):
        make_segmenter(seg)


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_segmenter_bad_input(name):
    image, truth = _phantom(n=12)
    seg = SEGMENTERS[name]()
    with pytest.raises(ValueError, match="shape mismatch"):
        seg(image, truth[:-1] > 0)
    with pytest.raises(ValueError, match="empty brain mask"):
        seg(image, np.zeros_like(truth, bool))
    with pytest.raises(ValueError, match="constant"):
        seg(np.ones_like(image), truth > 0)
    bad = image.copy()
    bad[6, 6, 6] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        seg(bad, truth > 0)
    with pytest.raises(ValueError, match="3-D"):
        rescale_for_segmentation(image[0], truth[0] > 0)


# ----------------------------------------------------------------------------- radiomics

@pytest.fixture(scope="module")
def small_volumes():
    rng = np.random.default_rng(1)
    images, masks = [], []
    for k in range(3):
        img = rng.random((14, 12, 10)) * (0.8 + 0.2 * k) + 0.1 * k
        m = np.zeros(img.shape, bool)
        m[2:12 - k, 3:10, 2:8 + k] = True
        images.append(img)
        masks.append(m)
    return images, masks


def test_features_match_pyradiomics(small_volumes):
    """The wrapper's orientation, ROI and binning agree with PyRadiomics on the same arrays."""
    radiomics = pytest.importorskip("radiomics")
    import logging

    import SimpleITK as sitk
    from radiomics import featureextractor

    radiomics.logger.setLevel(logging.ERROR)
    image, mask = small_volumes[0][0], small_volumes[1][0]
    ours = site_features(image, mask, FeatureExtractor(bin_width=0.05, batch_size=2))
    ex = featureextractor.RadiomicsFeatureExtractor(binWidth=0.05)
    ex.disableAllFeatures()
    ex.enableFeaturesByName(firstorder=[], glcm=[], glrlm=[])
    # SimpleITK arrays are (z, y, x): pass the (X, Y, Z) volume transposed, as the wrapper does.
    ref = ex.execute(sitk.GetImageFromArray(image.T), sitk.GetImageFromArray(mask.T.astype(np.uint8)))
    for name in ("firstorder_Mean", "firstorder_Variance", "firstorder_Entropy",
                 "glcm_Contrast", "glcm_Correlation", "glcm_JointEntropy",
                 "glrlm_RunEntropy", "glrlm_ShortRunEmphasis"):
        assert ours[name] == pytest.approx(float(ref[f"original_{name}"]), rel=2e-3), name


def test_feature_table_batches_consistently_and_validates(small_volumes):
    images, masks = small_volumes
    ex = FeatureExtractor(bin_width=0.05, batch_size=2)   # 3 images: one padded chunk
    canvas = ex.canvas(masks)
    names, table = ex.table(images, masks, canvas)
    assert table.shape == (3, len(names)) and np.isfinite(table).all()
    for i in range(3):
        assert table[i, names.index("firstorder_Mean")] == pytest.approx(
            images[i][masks[i]].mean(), rel=1e-5)
        _, single = ex.table([images[i]], [masks[i]], canvas)   # alone in a padded batch
        np.testing.assert_allclose(single[0], table[i], rtol=1e-4)  # float32
    with pytest.raises(ValueError, match="image 1: shape mismatch"):
        ex.table(images[:2], [masks[0], masks[1][:-1]])
    with pytest.raises(ValueError, match="empty mask"):
        site_features(images[0], np.zeros_like(masks[0]))


def test_radiomic_relative_error_hand_computed():
    assert radiomic_relative_error([1.1, 2.0, 5.0], [1.0, 2.5, 0.0]) == pytest.approx(0.15)
    assert np.isnan(radiomic_relative_error([1.0], [0.0]))
    with pytest.raises(ValueError):
        radiomic_relative_error([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------- classifier, CIs

def _site_table(n_subjects=8, sites=("a", "b", "c", "d"), effect=3.0, seed=0):
    rng = np.random.default_rng(seed)
    anatomy = rng.standard_normal((n_subjects, 6))
    shift = rng.standard_normal((len(sites), 6)) * effect
    x, y, g = [], [], []
    for s in range(n_subjects):
        for k, site in enumerate(sites):
            x.append(anatomy[s] + shift[k] + 0.3 * rng.standard_normal(6))
            y.append(site)
            g.append(f"s{s}")
    return np.array(x), np.array(y), np.array(g)


def test_site_classifier_detects_site_effects_and_states_chance():
    x, y, g = _site_table(effect=6.0)
    res = site_classifier(x, y, g, n_splits=4, n_permutations=19, seed=0)
    assert res["accuracy"] == 1.0
    assert res["chance"] == 0.25 and res["n_sites"] == 4 and res["n_folds"] == 4
    assert set(res["per_group"]) == set(g)
    assert res["p_value"] == pytest.approx(1 / 20)   # no permutation does as well
    x, y, g = _site_table(effect=0.0)
    assert site_classifier(x, y, g, n_splits=8)["accuracy"] < 0.6   # no site effect: ~chance
    with pytest.raises(ValueError, match="2 subjects"):
        site_classifier(x[:4], y[:4], g[:4])
    with pytest.raises(ValueError, match="2 sites"):
        site_classifier(x, np.full(len(y), "a"), g)


def test_site_difference_report_contents():
    x, y, g = _site_table(effect=3.0)
    x[:, 0] = np.nan  # a feature that failed everywhere is dropped by the classifier
    rep = site_difference([f"f{i}" for i in range(6)], x, y, g, n_permutations=0)
    assert rep["classifier"]["n_features"] == 5
    assert {(d["site"], d["feature"]) for d in rep["distributions"]} == {
        (s, f"f{i}") for s in "abcd" for i in range(6)}
    assert rep["n_significant"] >= 3   # Kruskal-Wallis with 8 per site and a 3-sd shift


def test_t_interval_matches_scipy():
    mean, lo, hi, n = t_interval([1.0, 2.0, 3.0, np.nan])
    ref = stats.t.interval(0.95, 2, loc=2.0, scale=1.0 / math.sqrt(3))
    assert (mean, n) == (2.0, 3)
    assert (lo, hi) == pytest.approx(ref)
    assert np.isnan(t_interval([5.0])[1]) and t_interval([5.0])[0] == 5.0


def test_aggregate_averages_sites_within_subject_first():
    rows = [{"method": "m", "site": s, "subject": u, "ssim": v, "psnr": np.nan}
            for (s, u, v) in [("s1", "u1", 0.8), ("s2", "u1", 0.6), ("s1", "u2", 0.9),
                              ("s2", "u2", 0.7), ("s1", "u3", 1.0)]]
    subject_rows = [{"method": "m", "subject": "u1", "cov_gm": 0.1},
                    {"method": "m", "subject": "u2", "cov_gm": 0.3}]
    summary = {r["site"]: r for r in report.aggregate(rows, subject_rows)}
    assert summary["s1"]["ssim_mean"] == pytest.approx(0.9)
    assert summary["s1"]["n_subjects"] == 3
    overall = summary[report.OVERALL]
    assert overall["ssim_mean"] == pytest.approx(np.mean([0.7, 0.8, 1.0]))
    assert (overall["ssim_ci_low"], overall["ssim_ci_high"]) == pytest.approx(
        stats.t.interval(0.95, 2, loc=np.mean([0.7, 0.8, 1.0]),
                         scale=np.std([0.7, 0.8, 1.0], ddof=1) / math.sqrt(3)))
    assert overall["cov_gm_mean"] == pytest.approx(0.2) and overall["cov_gm_n"] == 2
    assert overall["psnr_n"] == 0
    assert overall["ssim_sd"] == pytest.approx(np.std([0.7, 0.8, 1.0], ddof=1))
    table = report.markdown_table(list(summary.values()), ["ssim", "psnr", "cov_gm"])
    assert "| m | 0.833 ± " in table and "| – |" in table
    half = (overall["ssim_ci_high"] - overall["ssim_ci_low"]) / 2
    assert f"0.833 ± {half:.3f}" in table                     # the CI half-width by default
    sd = report.markdown_table([overall], ["ssim"], spread="sd")
    assert f"0.833 ± {overall['ssim_sd']:.3f}" in sd and half != pytest.approx(overall["ssim_sd"])
    with pytest.raises(ValueError, match="spread"):
        report.markdown_table([overall], ["ssim"], spread="iqr")


def test_read_summary_returns_what_aggregate_wrote(tmp_path):
    rows = [{"method": m, "site": s, "subject": u, "ssim": v, "psnr": np.nan}
            for (m, s, u, v) in [("a", "s1", "u1", 0.8), ("a", "s1", "u2", 0.9),
                                 ("b", "s1", "u1", 0.5), ("b", "s2", "u1", 0.25)]]
    summary = report.aggregate(rows)
    path = report.write_rows(summary, str(tmp_path / "benchmark.csv"))
    back = report.read_summary(path)
    assert set(back) == {(r["method"], r["site"]) for r in summary}
    for r in summary:
        got = back[(r["method"], r["site"])]
        for k, v in r.items():
            if k not in ("method", "site"):
                assert got[k] == pytest.approx(v, nan_ok=True), k
    assert back[("b", report.OVERALL)]["ssim_mean"] == pytest.approx(0.375)
    assert math.isnan(back[("a", "s1")]["psnr_mean"])
    twice = tmp_path / "twice.csv"
    twice.write_text("method,site,ssim_mean\na,s1,0.5\na,s1,0.6\n")
    with pytest.raises(ValueError, match=r"twice.csv, line 3"):
        report.read_summary(str(twice))
    words = tmp_path / "words.csv"
    words.write_text("method,site,ssim_mean\na,s1,high\n")
    with pytest.raises(ValueError, match=r"words.csv, line 2"):
        report.read_summary(str(words))
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: no 'method' and 'site'"):
        report.read_summary(str(other))


def test_tissue_labelled_outside_the_target_scans_mask_counts_against_dice():
    """Per-session masks differ on real data: an output whose white matter spills past the
    target scan's mask has that spill counted as false positive (as its volume counts it)."""
    from phyjax.data.volumes import Volume
    from phyjax.evaluate.measures import TissueMeasure

    shape = (10, 8, 8)
    truth_mask = np.zeros(shape, bool)
    truth_mask[2:8, 2:8, 2:8] = True
    source_mask = np.zeros(shape, bool)
    source_mask[0:10, 2:8, 2:8] = True

    def segment(image, mask):                       # WM (label 3) everywhere in the mask
        return np.where(mask, 3, 0).astype(np.int32)

    def vol(site, mask):
        return Volume(subject="01", site=site, protocol=None, image=mask.astype(np.float32),
                      mask=mask, path="", affine=np.eye(4))

    volumes = {"01": {"target": vol("target", truth_mask), "source": vol("source", source_mask)}}
    measure = TissueMeasure(volumes, segment)
    row = measure("histmatch", np.ones(shape, np.float32), volumes["01"]["source"],
                  volumes["01"]["target"])
    # 216 true voxels, 360 labelled: Dice 2*216/(216+360) = 0.75, precision 0.6
    assert row["dice_wm"] == pytest.approx(0.75)
    assert row["precision_wm"] == pytest.approx(0.6)


def test_zscore_reads_an_integer_mask_as_a_mask():
    from phyjax.baselines import ZScore

    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 4)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[1:5, 1:4, 1:3] = True
    z = ZScore()
    z.mean_, z.std_ = 0.0, 1.0
    np.testing.assert_array_equal(z(image, mask.astype(np.uint8)), z(image, mask))
    assert z(image, mask)[mask].mean() == pytest.approx(0.0, abs=1e-6)


def test_maps_alongside_scores_the_maps_of_one_pass_as_generator_maps_does():
    # MapsAlongside (the main command's evaluation): the network runs once per scan, the maps
    # rows equal generator_maps' (which predicts again), harmonize equals the harmonizer's own,
    # and a scan the evaluation never harmonized is predicted when its row is asked for.
    from phyjax.data.volumes import Volume
    from phyjax.evaluate.measures import MapsAlongside, generator_maps
    from phyjax.methods.networks import SliceNetworkHarmonizer

    rng = np.random.default_rng(0)

    class Fake:
        kind = "image"
        image_of = staticmethod(SliceNetworkHarmonizer.image_of)

        def __init__(self):
            self.calls = 0

        def predict(self, v):
            self.calls += 1
            known = v.t1 is not None
            return {"t1": v.t1 * 1.1 if known else np.ones_like(v.image),
                    "m0": v.m0 + 0.05 if known else np.ones_like(v.image),
                    "harmonized": v.image * 2.0}

        def harmonize(self, v):
            return self.image_of(v, self.predict(v))

    def scan(subject, site, maps=True):
        mask = rng.random((6, 5, 4)) > 0.3
        t1 = rng.uniform(0.8, 4.0, mask.shape) if maps else None
        m0 = rng.uniform(0.6, 1.0, mask.shape) if maps else None
        return Volume(subject, site, None, rng.random(mask.shape).astype(np.float32), mask,
                      f"{subject}_{site}.nii.gz", t1=t1, m0=m0)

    volumes = {s: {"a": scan(s, "a"), "b": scan(s, "b"), "c": scan(s, "c", maps=False)}
               for s in ("01", "02")}
    fake = Fake()
    wrapped = MapsAlongside(fake)
    assert wrapped.kind == "image"
    for s in ("01", "02"):
        for site in ("a", "c"):                          # site "b" is never harmonized
            np.testing.assert_array_equal(wrapped.harmonize(volumes[s][site]),
                                          fake.harmonize(volumes[s][site]))
    calls = fake.calls
    rows = wrapped.rows(volumes, ["01", "02"], ["a", "b", "c"])
    assert fake.calls - calls == 2                       # only the two "b" scans
    assert rows == generator_maps(Fake(), volumes, ["01", "02"], ["a", "b", "c"])
    assert [(r["subject"], r["site"]) for r in rows] == [("01", "a"), ("01", "b"),
                                                          ("02", "a"), ("02", "b")]
    assert all(r["t1_nrmse"] > 0.05 for r in rows)
