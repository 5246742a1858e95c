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
