"""Outputs written where and as the user asked, or a clear error before any work (issue 17)."""

import os

import nibabel as nib
import numpy as np
import pytest

from phyjax.data.nifti import InputError, load_volume, save_like
from phyjax.experiments.harmonize import output_path, output_stem


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


class _Identity:
    """A harmonizer that returns its (normalized) input: what comes back must be that input."""
    name, grid_mm, target_protocol = "identity", (1.0, 1.0, 1.0), None

    def harmonize(self, volume):
        return np.where(volume.mask, volume.image, 0.0)


def _ellipsoid_scan(shape=(40, 44, 36)):
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    mask = ((x - 20) ** 2 / 15 ** 2 + (y - 22) ** 2 / 17 ** 2 + (z - 18) ** 2 / 13 ** 2) < 1
    return x, y, mask


@pytest.mark.parametrize("resolution", ["native", "training"])
@pytest.mark.parametrize("degrees", [0.5, 20.0])
def test_an_oblique_scan_keeps_its_brain_edge(resolution, degrees):
    """An oblique scan (a 0.5 degree tilt is ordinary) goes to an axis-aligned grid and back:
    the brain's edge voxels must not be blended with the zeros outside the mask (before, an
    identity harmonizer returned a constant brain as low as 0.34 at its edge)."""
    from phyjax.experiments.harmonize import harmonize_image

    _, _, mask = _ellipsoid_scan()
    data = np.where(mask, 100.0, 40.0).astype(np.float32)      # constant brain, bright skull
    t = np.deg2rad(degrees)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    img = nib.Nifti1Image(data, affine)
    out = harmonize_image(_Identity(), data, img, mask, None, "x.nii.gz", resolution)
    np.testing.assert_allclose(out["harmonized"][mask], 1.0, atol=2e-3)
    assert np.all(out["harmonized"][~mask] == 0)


def test_a_permuted_anisotropic_scan_keeps_its_resolution_on_each_world_axis():
    """Array axes (A, S, R) with 1.2 mm along R: the working grid has 1.2 mm along R (before,
    the array-order zooms (1, 1, 1.2) put it on S), and an identity harmonization returns the
    scan's own intensities."""
    from phyjax.data import geometry
    from phyjax.data.volumes import normalize
    from phyjax.experiments.harmonize import harmonize_image, working_grid

    x, y, mask = _ellipsoid_scan()
    data = ((100 + 20 * np.sin(x / 3.0) + 10 * np.cos(y / 4.0)) * mask + 5 * ~mask
            ).astype(np.float32)
    affine = np.array([[0, 0, 1.2, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert geometry.world_zooms(affine) == (1.2, 1.0, 1.0)
    assert geometry.zooms(affine) == (1.0, 1.0, 1.2)
    grid, *_ = working_grid(data, affine, mask, None)
    assert geometry.zooms(grid) == (1.2, 1.0, 1.0)
    out = harmonize_image(_Identity(), data, nib.Nifti1Image(data, affine), mask, None,
                          "x.nii.gz", "native")["harmonized"]
    np.testing.assert_allclose(out[mask], normalize(data, mask)[mask], rtol=1e-4)


def test_a_0_255_mask_on_another_grid_keeps_its_size():
    """A mask stored as 0/255 is binarized before it is interpolated onto the image's grid
    (before, its interpolated values > 0.5 grew it by ~60 % on a 2x finer grid)."""
    from phyjax.data.geometry import mask_on_grid

    _, _, mask = _ellipsoid_scan()
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    shape = tuple(2 * n for n in mask.shape)
    as01 = mask_on_grid(mask.astype(np.float32), coarse, shape, fine)
    as255 = mask_on_grid(255 * mask.astype(np.uint8), coarse, shape, fine)
    np.testing.assert_array_equal(as255, as01)
    assert abs(as01.sum() / (8 * mask.sum()) - 1) < 0.1      # 2x finer in each axis


def test_the_sidecar_stem_cuts_only_the_suffix():
    assert output_stem("/data/T1.nii_results/sub-01_harm.nii.gz") == "/data/T1.nii_results/sub-01_harm"
    assert output_stem("out/x.nii") == "out/x"


def test_a_4d_singleton_scan_without_a_mask_gets_a_3d_mask(tmp_path):
    from phyjax.experiments.harmonize import load_mask

    _, _, mask = _ellipsoid_scan()
    path = str(tmp_path / "t1w.nii.gz")
    nib.save(nib.Nifti1Image(np.where(mask, 100.0, 0.0).astype(np.float32)[..., None],
                             np.eye(4)), path)
    image, img = load_volume(path)
    got = load_mask("", path, img)
    assert got.shape == image.shape == mask.shape
    np.testing.assert_array_equal(got, mask)
