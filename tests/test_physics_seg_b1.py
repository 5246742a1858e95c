"""The physics branch told the transmit field B1+ (``model.b1_input``; issue 16's next step):
the flip the tissue sees, a branch that is local in the map, training batches with and without
the map, the evaluation method and segment mode's map reading."""

import json
import os

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from conftest import load_config

from phyjax.data.nifti import InputError
from phyjax.data.sidecar import protocol_to_sidecar
from phyjax.physics import mp2rage, signal, tissues
from phyjax.physics.sequences import Protocol
from phyjax.segment.model import (
    FLIP_INDEX,
    SINCOS_SLICE,
    SegmentationUNet,
    contrast_features,
    physics_vector,
    scale_flip,
)

MPRAGE = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9, flip_angle_deg=9.0).replace(
    tr_readout=0.007, n_readouts=160.0)
SPGR = Protocol.from_degrees("spgr", tr=0.02, te=0.005, flip_angle_deg=25.0)
TISSUES = [tissues.tissue_parameters(3.0)[t] for t in ("wm", "gm", "csf")]


def test_scale_flip_gives_the_contrast_the_tissue_sees_under_b1():
    """Oracle: contrast_features of scale_flip(p, b1) are the WM/GM/CSF signals of
    phyjax.physics.mp2rage.mprage_full at flip b1 x 9 deg (MPRAGE) and of signal.spgr with its
    own b1 argument (SPGR), normalized -- and differ from the nominal contrast."""
    b1 = np.array([[0.85, 1.0, 1.15]], np.float32)                      # (B=1, 3 "voxels")
    got = np.asarray(contrast_features(scale_flip(physics_vector(MPRAGE)[None], b1)))
    assert got.shape == (1, 3, 3)
    for k, b in enumerate(b1[0]):
        s = np.array([float(mp2rage.mprage_full(t.t1, t.pd, mp2rage.MPRAGEProtocol(
            tr=2.4, ti=0.9, flip_angle=np.deg2rad(9.0) * b, readout_tr=0.007, n_readouts=160,
            te=0.003), t2star=t.t2star)) for t in TISSUES])
        np.testing.assert_allclose(got[0, k], s / np.abs(s).max(), rtol=1e-4, atol=1e-6)
    assert np.abs(got[0, 0] - got[0, 2]).max() > 0.02       # B1+ moves the MPRAGE contrast
    got = np.asarray(contrast_features(scale_flip(physics_vector(SPGR)[None], b1)))
    for k, b in enumerate(b1[0]):
        s = np.array([float(signal.spgr(t.t1, t.t2star, t.pd, 0.02, 0.005, np.deg2rad(25.0),
                                        float(b))) for t in TISSUES])
        np.testing.assert_allclose(got[0, k], s / np.abs(s).max(), rtol=1e-5)
    # only the flip and its sine / cosine change
    v = np.asarray(physics_vector(SPGR))
    out = np.asarray(scale_flip(v[None], np.array([[1.1]], np.float32)))[0, 0]
    changed = np.flatnonzero(~np.isclose(out, v))
    assert set(changed) <= {FLIP_INDEX, SINCOS_SLICE.start, SINCOS_SLICE.start + 1}
    assert out[FLIP_INDEX] == pytest.approx(1.1 * v[FLIP_INDEX])
    assert out[SINCOS_SLICE.start] == pytest.approx(np.sin(1.1 * v[FLIP_INDEX]))


def _init(model, *args):
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                        shapes)


def _branch(model, v, x, p, b1):
    """The branch's features (sown by ``__call__``)."""
    _, state = model.apply(v, x, p, None, b1, mutable=["intermediates"])
    return state["intermediates"]["branch"][0]


