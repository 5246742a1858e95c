"""Outputs written where and as the user asked, or a clear error before any work (issue 17)."""

import os

import nibabel as nib
import numpy as np
import pytest

from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.experiments.harmonize import output_path


def test_output_names(tmp_path):
    assert output_path("", "/x/sub-01_T1w.nii.gz", "/d") == "/d/sub-01_T1w_harmonized.nii.gz"
    assert (output_path(str(tmp_path), "/x/brain.mgz", "/d")
            == str(tmp_path / "brain_harmonized.nii.gz"))
    assert output_path("out.nii", "/x/a.nii", "/d") == "out.nii"
    for bad in ("result", "result.mgz", "out.nii.gz.bak"):
        with pytest.raises(InputError, match="nii"):
            output_path(bad, "/x/a.nii.gz", "/d")


def test_an_mgz_input_is_written_as_nifti_with_its_affine(tmp_path):
    """FreeSurfer .mgz has no q/sform codes: the output is a NIfTI with the same affine."""
    affine = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -100], [0, -1, 0, 110], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    src = tmp_path / "brain.mgz"
    nib.save(nib.MGHImage(data, affine), src)
    image, img = load_volume(str(src))
    out = save_like(image * 2, img, str(tmp_path / "brain_harmonized.nii.gz"))
    back = nib.load(out)
    assert isinstance(back, nib.Nifti1Image) and os.path.exists(out)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.get_fdata(), 2 * data, rtol=1e-6)


def _harmonization(with_maps: bool):
    rng = np.random.default_rng(0)
    outs = {"harmonized": rng.random((6, 5, 4)).astype(np.float32)}
    if with_maps:
        outs.update(t1=np.full((6, 5, 4), 1.2, np.float32), m0=np.full((6, 5, 4), 0.8, np.float32))
    return outs, nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))


def test_a_failed_sidecar_write_leaves_no_harmonized_image(tmp_path):
    """The image is written last: a sidecar that cannot be written (a folder in its place)
    stops the write before any image appears without its provenance."""
    from phyjax.data.sidecar import Reading
    from phyjax.experiments.harmonize import write_outputs

    outs, img = _harmonization(with_maps=True)
    stem = str(tmp_path / "t1w_harmonized")
    os.makedirs(stem + ".json")
    with pytest.raises(IsADirectoryError):
        write_outputs(outs, img, stem + ".nii.gz", stem + ".json", stem, {"a": 1},
                      Reading(source="t", values={"b0_t": 3.0}), "t1w.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["t1w_harmonized.json"]   # the folder only


def test_maps_of_an_earlier_harmonization_are_not_left_beside_a_new_image(tmp_path):
    """PhyCHarm writes T1/M0 maps beside its image; a later method without maps, harmonizing
    to the same name, removes them instead of leaving them to pass as its own."""
    from phyjax.data.sidecar import Reading
    from phyjax.experiments.harmonize import write_outputs

    stem, reading = str(tmp_path / "h"), Reading(source="t", values={"b0_t": 3.0})
    outs, img = _harmonization(with_maps=True)
    write_outputs(outs, img, stem + ".nii.gz", stem + ".json", stem, {}, reading, "in.nii.gz")
    maps = ["h_M0map.json", "h_M0map.nii.gz", "h_T1map.json", "h_T1map.nii.gz"]
    assert sorted(os.listdir(tmp_path)) == sorted(["h.json", "h.nii.gz"] + maps)
    np.testing.assert_allclose(nib.load(stem + "_T1map.nii.gz").get_fdata(), 1.2, rtol=1e-6)
    assert np.allclose(nib.load(stem + ".nii.gz").affine, img.affine)
    plain, _ = _harmonization(with_maps=False)
    write_outputs(plain, img, stem + ".nii.gz", stem + ".json", stem, {}, reading, "in.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["h.json", "h.nii.gz"]
