"""Mirror test-time and training augmentation of the slice networks (``tta``, ``train.mirror``)."""

import numpy as np
import pytest

from phyjax.data.nifti import InputError
from phyjax.methods.networks import check_tta, mirror_axis, predict_volume
from phyjax.physics.sequences import Protocol

PROTOCOL = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=20.0,
                                 field_strength=3.0)


def _ramp_predict(params, source, mask, code, b0):
    """A slice 'network' that is not mirror-equivariant: the centre channel times a ramp
    along the slice's first axis (the volume's X), plus the mean of the context channels."""
    ramp = 1.0 + 0.1 * np.arange(source.shape[1])[None, :, None, None]
    c = source.shape[-1] // 2
    return {"harmonized": source[..., c:c + 1] * ramp + source.mean(-1, keepdims=True),
            "other": 2.0 * source[..., c:c + 1]}


def _run(image, tta="none", mirror=0, predict=_ramp_predict):
    mask = np.ones(image.shape, bool)
    return predict_volume(predict, None, image, mask, PROTOCOL, depth=2, batch_size=4,
                          context=1, tta=tta, mirror=mirror)


@pytest.mark.parametrize("mirror", [0, 1, 2])
def test_flip_is_the_mean_of_both_views_and_exactly_mirror_equivariant(mirror):
    image = np.random.default_rng(0).random((9, 6, 7)).astype(np.float32)
    plain = _run(image)
    tta = _run(image, "flip", mirror)
    # a second computation: two plain passes, the mirrored one mirrored back
    other = _run(np.flip(image, mirror))
    for k in plain:
        np.testing.assert_allclose(tta[k], 0.5 * (plain[k] + np.flip(other[k], mirror)),
                                   rtol=1e-6)
    if mirror == 0:     # the ramp runs along X: the augmentation changes the output there
        assert np.abs(tta["harmonized"] - plain["harmonized"]).max() > 0.05
    mirrored = _run(np.flip(image, mirror), "flip", mirror)
    for k in plain:
        np.testing.assert_allclose(mirrored[k], np.flip(tta[k], mirror), rtol=1e-6, atol=1e-7)


def test_flip_leaves_a_pointwise_network_unchanged():
    def pointwise(params, source, mask, code, b0):
        c = source.shape[-1] // 2
        return {"harmonized": 2.0 * source[..., c:c + 1] ** 2}

    image = np.random.default_rng(1).random((8, 5, 4)).astype(np.float32)
    got = _run(image, "flip", 0, pointwise)["harmonized"]
    np.testing.assert_allclose(got, 2.0 * image ** 2, rtol=1e-6)


def test_mirror_axis_is_the_affines_left_right_axis():
    assert mirror_axis(np.eye(4)) == 0                                  # RAS
    assert mirror_axis(np.diag([-1.0, -1.0, 1.0, 1.0])) == 0            # LPS (DICOM)
    sagittal = np.array([[0, 0, 1.2, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    assert mirror_axis(sagittal) == 2                                   # A, S, R stored
    coronal = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
    assert mirror_axis(coronal) == 0                                    # L, I, A stored
    c, s = np.cos(0.3), np.sin(0.3)                                     # oblique: 17 deg
    oblique = np.array([[0, c, -s, 0], [0, s, c, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])  # axial tilt
    assert mirror_axis(oblique) == 1                                    # S, R, A stored
    with pytest.raises(InputError, match="left-right"):
        mirror_axis(np.zeros((4, 4)))


def test_unknown_tta_is_refused():
    assert check_tta("flip") == "flip"
    with pytest.raises(InputError, match="config.model.tta='mirror'"):
        check_tta("mirror")
    with pytest.raises(InputError, match="tta"):
        _run(np.ones((4, 4, 3), np.float32), "rotate")


def test_mirror_batch_flips_whole_samples_by_a_pure_draw():
    from phyjax.methods.networks import check_mirror, mirror_batch, mirrored

    rng = np.random.default_rng(2)
    arrays = {"source": rng.random((64, 6, 5, 3)), "target": rng.random((64, 6, 5, 1)),
              "mask": rng.random((64, 6, 5, 1)) > 0.5, "code": rng.random((64, 4))}
    out = mirror_batch(arrays, 7, 0, 0.5)
    flipped = np.array([np.array_equal(out["source"][j], arrays["source"][j, ::-1])
                        for j in range(64)])
    kept = np.array([np.array_equal(out["source"][j], arrays["source"][j]) for j in range(64)])
    assert np.all(flipped ^ kept) and 16 < flipped.sum() < 48     # about half, each one way
    for key in ("target", "mask"):                                # the same samples, together
        np.testing.assert_array_equal(out[key][flipped], arrays[key][flipped][:, ::-1])
        np.testing.assert_array_equal(out[key][~flipped], arrays[key][~flipped])
    np.testing.assert_array_equal(out["code"], arrays["code"])    # not image-shaped
    again = mirror_batch(arrays, 7, 0, 0.5)                       # a pure function of the step
    np.testing.assert_array_equal(again["source"], out["source"])
    other = mirror_batch(arrays, 8, 0, 0.5)["source"]
    assert not np.array_equal(other, out["source"])
    assert mirror_batch(arrays, 7, 0, 0.0) is arrays
    assert all(np.array_equal(mirror_batch(arrays, 7, 0, 1.0)["source"][j],
                              arrays["source"][j, ::-1]) for j in range(64))
    wrapped = mirrored(lambda i: (arrays, "protocol", 3), 0, 0.5)(7)
    assert wrapped[1:] == ("protocol", 3)
    np.testing.assert_array_equal(wrapped[0]["source"], out["source"])
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(InputError, match="config.train.mirror"):
            check_mirror(bad)


@pytest.mark.parametrize("tta,mirror", [("none", 0), ("flip", 0), ("flip", 2)])
def test_z_slices_give_the_full_passes_outputs_on_those_slices_and_zero_elsewhere(tta, mirror):
    # Oracle: the full pass. Each slice sees its context neighbours whichever slices are run,
    # so the subset's outputs equal the full pass's there (also when the mirrored pass of
    # flip TTA reverses the slice axis, mirror=2, with an even and an odd slice count).
    for n_z in (7, 8):
        image = np.random.default_rng(n_z).random((9, 6, n_z)).astype(np.float32)
        mask = np.ones(image.shape, bool)
        z = np.arange(0, n_z, 2)
        args = (_ramp_predict, None, image, mask, PROTOCOL, 2, 4, 1, tta, mirror)
        full = predict_volume(*args)
        part = predict_volume(*args, z_slices=z)
        skipped = np.setdiff1d(np.arange(n_z), z)
        for k in full:
            np.testing.assert_allclose(part[k][..., z], full[k][..., z], rtol=1e-6)
            assert np.all(part[k][..., skipped] == 0)
    with pytest.raises(InputError, match="z_slices"):
        predict_volume(*args, z_slices=[n_z])