@pytest.mark.parametrize("conditioning", ["add+contrast", "film"])
def test_b1_branch_is_local_and_knows_when_the_map_is_missing(conditioning):
    x = jnp.asarray(np.random.default_rng(1).random((1, 8, 8, 1)), jnp.float32)
    p = jnp.asarray(physics_vector(MPRAGE))[None]
    model = SegmentationUNet(features=(4, 8), branch_width=8, conditioning=conditioning,
                             b1_input=True)
    v = _init(model, x, p)
    ones = jnp.ones((1, 8, 8))
    unknown = jnp.full((1, 8, 8), jnp.nan)
    base = model.apply(v, x, p, None, ones)
    # no map = NaN everywhere; knowing B1+ = 1 is not the same as not knowing it
    np.testing.assert_array_equal(model.apply(v, x, p), model.apply(v, x, p, None, unknown))
    assert float(jnp.abs(model.apply(v, x, p, None, unknown) - base).max()) > 1e-4
    # the branch's features at a voxel depend on that voxel's B1+ alone
    changed = ones.at[0, 2, 5].set(1.2)
    h0, h1 = (_branch(model, v, x, p, b) for b in (ones, changed))
    assert h0.shape == (1, 8, 8, 8)
    diff = np.asarray(jnp.abs(h1 - h0).max(-1))[0]
    assert diff[2, 5] > 1e-4 and np.delete(diff.ravel(), 2 * 8 + 5).max() == 0.0
    # ... and a uniform map is the per-image branch at that flip
    flat = _branch(model, v, x, p, jnp.full((1, 8, 8), 1.1))
    np.testing.assert_allclose(flat, jnp.broadcast_to(flat[:, :1, :1], flat.shape), atol=1e-6)
    with pytest.raises(ValueError, match="b1 map of shape"):
        model.apply(v, x, p, None, jnp.ones((1, 4, 4)))


def test_slice_bank_keeps_each_volume_b1_field_and_batches_hide_it_on_request():
    from phyjax.data import simulated
    from phyjax.physics import scanner
    from phyjax.segment import simulate

    heads = simulated.anatomies(1, 0, 6, 4.0, 0.05, 0.03)
    effects = {"b1_scale": (0.9, 1.1), "b1_curvature": (0.05, 0.15), "bias_amplitude": (0.0, 0.2),
               "noise_fraction": (0.01, 0.03), "slice_fwhm": (0.0, 1.0), "gain": (0.5, 2.0)}
    bank = simulate.SliceBank(heads, ("spgr",), simulate.PAPER_RANGES, 2, effects, 2, 0.15, 1, 3)
    assert bank.b1.shape == bank.images.shape
    # volume 1's field: the scanner effects drawn for it (the bank's own key scheme)
    k_fx, _ = jax.random.split(jax.random.fold_in(jax.random.key(3), 1))
    fx = scanner.sample_scanner_effects(k_fx, **effects)
    field = np.asarray(scanner.b1_field(heads[0].mask.shape, fx.b1_scale, fx.b1_curvature))
    inside = bank.pads[0][0], bank.pads[1][0]
    got = bank.b1[1][:, inside[0]:inside[0] + field.shape[0], inside[1]:inside[1] + field.shape[1]]
    np.testing.assert_allclose(got, np.moveaxis(field, -1, 0), rtol=2e-3)
    assert np.isnan(bank.b1).any() == any(sum(p) > 0 for p in bank.pads)
    never, always, half = (bank.batch(5, 64, 0, f) for f in (0.0, 1.0, 0.5))
    for k in ("x", "y", "params", "noise"):                     # the same draws otherwise
        np.testing.assert_array_equal(never[k], always[k])
    assert np.isnan(never["b1"]).all()
    told = np.isfinite(half["b1"]).any(axis=(1, 2))
    assert 10 < told.sum() < 54                                  # about half of 64
    np.testing.assert_array_equal(half["b1"][told], always["b1"][told])


def test_config_refuses_the_b1_method_without_the_b1_branch():
    from phyjax.experiments.physics_seg import check_config

    config = load_config("physics_seg")
    with config.unlocked():
        config.eval.methods = ("physics", "physics_b1map")
    with pytest.raises(InputError, match="physics_b1map.*b1_input=True"):
        check_config(config)
    with config.unlocked():
        config.model.b1_input = True
        config.train.b1_known = 1.5
    with pytest.raises(InputError, match=r"config\.train\.b1_known=1\.5"):
        check_config(config)
    with config.unlocked():
        config.train.b1_known = 0.5
    check_config(config)


