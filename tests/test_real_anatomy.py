"""The second, real anatomy (``data.test_anatomy="real_philips"``): the shipped FAST maps become
the held-out subjects of the default dataset, with volumes kept and the template's grid."""

from __future__ import annotations

import os
import pathlib

import conftest
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from phyjax.data import dataset as dataset_mod
from phyjax.data import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
ANATOMY = ROOT / "phyjax" / "data" / "anatomy"


def _config():
    return conftest.load_config("phycharm", "debug")


def _fast_head_volumes():
    """GM and WM volume (mL) of the 1 mm FAST maps, the synthetic spheres removed by hand: every
    connected piece of tissue except the largest lies outside the brain (the README of the
    source data)."""
    gm, wm = (np.asarray(nib.load(ANATOMY / f"philips_t1w_fast_pve_{t}.nii.gz").get_fdata())
              for t in ("gm", "wm"))
    labels, n = ndimage.label((gm + wm) > 0)
    sizes = ndimage.sum(np.ones_like(gm), labels, index=np.arange(1, n + 1))
    head = labels == 1 + int(np.argmax(sizes))
    return gm[head].sum() / 1000.0, wm[head].sum() / 1000.0, (gm + wm)[~head].sum() / 1000.0


@pytest.mark.parametrize("voxel_size", [2, 3])
def test_real_anatomy_keeps_the_heads_tissue_volumes(voxel_size):
    gm_ml, wm_ml, outside_ml = _fast_head_volumes()
    assert outside_ml > 1.0    # the spheres are there to be removed
    probs, _, _ = synthetic.load_anatomy(voxel_size)
    real = synthetic.load_real_anatomy(voxel_size, probs.shape[1:])
    assert real.shape == probs.shape and real.dtype == np.float32
    voxel_ml = voxel_size ** 3 / 1000.0
    # Block averaging conserves volume; only the last <voxel_size planes may be cut off.
    assert real[1].sum() * voxel_ml == pytest.approx(gm_ml, rel=5e-3)
    assert real[2].sum() * voxel_ml == pytest.approx(wm_ml, rel=5e-3)
    total = real.sum(0)
    assert total.max() <= 1.0 + 1e-5 and real.min() >= 0.0
    # One head: the spheres (~1 mL each at 1 mm, so > 30 voxels here) are gone; what is not
    # the main piece is a few single voxels that block averaging cut off thin gyri.
    labels, n = ndimage.label(real[1] + real[2] > 0.5)
    sizes = np.sort(np.bincount(labels.ravel())[1:])
    assert sizes[-1] > 0.999 * sizes.sum() and (n == 1 or sizes[-2] <= 30 / voxel_size ** 3 * 8)
    # A real adult head, not the template: less GM than the MNI152 average brain.
    assert real[1].sum() < 0.75 * probs[1].sum()


def test_real_anatomy_refuses_a_grid_too_small_and_an_unknown_name():
    with pytest.raises(ValueError, match="does not fit"):
        synthetic.load_real_anatomy(2, (40, 40, 40))
    with pytest.raises(ValueError, match="test_anatomy"):
        synthetic.load_real_anatomy(2, (90, 110, 90), name="colin27")


def test_bad_anatomy_settings_are_refused_before_anything_is_written(tmp_path):
    cfg = _config()
    for key, value, match in (("test_anatomy", "colin27", "test_anatomy"),
                              ("anatomy_sharpness", -1.0, "anatomy_sharpness")):
        data = dict(cfg.data.to_dict(), **{key: value})
        with pytest.raises(ValueError, match=match):
            synthetic.build_default_dataset(data, str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []


def test_default_fingerprint_unchanged_by_the_new_key():
    cfg = _config()
    plain = cfg.data.to_dict()
    without = {k: v for k, v in plain.items() if k != "test_anatomy"}
    assert synthetic.dataset_fingerprint(plain) == synthetic.dataset_fingerprint(without)
    other = dict(plain, test_anatomy="real_philips")
    assert synthetic.dataset_fingerprint(other) != synthetic.dataset_fingerprint(plain)


def test_held_out_subjects_are_made_from_the_real_head(tmp_path):
    cfg = _config()
    with cfg.unlocked():
        cfg.data.n_subjects = 4
        cfg.data.n_test = 2
        cfg.data.test_anatomy = "real_philips"
        cfg.data.cache_dir = str(tmp_path)
    root = synthetic.build_default_dataset(cfg.data, str(tmp_path), progress=False)
    held_out = synthetic.held_out_labels(synthetic._to_plain(cfg.data))
    assert len(held_out) == 2
    # The experiments' own split of the loaded dataset holds out exactly these subjects.
    data = dataset_mod.load_dataset(cfg.data, progress=False)
    assert data.root == root
    assert tuple(data.split(cfg.data.n_test, cfg.data.seed).test) == held_out
    vs = float(cfg.data.voxel_size)
    template, _, _ = synthetic.load_anatomy(int(vs))
    real = synthetic.load_real_anatomy(int(vs), template.shape[1:])
    template_ml = (template.sum(0) > 0.5).sum() * vs ** 3 / 1000.0
    real_ml = (real.sum(0) > 0.5).sum() * vs ** 3 / 1000.0
    for i in range(4):
        label = f"{i + 1:02d}"
        mask = nib.load(os.path.join(root, synthetic.DERIVATIVES, f"sub-{label}", "anat",
                                     f"sub-{label}_desc-brain_mask.nii.gz"))
        ml = np.asarray(mask.get_fdata()).sum() * vs ** 3 / 1000.0
        expected = real_ml if label in held_out else template_ml
        # Deformation (4 mm) and atrophy keep the region within a few % of its anatomy's.
        assert ml == pytest.approx(expected, rel=0.08), (label, ml, real_ml, template_ml)


def test_sharpen_narrows_partial_volume_and_keeps_each_voxels_total():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.0, 1.0, (4, 5, 6))
    total = rng.uniform(0.2, 1.0, a.shape)
    probs = np.stack([a * total, (1 - a) * total, np.zeros_like(a)]).astype(np.float32)
    out = synthetic.sharpen(probs, 2.0)
    # Two tissues with shares (a, 1 - a): a^2 / (a^2 + (1 - a)^2), written out.
    expected = a ** 2 / (a ** 2 + (1 - a) ** 2) * total
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(0), probs.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(out, 0), np.argmax(probs, 0))
    assert synthetic.sharpen(probs, 1.0) is probs
    # On the template: more voxels of one pure tissue, the region untouched.
    template, region, _ = synthetic.load_anatomy(4)
    crisp = synthetic.sharpen(template, 2.0)
    purity = [(q.max(0)[region] / q.sum(0)[region] > 0.9).mean() for q in (template, crisp)]
    assert purity[1] > purity[0] + 0.1
    np.testing.assert_allclose(crisp.sum(0), template.sum(0), atol=1e-5)
