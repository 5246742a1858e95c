"""Tests of phyjax.data: NIfTI I/O, BIDS loading and the embedded default dataset.

Oracles are independent of the code under test: nibabel for reading/writing
NIfTI, ``math.radians`` for unit conversion, hand-built BIDS folders, MR
physics (T1 grows with B0; on an MPRAGE, WM is brighter than GM, GM brighter
than CSF) and the published tissue table for picking tissue-like voxels.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import conftest
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from phyjax.data import bids, nifti, synthetic
from phyjax.data.nifti import InputError
from phyjax.physics import tissues


def _load_config(variant="debug"):
    return conftest.load_config("phycharm", variant)


def _write_nifti(path, data, affine=None):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    nib.save(image, str(path))
    return str(path)


# ---------------------------------------------------------------------------
# nifti.load_volume
# ---------------------------------------------------------------------------


def test_load_volume_reads_3d_volume_like_nibabel(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    path = _write_nifti(tmp_path / "ok.nii.gz", data, affine)
    out, image = nifti.load_volume(path)
    assert out.dtype == np.float32
    assert out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(image.affine, affine)


def test_load_volume_applies_intensity_scaling(tmp_path):
    # int16 storage with scl_slope/scl_inter: the returned values are the scaled ones,
    # exactly what nibabel's get_fdata gives.
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(0.5, -3.0)
    path = str(tmp_path / "scaled.nii.gz")
    nib.save(image, path)
    out, _ = nifti.load_volume(path)
    np.testing.assert_allclose(out, data * 0.5 - 3.0, rtol=1e-6)
    np.testing.assert_allclose(out, nib.load(path).get_fdata(), rtol=1e-6)


def test_load_volume_missing_file_names_path(tmp_path):
    path = str(tmp_path / "nope" / "missing_T1w.nii.gz")
    with pytest.raises(InputError) as info:
        nifti.load_volume(path)
    assert path in str(info.value)


def test_load_volume_accepts_pathlike(tmp_path):
    path = tmp_path / "p.nii"
    _write_nifti(path, np.ones((3, 3, 3), np.float32))
    out, _ = nifti.load_volume(path)
    assert out.shape == (3, 3, 3)
    with pytest.raises(InputError) as info:
        nifti.load_volume(tmp_path / "absent.nii")
    assert str(tmp_path / "absent.nii") in str(info.value)


def test_load_volume_random_bytes_is_input_error_naming_file(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as info:
        nifti.load_volume(str(path))
    assert str(path) in str(info.value)


def test_load_volume_truncated_file_is_input_error_naming_file(tmp_path):
    # A valid header followed by too little data: the failure happens while reading
    # the voxels, not the header, and must still name the file.
    good = tmp_path / "good.nii"
    _write_nifti(good, np.random.default_rng(2).random((16, 16, 16)).astype(np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "truncated.nii"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as info:
        nifti.load_volume(str(bad))
    assert str(bad) in str(info.value)


def test_load_volume_rejects_2d_image(tmp_path):
    path = _write_nifti(tmp_path / "flat.nii.gz", np.zeros((6, 7), np.float32))
    with pytest.raises(InputError) as info:
        nifti.load_volume(path)
    assert "3-D" in str(info.value)
    assert path in str(info.value)


def test_load_volume_rejects_4d_with_three_volumes(tmp_path):
    path = _write_nifti(tmp_path / "series.nii.gz", np.zeros((4, 5, 6, 3), np.float32))
    with pytest.raises(InputError) as info:
        nifti.load_volume(path)
    assert "3-D" in str(info.value)
    assert path in str(info.value)


def test_load_volume_squeezes_4d_singleton(tmp_path):
    data = np.random.default_rng(3).random((4, 5, 6, 1)).astype(np.float32)
    path = _write_nifti(tmp_path / "single.nii.gz", data)
    assert nib.load(path).shape == (4, 5, 6, 1)  # the file really is 4-D
    out, _ = nifti.load_volume(path)
    assert out.shape == (4, 5, 6)
    np.testing.assert_array_equal(out, data[..., 0])
    with pytest.raises(InputError) as info:
        nifti.load_volume(path, allow_4d_singleton=False)
    assert path in str(info.value)


def test_load_volume_rejects_degenerate_volume(tmp_path):
    path = _write_nifti(tmp_path / "thin.nii.gz", np.ones((5, 5, 1, 1), np.float32))
    with pytest.raises(InputError) as info:
        nifti.load_volume(path)
    assert path in str(info.value)


@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_load_volume_rejects_non_finite_voxels(tmp_path, bad_value, word):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = bad_value
    path = _write_nifti(tmp_path / "bad.nii.gz", data)
    with pytest.raises(InputError) as info:
        nifti.load_volume(path)
    assert word in str(info.value)
    assert path in str(info.value)


# ---------------------------------------------------------------------------
# nifti.save_like / save_volume
# ---------------------------------------------------------------------------


def _oblique_affine():
    # Rotation about an oblique axis (Rodrigues), anisotropic non-unit voxels, offset.
    axis = np.array([1.0, 2.0, 0.5])
    axis /= np.linalg.norm(axis)
    angle = math.radians(23.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    zooms = np.array([0.9, 1.3, 2.5])
    affine = np.eye(4)
    affine[:3, :3] = rot * zooms  # scales columns: voxel axis j has length zooms[j]
    affine[:3, 3] = [-91.0, 12.5, 40.25]
    return affine, zooms


def test_save_like_round_trip_preserves_geometry(tmp_path):
    affine, zooms = _oblique_affine()
    ref_data = np.random.default_rng(4).integers(0, 1000, (6, 7, 8)).astype(np.int16)
    ref = nib.Nifti1Image(ref_data, affine)
    ref.set_qform(affine, code=1)  # scanner
    ref.set_sform(affine, code=2)  # aligned
    ref_path = str(tmp_path / "ref.nii.gz")
    nib.save(ref, ref_path)
    ref = nib.load(ref_path)

    data = np.random.default_rng(5).random((6, 7, 8)).astype(np.float32)
    out_path = str(tmp_path / "sub" / "dir" / "out.nii.gz")
    assert nifti.save_like(data, ref, out_path) == out_path
    out = nib.load(out_path)
    assert np.allclose(out.affine, affine, atol=1e-4)
    assert np.allclose(out.header.get_qform(), affine, atol=1e-4)
    assert np.allclose(out.header.get_sform(), affine, atol=1e-4)
    assert np.allclose(out.header.get_zooms()[:3], zooms, atol=1e-5)
    assert int(out.header["qform_code"]) == 1
    assert int(out.header["sform_code"]) == 2
    assert out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(out.dataobj), data)


def test_save_like_keeps_a_qform_that_differs_from_the_sform(tmp_path):
    # After FSL processing the qform (scanner) and the sform (aligned) often differ; ITK/ANTs
    # read the qform, nibabel/FSL the sform: the output must carry both as the input does.
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    qform[:3, 3] = [-10.0, -20.0, -30.0]
    sform, _ = _oblique_affine()
    ref = nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), None)
    ref.set_qform(qform, code=1)
    ref.set_sform(sform, code=4)
    nib.save(ref, tmp_path / "ref.nii.gz")
    loaded = nib.load(tmp_path / "ref.nii.gz")
    out = nib.load(nifti.save_like(np.ones((6, 7, 8), np.float32), loaded,
                                   str(tmp_path / "out.nii.gz")))
    np.testing.assert_allclose(out.header.get_qform(), loaded.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_sform(), loaded.header.get_sform(), atol=1e-5)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    np.testing.assert_allclose(out.affine, loaded.affine, atol=1e-5)


def test_save_like_of_an_in_memory_reference_writes_its_affine(tmp_path):
    affine, _ = _oblique_affine()
    ref = nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.eye(4))
    ref.affine[:] = affine            # changed after the header was made
    out = nib.load(nifti.save_like(np.ones((6, 7, 8), np.float32), ref,
                                   str(tmp_path / "out.nii.gz")))
    np.testing.assert_allclose(out.affine, affine, atol=1e-4)
    np.testing.assert_allclose(out.header.get_qform(), affine, atol=1e-4)


def test_save_like_does_not_inherit_reference_scaling(tmp_path):
    # The reference stores int16 with a slope/intercept; the written float data must
    # read back unchanged (no stale scl_slope applied on top).
    ref = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    ref.header.set_slope_inter(3.0, 7.0)
    ref_path = str(tmp_path / "ref.nii.gz")
    nib.save(ref, ref_path)
    data = np.random.default_rng(6).random((4, 5, 6)).astype(np.float32)
    out_path = nifti.save_like(data, nib.load(ref_path), str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(nib.load(out_path).get_fdata(), data, rtol=1e-6)


def test_save_like_shape_mismatch_raises(tmp_path):
    ref = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4))
    out_path = tmp_path / "never.nii.gz"
    with pytest.raises(ValueError):
        nifti.save_like(np.zeros((4, 5, 7), np.float32), ref, str(out_path))
    assert not out_path.exists()


def test_save_volume_round_trip(tmp_path):
    affine, _ = _oblique_affine()
    data = np.random.default_rng(7).random((5, 4, 3)).astype(np.float32)
    path = nifti.save_volume(data, affine, str(tmp_path / "a" / "v.nii.gz"))
    loaded, image = nifti.load_volume(path)
    np.testing.assert_array_equal(loaded, data)
    assert np.allclose(image.affine, affine, atol=1e-4)
    assert np.allclose(image.header.get_qform(), affine, atol=1e-4)


# ---------------------------------------------------------------------------
# bids
# ---------------------------------------------------------------------------

# (subject, session) -> sidecar.  Times in s, FlipAngle in degrees.
_SIDECARS = {
    ("01", "siteA"): {"PulseSequenceType": "MPRAGE", "RepetitionTime": 2.3, "EchoTime": 0.00298,
                      "InversionTime": 0.9, "FlipAngle": 9, "MagneticFieldStrength": 3},
    ("01", "siteB"): {"ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
                      "RepetitionTime": 2.4, "EchoTime": 0.0036, "InversionTime": 1.0,
                      "FlipAngle": 8, "MagneticFieldStrength": 1.5},
    ("02", "siteA"): {"PulseSequenceType": "MPRAGE", "RepetitionTime": 2.3, "EchoTime": 0.00298,
                      "InversionTime": 0.9, "FlipAngle": 9, "MagneticFieldStrength": 3},
    ("02", "siteB"): {"ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
                      "RepetitionTime": 2.4, "EchoTime": 0.0036, "InversionTime": 1.0,
                      "FlipAngle": 8, "MagneticFieldStrength": 1.5},
}


def _make_bids(root: pathlib.Path, sidecars=_SIDECARS):
    rng = np.random.default_rng(8)
    paths = {}
    for (sub, ses), sidecar in sidecars.items():
        anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
        stem = anat / f"sub-{sub}_ses-{ses}_T1w"
        _write_nifti(f"{stem}.nii.gz", rng.random((4, 5, 6)).astype(np.float32))
        (anat / f"sub-{sub}_ses-{ses}_T1w.json").write_text(json.dumps(sidecar))
        paths[(sub, ses)] = f"{stem}.nii.gz"
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    return paths


def test_scan_bids_reads_every_scan_with_protocol(tmp_path):
    paths = _make_bids(tmp_path)
    scans = bids.scan_bids(str(tmp_path))
    assert len(scans) == len(_SIDECARS)
    assert [s.path for s in scans] == sorted(paths.values())
    for scan in scans:
        key = (scan.subject, scan.site)
        assert key in _SIDECARS, key
        assert scan.path == paths[key]
        sidecar = _SIDECARS[key]
        p = scan.protocol
        assert p.sequence == "mprage"
        assert float(p.tr) == pytest.approx(sidecar["RepetitionTime"])
        assert float(p.te) == pytest.approx(sidecar["EchoTime"])
        assert float(p.ti) == pytest.approx(sidecar["InversionTime"])
        assert float(p.flip_angle) == pytest.approx(math.radians(sidecar["FlipAngle"]), rel=1e-6)
        assert float(p.field_strength) == pytest.approx(sidecar["MagneticFieldStrength"])
        assert scan.mask_path is None  # no derivatives in this folder
    assert {(s.subject, s.site) for s in scans} == set(_SIDECARS)


def test_scan_bids_ignores_derivatives_and_other_suffixes(tmp_path):
    paths = _make_bids(tmp_path)
    # Files that must not be taken for T1w scans.
    _write_nifti(tmp_path / "derivatives" / "x" / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
                 np.ones((3, 3, 3), np.float32))
    _write_nifti(tmp_path / "sub-01" / "ses-siteA" / "anat" / "sub-01_ses-siteA_T2w.nii.gz",
                 np.ones((3, 3, 3), np.float32))
    scans = bids.scan_bids(str(tmp_path))
    assert [s.path for s in scans] == sorted(paths.values())


def test_scan_bids_missing_sidecar_names_json(tmp_path):
    paths = _make_bids(tmp_path)
    json_path = paths[("02", "siteB")][: -len(".nii.gz")] + ".json"
    os.remove(json_path)
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path))
    assert json_path in str(info.value)


def test_scan_bids_mprage_without_inversion_time(tmp_path):
    sidecars = dict(_SIDECARS)
    sidecars[("01", "siteB")] = {k: v for k, v in _SIDECARS[("01", "siteB")].items()
                                 if k != "InversionTime"}
    paths = _make_bids(tmp_path, sidecars)
    json_path = paths[("01", "siteB")][: -len(".nii.gz")] + ".json"
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path))
    assert json_path in str(info.value)
    assert "InversionTime" in str(info.value)


def test_scan_bids_invalid_json(tmp_path):
    paths = _make_bids(tmp_path)
    json_path = paths[("01", "siteA")][: -len(".nii.gz")] + ".json"
    with open(json_path, "w") as f:
        f.write('{"RepetitionTime": 2.3, "EchoTime": ')
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path))
    assert json_path in str(info.value)


def test_scan_bids_sidecar_not_an_object(tmp_path):
    paths = _make_bids(tmp_path)
    json_path = paths[("01", "siteA")][: -len(".nii.gz")] + ".json"
    with open(json_path, "w") as f:
        json.dump([1, 2, 3], f)
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path))
    assert json_path in str(info.value)


def test_scan_bids_no_scans(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    (tmp_path / "dataset_description.json").write_text("{}")
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_scan_bids_missing_root(tmp_path):
    root = str(tmp_path / "does-not-exist")
    with pytest.raises(InputError) as info:
        bids.scan_bids(root)
    assert root in str(info.value)


@pytest.mark.parametrize("extra, site", [
    ({"InstitutionName": "StMarys"}, "StMarys"),
    ({"ManufacturersModelName": "Prisma"}, "Prisma"),
    ({"InstitutionName": "StMarys", "ManufacturersModelName": "Prisma"}, "StMarys_Prisma"),
])
def test_scan_bids_site_from_institution_name_without_session(tmp_path, extra, site):
    anat = tmp_path / "sub-07" / "anat"
    _write_nifti(anat / "sub-07_T1w.nii", np.ones((3, 4, 5), np.float32))  # uncompressed
    sidecar = dict(_SIDECARS[("01", "siteA")], **extra)
    (anat / "sub-07_T1w.json").write_text(json.dumps(sidecar))
    scans = bids.scan_bids(str(tmp_path))
    assert len(scans) == 1
    assert scans[0].subject == "07"
    assert scans[0].site == site
    assert float(scans[0].protocol.flip_angle) == pytest.approx(math.radians(9), rel=1e-6)


@pytest.mark.parametrize("extra", [{}, {"InstitutionName": None}, {"InstitutionName": ""}])
def test_scan_bids_without_session_or_institution_is_error(tmp_path, extra):
    anat = tmp_path / "sub-07" / "anat"
    path = _write_nifti(anat / "sub-07_T1w.nii.gz", np.ones((3, 4, 5), np.float32))
    (anat / "sub-07_T1w.json").write_text(json.dumps(dict(_SIDECARS[("01", "siteA")], **extra)))
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path))
    assert path in str(info.value)


def test_scan_bids_finds_brain_masks(tmp_path):
    paths = _make_bids(tmp_path)
    # Subject-level mask for sub-01 (both sessions), session-level mask for sub-02/siteB only.
    mask01 = _write_nifti(tmp_path / "derivatives" / "mypipe" / "sub-01" / "anat"
                          / "sub-01_desc-brain_mask.nii.gz", np.ones((4, 5, 6), np.uint8))
    mask02b = _write_nifti(tmp_path / "derivatives" / "mypipe" / "sub-02" / "ses-siteB" / "anat"
                           / "sub-02_ses-siteB_desc-brain_mask.nii.gz",
                           np.ones((4, 5, 6), np.uint8))
    scans = {(s.subject, s.site): s for s in bids.scan_bids(str(tmp_path))}
    assert set(scans) == set(paths)
    assert scans[("01", "siteA")].mask_path == mask01
    assert scans[("01", "siteB")].mask_path == mask01
    assert scans[("02", "siteB")].mask_path == mask02b
    assert scans[("02", "siteA")].mask_path is None


def test_entities_and_sidecar_path():
    assert bids.entities("/a/sub-01/ses-x/anat/sub-01_ses-siteA_acq-mp2_run-2_T1w.nii.gz") == {
        "sub": "01", "ses": "siteA", "acq": "mp2", "run": "2"}
    # whole underscore-separated entities only: a key's text inside another entity's label is
    # not an entity (a regex search for "sub-" read this file as subject 02)
    assert bids.entities("sub-01_desc-presub-02_T1w.nii.gz") == {"sub": "01"}
    assert bids.sidecar_path("/a/b/sub-01_T1w.nii.gz") == "/a/b/sub-01_T1w.json"
    assert bids.sidecar_path("/a/b.c/sub-01_T1w.nii") == "/a/b.c/sub-01_T1w.json"


# ---------------------------------------------------------------------------
# synthetic: the embedded default dataset
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debug_cfg():
    return _load_config("debug")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("phyjax-cache")


@pytest.fixture(scope="module")
def dataset(debug_cfg, cache_dir):
    return synthetic.build_default_dataset(debug_cfg.data, str(cache_dir), progress=False)


@pytest.fixture(scope="module")
def dataset_scans(dataset):
    return bids.scan_bids(dataset)


def _arr(path):
    return np.asarray(nib.load(path).get_fdata(), np.float64)


def _subjects(cfg):
    return [f"{i + 1:02d}" for i in range(int(cfg.data.n_subjects))]


def test_build_is_cached(debug_cfg, cache_dir, dataset):
    stamp = os.path.join(dataset, "dataset_description.json")
    scan = sorted(pathlib.Path(dataset).rglob("*_T1w.nii.gz"))[0]
    before = (os.stat(stamp).st_mtime_ns, os.stat(scan).st_mtime_ns, os.stat(dataset).st_mtime_ns)
    again = synthetic.build_default_dataset(debug_cfg.data, str(cache_dir), progress=False)
    assert again == dataset
    after = (os.stat(stamp).st_mtime_ns, os.stat(scan).st_mtime_ns, os.stat(dataset).st_mtime_ns)
    assert before == after
    # No half-written build folders left behind.
    assert not [p for p in os.listdir(cache_dir) if p.startswith(".building-")]


def test_changed_config_builds_a_different_dataset(debug_cfg, cache_dir, dataset):
    data_cfg = debug_cfg.data.copy_and_resolve_references()
    data_cfg.seed = int(debug_cfg.data.seed) + 1
    other = synthetic.build_default_dataset(data_cfg, str(cache_dir), progress=False)
    assert other != dataset
    assert os.path.isdir(dataset) and os.path.isdir(other)
    rel = os.path.join("sub-01", "ses-reference", "anat", "sub-01_ses-reference_T1w.nii.gz")
    a, b = _arr(os.path.join(dataset, rel)), _arr(os.path.join(other, rel))
    assert a.shape == b.shape
    assert not np.array_equal(a, b)


def test_dataset_scans_match_config(debug_cfg, dataset, dataset_scans):
    sites = debug_cfg.data.sites
    subjects = _subjects(debug_cfg)
    assert len(dataset_scans) == len(subjects) * len(sites)
    assert {(s.subject, s.site) for s in dataset_scans} == {
        (sub, site) for sub in subjects for site in sites}
    for scan in dataset_scans:
        site_cfg = sites[scan.site]
        with open(bids.sidecar_path(scan.path)) as f:
            sidecar = json.load(f)
        assert sidecar["FlipAngle"] == pytest.approx(site_cfg.flip_angle, abs=1e-6)
        p = scan.protocol
        assert p.sequence == site_cfg.sequence
        assert float(p.flip_angle) == pytest.approx(math.radians(site_cfg.flip_angle), rel=1e-6)
        assert float(p.tr) == pytest.approx(site_cfg.tr)
        assert float(p.te) == pytest.approx(site_cfg.te)
        if site_cfg.sequence in ("mprage", "ir"):
            assert float(p.ti) == pytest.approx(site_cfg.ti)
        assert float(p.field_strength) == pytest.approx(site_cfg.field_strength)
        gt = synthetic.ground_truth_paths(dataset, scan.subject, float(site_cfg.field_strength))
        assert scan.mask_path == gt["mask"]


def test_dataset_images_are_valid(dataset, dataset_scans):
    for scan in dataset_scans:
        image = nib.load(scan.path)
        mask = nib.load(scan.mask_path)
        data = np.asarray(image.get_fdata())
        assert data.ndim == 3, scan.path
        assert data.shape == mask.shape, scan.path
        assert np.isfinite(data).all(), scan.path
        assert (data >= 0).all(), scan.path
        assert np.allclose(image.affine, mask.affine), scan.path
        m = np.asarray(mask.get_fdata()) > 0
        assert m.any() and not m.all()
        assert data[m].mean() > 0, scan.path
        # The library's own loader accepts what the library writes.
        loaded, _ = nifti.load_volume(scan.path)
        np.testing.assert_allclose(loaded, data, rtol=1e-6)


def test_ground_truth_maps_are_consistent(debug_cfg, dataset):
    for sub in _subjects(debug_cfg):
        for b0 in (1.5, 3.0):
            gt = synthetic.ground_truth_paths(dataset, sub, b0)
            for path in gt.values():
                assert os.path.exists(path), path
            mask = _arr(gt["mask"]) > 0
            t1, m0 = _arr(gt["t1"]), _arr(gt["m0"])
            assert np.isfinite(t1).all() and np.isfinite(m0).all()
            assert (t1[mask] > 0).all()
            assert (m0[mask] > 0).all() and (m0 <= 1.0 + 1e-5).all()
            # Relaxation values stay within the span of the tissue table (+ jitter/texture).
            table = tissues.tissue_array(b0)
            assert t1[mask].min() > 0.6 * table[:, 0].min()
            assert t1[mask].max() < 1.5 * table[:, 0].max()


def test_reference_mprage_contrast_wm_brighter_than_gm(debug_cfg, dataset):
    target = debug_cfg.data.target_site
    site_cfg = debug_cfg.data.sites[target]
    b0 = float(site_cfg.field_strength)
    table = tissues.tissue_parameters(b0)
    for sub in _subjects(debug_cfg):
        gt = synthetic.ground_truth_paths(dataset, sub, b0)
        mask = _arr(gt["mask"]) > 0
        t1 = _arr(gt["t1"])
        image = _arr(os.path.join(dataset, f"sub-{sub}", f"ses-{target}", "anat",
                                  f"sub-{sub}_ses-{target}_T1w.nii.gz"))
        wm_like = mask & (np.abs(t1 / table["wm"].t1 - 1) < 0.08)
        gm_like = mask & (np.abs(t1 / table["gm"].t1 - 1) < 0.08)
        csf_like = mask & (t1 > 0.8 * table["csf"].t1)
        assert min(wm_like.sum(), gm_like.sum(), csf_like.sum()) > 50, (
            wm_like.sum(), gm_like.sum(), csf_like.sum())
        wm, gm = np.median(image[wm_like]), np.median(image[gm_like])
        csf = np.median(image[csf_like])
        assert wm > 1.1 * gm, (sub, wm, gm)
        assert gm > csf, (sub, gm, csf)


def test_t1_longer_at_3t_than_at_1p5t(debug_cfg, dataset):
    for sub in _subjects(debug_cfg):
        low = synthetic.ground_truth_paths(dataset, sub, 1.5)
        high = synthetic.ground_truth_paths(dataset, sub, 3.0)
        mask = _arr(high["mask"]) > 0
        t1_low, t1_high = _arr(low["t1"])[mask], _arr(high["t1"])[mask]
        assert (t1_low < t1_high).all(), sub


def test_subjects_differ(debug_cfg, dataset):
    # Each subject is a different deformation (and tissue jitter) of the template: their
    # ground-truth maps and their images differ over most of the brain.
    subs = _subjects(debug_cfg)
    gts = [synthetic.ground_truth_paths(dataset, s, 3.0) for s in subs]
    masks = [_arr(g["mask"]) > 0 for g in gts]
    t1s = [_arr(g["t1"]) for g in gts]
    m0s = [_arr(g["m0"]) for g in gts]
    target = debug_cfg.data.target_site
    images = [_arr(os.path.join(dataset, f"sub-{s}", f"ses-{target}", "anat",
                                f"sub-{s}_ses-{target}_T1w.nii.gz")) for s in subs]
    for i in range(len(subs)):
        for j in range(i + 1, len(subs)):
            both = masks[i] & masks[j]
            assert both.sum() > 0.5 * masks[i].sum()
            assert np.mean(np.abs(t1s[i][both] - t1s[j][both]) > 1e-3) > 0.5, (subs[i], subs[j])
            # M0 has no texture term: it differs only through the deformed tissue
            # fractions and the per-tissue jitter.
            assert np.mean(np.abs(m0s[i][both] - m0s[j][both]) > 1e-3) > 0.5, (subs[i], subs[j])
            assert not np.allclose(images[i], images[j], rtol=0.05), (subs[i], subs[j])


def test_brain_mask_follows_subject_deformation(debug_cfg, dataset):
    subs = _subjects(debug_cfg)
    masks = [_arr(synthetic.ground_truth_paths(dataset, s, 3.0)["mask"]) > 0 for s in subs]
    for i in range(len(subs)):
        for j in range(i + 1, len(subs)):
            assert (masks[i] != masks[j]).sum() > 0.002 * masks[i].sum(), (subs[i], subs[j])


def test_same_seed_rebuilds_identically(debug_cfg, dataset, tmp_path, monkeypatch):
    # rebuilt one subject at a time: the fixture's build wrote two at once (phyjax.parallel,
    # on a machine with two cores or more), and every file must be the same either way
    monkeypatch.setenv("PHYJAX_THREADS", "1")
    other = synthetic.build_default_dataset(debug_cfg.data, str(tmp_path / "second-cache"),
                                            progress=False)
    assert os.path.basename(other) == os.path.basename(dataset)
    files_a = sorted(p.relative_to(dataset) for p in pathlib.Path(dataset).rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(other) for p in pathlib.Path(other).rglob("*") if p.is_file())
    assert files_a == files_b
    n_images = 0
    for rel in files_a:
        a, b = os.path.join(dataset, rel), os.path.join(other, rel)
        if str(rel).endswith(".nii.gz"):
            ia, ib = nib.load(a), nib.load(b)
            assert ia.header.binaryblock == ib.header.binaryblock, rel
            np.testing.assert_array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))
            n_images += 1
        else:
            assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes(), rel
    assert n_images > 0


def test_load_anatomy_probabilities():
    probs, mask, affine = synthetic.load_anatomy(4)
    assert probs.ndim == 4 and probs.shape[0] == 3
    assert probs.shape[1:] == mask.shape
    assert mask.dtype == bool and mask.any()
    assert affine.shape == (4, 4)
    assert np.allclose(np.abs(np.diag(affine)[:3]), 4.0)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert probs.sum(0).max() <= 1.0 + 1e-5
    assert (probs[:, ~mask] == 0).all()  # no tissue outside the brain region
    csf = probs[0]
    assert (csf[mask] > 0.5).any()
    # Ventricles: CSF-dominated voxels deep inside the brain, >= 16 mm from its surface
    # (so not the sulcal/extra-axial rim).
    interior = ndimage.binary_erosion(mask, iterations=4)
    assert interior.any()
    assert ((csf > 0.5) & interior).sum() >= 10
    # The crop keeps world coordinates: the MNI origin (0, 0, 0) lies inside the volume.
    origin_vox = np.linalg.solve(affine, [0.0, 0.0, 0.0, 1.0])[:3]
    assert (origin_vox >= 0).all() and (origin_vox < np.array(mask.shape)).all()


def test_voxel_volume_follows_the_affine_the_geometry_uses(tmp_path):
    # qform 1 mm, sform 1.2 mm (qform != sform, as after FSL): nibabel's affine, and so every
    # world-unit measure, is the sform's; the header's zooms follow the qform.
    from phyjax.data.volumes import Volume

    qform, sform = np.eye(4), np.diag([1.2, 1.2, 1.2, 1.0])
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    path = str(tmp_path / "scan.nii.gz")
    nib.save(img, path)
    assert np.allclose(nib.load(path).header.get_zooms()[:3], 1.0)
    v = Volume("01", "a", None, np.zeros((4, 5, 6), np.float32), np.ones((4, 5, 6), bool), path)
    assert v.voxel_mm3 == pytest.approx(1.2 ** 3)


def test_each_scan_gets_its_own_acquisitions_mask_in_native_space(tmp_path):
    """Masks are matched by their entities: an ``acq-slow`` scan gets the ``acq-slow`` mask,
    a ``run-2`` scan the ``run-2`` one, and a template-space mask is never used as a native
    one (before, the first file by name was taken: the acq-fast, run-1 or MNI mask)."""
    root = tmp_path

    def write(rel, sidecar=True):
        path = root / rel
        os.makedirs(path.parent, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(path))
        if sidecar:
            (root / rel.replace(".nii.gz", ".json")).write_text(json.dumps({"InstitutionName": "X"}))

    write("sub-01/ses-A/anat/sub-01_ses-A_T1w.nii.gz")
    write("derivatives/p/sub-01/anat/sub-01_desc-brain_mask.nii.gz", sidecar=False)
    write("sub-02/anat/sub-02_T1w.nii.gz")
    write("derivatives/p/sub-02/anat/sub-02_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
          sidecar=False)
    write("sub-03/anat/sub-03_acq-slow_T1w.nii.gz")
    for acq in ("fast", "slow"):
        write(f"derivatives/p/sub-03/anat/sub-03_acq-{acq}_desc-brain_mask.nii.gz", sidecar=False)
    write("sub-04/anat/sub-04_run-2_T1w.nii.gz")
    for run in (1, 2):
        write(f"derivatives/p/sub-04/anat/sub-04_run-{run}_desc-brain_mask.nii.gz", sidecar=False)
    write("sub-05/anat/sub-05_run-1_T1w.nii.gz")
    write("derivatives/p/sub-05/anat/sub-05_space-T1w_desc-brain_mask.nii.gz", sidecar=False)
    found = {s.subject: s.mask_path and os.path.basename(s.mask_path)
             for s in bids.scan_bids(str(root), strict=False, require_protocols=False)}
    assert found == {"01": "sub-01_desc-brain_mask.nii.gz", "02": None,
                     "03": "sub-03_acq-slow_desc-brain_mask.nii.gz",
                     "04": "sub-04_run-2_desc-brain_mask.nii.gz",
                     "05": "sub-05_space-T1w_desc-brain_mask.nii.gz"}


def test_streamed_volumes_of_sites_differing_in_punctuation_keep_their_own_files(tmp_path):
    """Site labels come from sidecars ("Prisma fit"); a file-name-safe key must still be
    unique (before, "Prisma fit" and "Prisma_fit" wrote the same .npy)."""
    from phyjax.data.store import load_array, safe_name, save_array

    a = save_array(str(tmp_path), "01_Prisma fit_image", np.zeros((2, 2, 2), np.float32))
    b = save_array(str(tmp_path), "01_Prisma_fit_image", np.ones((2, 2, 2), np.float32))
    assert a != b
    assert load_array(a).max() == 0 and load_array(b).min() == 1
    assert safe_name("01_siteA_image") == "01_siteA_image"     # plain keys are unchanged


def test_a_subjects_scans_on_different_grids_share_one_working_grid(tmp_path):
    """Two co-registered sessions of one head on other matrices and voxel sizes: both land on
    one grid (before, each was centred on its own mask's box, a fraction of a voxel apart, so
    every voxel-wise comparison between them was shifted)."""
    from phyjax.data.bids import Scan
    from phyjax.data.sidecar import read_protocol
    from phyjax.data.volumes import load_scans

    sidecar = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 0.02,
               "EchoTime": 0.004, "FlipAngle": 25, "MagneticFieldStrength": 3}
    scans = []
    for site, zoom, origin in (("a", 1.0, 0.0), ("b", 1.3, 0.5)):
        n = round(40 / zoom)
        centre = origin + zoom * (np.arange(n) - n / 2)
        x, y, z = np.meshgrid(centre, centre, centre, indexing="ij")
        brain = (x ** 2 / 14 ** 2 + y ** 2 / 16 ** 2 + z ** 2 / 12 ** 2) < 1
        affine = np.diag([zoom, zoom, zoom, 1.0])
        affine[:3, 3] = centre[0]
        path, mask_path = str(tmp_path / f"{site}.nii.gz"), str(tmp_path / f"{site}_mask.nii.gz")
        nib.save(nib.Nifti1Image((100 * brain + 10).astype(np.float32), affine), path)
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), mask_path)
        scans.append(Scan(subject="01", site=site, path=path, mask_path=mask_path,
                          reading=read_protocol(sidecar, f"{site}.json")))
    vols = load_scans(scans)["01"]
    np.testing.assert_array_equal(vols["a"].affine, vols["b"].affine)
    assert vols["a"].image.shape == vols["b"].image.shape
    a, b = vols["a"].mask, vols["b"].mask
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9            # the same head, aligned