def _saved_segmenter(folder, b1_input):
    """A small readout-trained physics U-Net saved as training would (weights drawn with NumPy:
    this tests reading, not learning)."""
    from phyjax.experiments.physics_seg import ranges_of, training_ranges
    from phyjax.segment.train import Segmenter, make_model

    config = load_config("physics_seg")
    settings = {"features": [4, 8], "physics": True, "branch_width": 8,
                "conditioning": "add+contrast", "condition_encoder": False, "param_mean": [],
                "param_std": [], "contrast": "signed", "context": 1, "voxel_mm": 6.0,
                "ranges": ranges_of(config), "training_ranges": training_ranges(config),
                "families": ["mprage", "spgr"], "gold": {}, "reconstruction": "magnitude",
                "physics_size": len(physics_vector(MPRAGE)), "b1_input": b1_input}
    model = make_model(settings)
    x, p = jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, len(physics_vector(MPRAGE))))
    Segmenter(settings, _init(model, x, p)).save(folder)
    return folder


def _t1w(folder):
    shape = (24, 28, 24)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((g - c) / (s / 2.5)) ** 2 for g, c, s in zip(grid, centre, shape)))
    image = np.where(r < 0.6, 1.0, np.where(r < 0.9, 0.7, 0.3)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    path = os.path.join(folder, "sub-01_T1w.nii.gz")
    nib.save(nib.Nifti1Image(image, affine), path)
    nib.save(nib.Nifti1Image((r < 1.1).astype(np.uint8), affine),
             os.path.join(folder, "mask.nii.gz"))
    with open(os.path.join(folder, "sub-01_T1w.json"), "w") as f:
        json.dump(protocol_to_sidecar(MPRAGE), f)
    return path, r


def test_segment_mode_reads_a_b1_map_in_percent_on_its_own_grid(tmp_path):
    from phyjax.experiments import registry

    model = _saved_segmenter(str(tmp_path / "model_b1"), True)
    path, _ = _t1w(str(tmp_path))
    # a coarser B1+ map in percent (hMRI-style), 0 outside the head, its own affine
    shape = (12, 14, 12)
    g = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, np.float32) - 1) / 2
    rb = np.sqrt(sum(((a - c) / (s / 2.0)) ** 2 for a, c, s in zip(g, centre, shape)))
    b1 = np.where(rb < 1.3, 90.0 - 10.0 * rb, 0.0).astype(np.float32)
    b1_path = str(tmp_path / "sub-01_TB1map.nii.gz")
    nib.save(nib.Nifti1Image(b1, np.diag([8.0, 8.0, 8.0, 1.0])), b1_path)
    config = load_config("physics_seg")
    with config.unlocked():
        config.mode = "segment"
        config.segment.input = path
        config.segment.mask = str(tmp_path / "mask.nii.gz")
        config.segment.model = model
        config.segment.output = str(tmp_path / "without")
    without = registry.run(config, str(tmp_path))
    with config.unlocked():
        config.segment.b1_map = b1_path
        config.segment.output = str(tmp_path / "with")
    out = registry.run(config, str(tmp_path))
    with open(os.path.join(out, "sub-01_label-GM_probseg.json")) as f:
        meta = json.load(f)
    assert meta["B1plusMap"] == os.path.abspath(b1_path)
    assert 0.80 < meta["B1plusMedian"] < 0.90          # percent read as a ratio
    with open(os.path.join(without, "sub-01_label-GM_probseg.json")) as f:
        assert json.load(f)["B1plusMap"] is None
    a, b = (np.asarray(nib.load(os.path.join(d, "sub-01_label-GM_probseg.nii.gz")).dataobj)
            for d in (without, out))
    assert np.abs(a - b).max() > 1e-4                  # the map reached the branch
    # the same map declared as a ratio: a median of ~85 is refused, naming the file
    with config.unlocked():
        config.segment.b1_units = "ratio"
        config.segment.output = str(tmp_path / "ratio")
    with pytest.raises(InputError, match=r"TB1map\.nii\.gz: median relative B1\+ .* 8\d"):
        registry.run(config, str(tmp_path))
    # a segmenter without the B1+ branch refuses a map before any work
    with config.unlocked():
        config.segment.b1_units = "auto"
        config.segment.model = _saved_segmenter(str(tmp_path / "model_plain"), False)
        config.segment.output = str(tmp_path / "plain")
    with pytest.raises(InputError, match="does not read a B1\\+ map"):
        registry.run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "plain")
