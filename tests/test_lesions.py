"""White-matter lesions in the default dataset (``data.lesions``) and the benchmark's measure of
how a method keeps them (:class:`phyjax.evaluate.measures.LesionMeasure`).

Oracles: the closed-form RF-spoiled gradient-echo equation transcribed here in NumPy (Bernstein
et al. 2004, Eq. 14.11 with T2* decay) for a pure-lesion voxel, conservation of tissue per
voxel, the construction's own guarantees (a ring of deep WM around every lesion), and contrasts
of hand-made images computed by hand."""

import numpy as np
import pytest
from scipy import ndimage

import conftest
from phyjax.data import synthetic
from phyjax.data.volumes import Volume
from phyjax.evaluate.measures import LesionMeasure, lesion_contrasts
from phyjax.physics import tissues
from phyjax.physics.sequences import Protocol


def _wm_block(shape=(40, 40, 40), inner=4):
    """Fractions ``(3, X, Y, Z)``: pure WM inside, a shell of ``inner`` voxels of GM."""
    probs = np.zeros((3,) + shape, np.float32)
    probs[1] = 1.0
    core = tuple(slice(inner, n - inner) for n in shape)
    probs[1][core], probs[2][core] = 0.0, 1.0
    return probs


def test_lesions_sit_in_deep_white_matter_with_a_ring_of_normal_white_matter():
    probs = _wm_block()
    lesion = synthetic.wm_lesions(probs, 3, 2.0, np.random.default_rng(0))
    assert lesion.shape == probs.shape[1:] and lesion.dtype == np.float32
    assert (lesion >= 0).all() and (lesion <= probs[2] + 1e-7).all()
    _, n = ndimage.label(lesion >= 0.5)
    assert n == 3
    # every voxel within the margin (4 mm = 2 voxels) of a lesion's extent is pure WM
    ring = ndimage.binary_dilation(lesion > 0, iterations=2)
    assert (probs[2][ring] >= 0.9).all()
    # the radii are drawn from 3-6 mm: a core holds 1-5 voxels across at 2 mm
    sizes = ndimage.sum(lesion >= 0.5, ndimage.label(lesion >= 0.5)[0], range(1, n + 1))
    assert all(4 <= s <= 4 / 3 * np.pi * 3.5 ** 3 for s in sizes)
    assert not synthetic.wm_lesions(probs, 0, 2.0, np.random.default_rng(0)).any()
    with pytest.raises(ValueError, match="lesions"):
        synthetic.wm_lesions(probs, -1, 2.0, np.random.default_rng(0))
    # no deep WM at all: nothing placed, no error
    assert not synthetic.wm_lesions(_wm_block((12, 12, 12), 4), 5, 2.0,
                                    np.random.default_rng(0)).any()


def test_a_subject_with_lesions_keeps_its_other_draws_and_its_tissue():
    template, _, _ = synthetic.load_anatomy(2)
    a = synthetic.make_subject(template, 3, 4.0, 2, 0.05, 0.03, atrophy_max=0.3)
    b = synthetic.make_subject(template, 3, 4.0, 2, 0.05, 0.03, atrophy_max=0.3, lesions_max=8)
    assert a[0].shape[0] == 3 and b[0].shape[0] == 4 and b[1].shape == (4, 4)
    np.testing.assert_array_equal(a[0][:2], b[0][:2])             # CSF and GM untouched
    np.testing.assert_allclose(b[0][2] + b[0][3], a[0][2], atol=1e-6)   # lesion taken from WM
    np.testing.assert_array_equal(a[1], b[1][:3])
    np.testing.assert_array_equal(a[2], b[2])
    n = ndimage.label(b[0][3] >= 0.5)[1]
    assert 1 <= n <= 8
    rel = b[1][3] / b[1][2]
    for j, k in enumerate(("t1", "t2", "t2star")):
        lo, hi = synthetic.LESION_FACTORS[k]
        assert lo <= rel[j] <= hi
    assert b[1][3, 3] * tissues.tissue_array(3.0)[2, 3] <= 1.0 + 1e-6     # PD <= 1


def test_a_pure_lesion_voxel_has_the_lesion_relaxation_and_its_signal():
    probs = np.zeros((4, 3, 1, 1), np.float32)
    probs[2, 0] = 1.0                          # pure WM
    probs[3, 1] = 1.0                          # pure lesion
    probs[2, 2] = probs[3, 2] = 0.5            # half and half
    factors = np.ones((4, 4))
    factors[3] = (1.8, 2.5, 2.0, 1.1)
    texture = np.ones((3, 1, 1), np.float32)
    maps = synthetic.quantitative_maps(probs, factors, texture, 3.0, partial_volume="signal")
    wm = tissues.tissue_parameters(3.0)["wm"]
    lesion = [wm.t1 * 1.8, wm.t2 * 2.5, wm.t2star * 2.0, wm.pd * 1.1]
    np.testing.assert_allclose(maps["t1"].ravel(), [wm.t1, lesion[0], (wm.t1 + lesion[0]) / 2],
                               rtol=1e-6)
    np.testing.assert_allclose(maps["pd"].ravel()[1], lesion[3], rtol=1e-6)
    tr, te, flip = 0.02, 0.0045, np.deg2rad(25)

    def spgr(t1, t2s, pd):   # Bernstein et al. 2004, Eq. 14.11, with T2* decay
        e1 = np.exp(-tr / t1)
        return pd * np.sin(flip) * (1 - e1) / (1 - np.cos(flip) * e1) * np.exp(-te / t2s)

    p = Protocol.from_degrees("spgr", tr=tr, te=te, flip_angle_deg=25, field_strength=3.0)
    got = np.asarray(synthetic.signed_image(maps, p)).ravel()
    s_wm, s_les = spgr(wm.t1, wm.t2star, wm.pd), spgr(lesion[0], lesion[2], lesion[3])
    np.testing.assert_allclose(got, [s_wm, s_les, 0.5 * (s_wm + s_les)], rtol=1e-5)
    assert s_les < 0.9 * s_wm        # T1-hypointense


def _lesion_scene():
    """A WM block (value 1) with two lesion cores (0.6 and 0.8): contrasts 0.4 and 0.2."""
    shape = (30, 30, 30)
    wm = np.zeros(shape, np.float32)
    wm[3:-3, 3:-3, 3:-3] = 1.0
    lesion = np.zeros(shape, np.float32)
    lesion[8:11, 8:11, 8:11] = 1.0
    lesion[18:21, 18:21, 18:21] = 1.0
    image = np.where(wm > 0, 1.0, 0.3).astype(np.float32)
    image[8:11, 8:11, 8:11], image[18:21, 18:21, 18:21] = 0.6, 0.8
    wm = wm - lesion
    mask = np.ones(shape, bool)
    return image, lesion, wm, mask


def test_lesion_contrast_against_the_surrounding_white_matter():
    image, lesion, wm, mask = _lesion_scene()
    np.testing.assert_allclose(lesion_contrasts(image, lesion, wm, mask, 4.0, 2.0), [0.4, 0.2],
                               atol=1e-6)
    np.testing.assert_allclose(lesion_contrasts(3 * image, lesion, wm, mask, 4.0, 2.0),
                               [0.4, 0.2], atol=1e-6)                 # scale-free
    erased = np.where(wm + lesion > 0, 1.0, 0.3)
    np.testing.assert_allclose(lesion_contrasts(erased, lesion, wm, mask, 4.0, 2.0), [0, 0],
                               atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        lesion_contrasts(image[:-1], lesion, wm, mask)


def test_lesion_measure_scores_an_erased_lesion_by_the_contrast_it_lost():
    image, lesion, wm, mask = _lesion_scene()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    truth = Volume("01", "reference", None, image, mask, "truth.nii.gz", affine=affine)
    source = Volume("01", "siteA", None, image * 0.5, mask, "src.nii.gz", affine=affine)
    measure = LesionMeasure(lambda s: (lesion, wm))
    same = measure("m", image.copy(), source, truth)
    assert same["lesion_contrast_err"] < 1e-6
    np.testing.assert_allclose(same["lesion_contrast"], 0.3, atol=1e-6)
    erased = np.where(wm + lesion > 0, 1.0, 0.3).astype(np.float32)
    out = measure("m", erased, source, truth)
    np.testing.assert_allclose(out["lesion_contrast_err"], 0.3, atol=1e-6)  # mean of 0.4, 0.2
    bad = LesionMeasure(lambda s: (lesion[:-1], wm[:-1]))
    with pytest.raises(ValueError, match="truth.nii.gz"):
        bad("m", image, source, truth)


def test_lesions_change_the_dataset_fingerprint_only_when_set(tmp_path):
    config = conftest.load_config("phycharm", "")
    base = synthetic.dataset_fingerprint(config.data)
    config.data.lesions = 8
    assert synthetic.dataset_fingerprint(config.data) != base
    config.data.lesions = 0
    assert synthetic.dataset_fingerprint(config.data) == base
    assert LesionMeasure.from_dataset(str(tmp_path), ["01"]) is None   # no lesion maps there
    config.data.lesions = 60
    with pytest.raises(ValueError, match="data.lesions"):
        synthetic.build_default_dataset(config.data, str(tmp_path), progress=False)


def test_benchmark_writeup_has_a_lesion_table_only_on_data_with_lesions():
    from types import SimpleNamespace

    from phyjax.evaluate import report, writeup

    rows = [{"method": m, "site": "siteA", "subject": s, "ssim": 0.9,
             "lesion_contrast": c, "lesion_contrast_err": abs(c - 0.2)}
            for m, c in (("none", 0.05), ("phycharm", 0.18)) for s in ("01", "02")]
    text = "\n".join(writeup._lesions(SimpleNamespace(summary=report.aggregate(rows))))
    assert "White-matter lesions" in text
    line = next(x for x in text.splitlines() if x.startswith("| siteA | phycharm"))
    assert "**0.020" in line            # the smaller error is the best, in bold
    plain = [{k: v for k, v in r.items() if not k.startswith("lesion")} for r in rows]
    assert writeup._lesions(SimpleNamespace(summary=report.aggregate(plain))) == []


def test_lesions_only_in_held_out_subjects_when_asked(tmp_path):
    config = conftest.load_config("phycharm", "")
    config.data.lesions, config.data.lesion_subjects = 6, "held_out"
    held_out = synthetic.held_out_labels(synthetic._to_plain(config.data))
    assert len(held_out) == config.data.n_test
    template, _, _ = synthetic.load_anatomy(2)
    for i in (int(held_out[0]) - 1, next(i for i in range(12) if f"{i + 1:02d}" not in held_out)):
        probs = synthetic.dataset_subject(config.data, i, template)[0]
        assert len(probs) == (4 if f"{i + 1:02d}" in held_out else 3)
    fingerprint = synthetic.dataset_fingerprint(config.data)
    config.data.lesion_subjects = "all"
    assert synthetic.dataset_fingerprint(config.data) != fingerprint
    config.data.lesion_subjects = "train"
    with pytest.raises(ValueError, match="data.lesion_subjects"):
        synthetic.build_default_dataset(config.data, str(tmp_path), progress=False)
    assert not any(p.name.startswith("default-") for p in tmp_path.iterdir())
