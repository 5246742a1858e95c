"""Slicing planes of the slice networks (``config.model.views`` / ``config.unet.views``):
training on axial, coronal and sagittal slices and averaging the planes' outputs."""

import json

import conftest
import jax
import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d

from phyjax import methods
from phyjax.data.nifti import InputError
from phyjax.data.slices import (VIEWS, check_views, unview_volume, view_cycle, view_grids,
                                view_volume)
from phyjax.data.split import Split
from phyjax.data.store import SliceStore
from phyjax.methods.networks import SlicePairs, mirror_batch, predict_volume
from phyjax.physics.sequences import Protocol

PROTOCOL = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=20.0,
                                 field_strength=3.0)
ALL = ("axial", "coronal", "sagittal")


def test_views_move_their_slicing_axis_last_and_back():
    vol = np.random.default_rng(0).random((5, 6, 7))
    assert view_volume(vol, "axial").shape == (5, 6, 7)
    assert view_volume(vol, "coronal").shape == (5, 7, 6)
    assert view_volume(vol, "sagittal").shape == (6, 7, 5)
    for v in VIEWS:
        np.testing.assert_array_equal(unview_volume(view_volume(vol, v), v), vol)
        z = 3
        # slice z of a view is the volume's plane z along that view's axis
        np.testing.assert_array_equal(view_volume(vol, v)[..., z],
                                      np.take(vol, z, axis=VIEWS[v]))
    grids = view_grids((5, 6, 7), 3, ALL)        # multiples of 4 in-plane
    assert grids["axial"][1] == (8, 8) and grids["coronal"][1] == (8, 8)
    assert grids["sagittal"][1] == (8, 8)
    assert [view_cycle(i, 2, ALL) for i in range(7)] == [
        "axial", "axial", "coronal", "coronal", "sagittal", "sagittal", "axial"]
    assert [view_cycle(i, 3, ("axial",)) for i in range(4)] == ["axial"] * 4


def test_brain_slices_keep_the_slices_with_enough_brain():
    """``min_fraction`` of the largest slice's brain area selects slices; 0 keeps every slice
    with any brain and never an empty one (counted by hand on a mask of known areas)."""
    from phyjax.data.slices import brain_slices

    mask = np.zeros((4, 5, 6), bool)
    for z, area in enumerate((0, 1, 4, 20, 10, 0)):
        mask.reshape(-1, 6)[:area, z] = True
    assert brain_slices(mask, 0.0).tolist() == [1, 2, 3, 4]
    assert brain_slices(mask, 0.15).tolist() == [2, 3, 4]        # 3 voxels and more
    assert brain_slices(mask, 0.5).tolist() == [3, 4]
    assert brain_slices(mask, 1.0).tolist() == [3]


@pytest.mark.parametrize("bad", [(), ("axial", "axial"), ("oblique",), ("axial", "Coronal")])
def test_check_views_refuses_unknown_repeated_or_no_planes(bad):
    with pytest.raises(InputError, match="config.model.views"):
        check_views(bad)
    assert check_views("coronal") == ("coronal",) and check_views(["sagittal"]) == ("sagittal",)


def _context_mean(params, source, mask, code, b0):
    """A slice 'network' that averages its input's neighbour channels: on a volume it is a
    box filter along the slicing axis (edge slices repeated)."""
    return {"harmonized": source.mean(-1, keepdims=True) * params["a"],
            "pointwise": source[..., source.shape[-1] // 2:][..., :1] ** 2}


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_multi_view_inference_averages_every_planes_output_on_the_volume_axes(tta):
    image = np.random.default_rng(1).random((7, 9, 6)).astype(np.float32)
    mask = np.ones(image.shape, bool)
    context = 1

    def run(views):
        return predict_volume(_context_mean, {"a": 2.0}, image, mask, PROTOCOL, depth=2,
                              batch_size=4, context=context, tta=tta, mirror=0, views=views)

    def box(axis):      # the oracle: scipy's box filter along one axis, edges repeated
        return 2.0 * uniform_filter1d(image, 2 * context + 1, axis=axis, mode="nearest")

    for v in ALL:
        np.testing.assert_allclose(run((v,))["harmonized"], box(VIEWS[v]), rtol=1e-5,
                                   atol=1e-6)
    got = run(ALL)
    np.testing.assert_allclose(got["harmonized"], np.mean([box(a) for a in (0, 1, 2)], axis=0),
                               rtol=1e-5, atol=1e-6)
    # a voxel-wise output is the same whatever the planes
    np.testing.assert_allclose(got["pointwise"], image ** 2, rtol=1e-6)
    with pytest.raises(InputError, match="views"):
        run(("axial", "transverse"))


@pytest.mark.parametrize("view", ALL)
def test_a_mirrored_training_slice_is_the_slice_of_the_mirrored_volume(tmp_path, view):
    """Left-right mirroring of a batch, in every plane, against slicing the volume mirrored
    along its left-right (x) axis: a sagittal slice is its own mirror image, its neighbours
    swap sides."""
    vol = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32)
    flipped = vol[::-1]
    store = SliceStore(str(tmp_path), ((0, 0), (0, 0)))
    store.add("v", view_volume(vol, view))
    store.add("f", view_volume(flipped, view))
    n = view_volume(vol, view).shape[-1]
    z = np.arange(n)
    source = store.read("v", z, context=1)
    out = mirror_batch({"source": source, "code": np.ones((n, 3))}, 0, 0, 1.0, view)
    mirrored_z = n - 1 - z if view == "sagittal" else z
    np.testing.assert_array_equal(out["source"], store.read("f", mirrored_z, context=1))
    np.testing.assert_array_equal(out["code"], np.ones((n, 3)))


def test_slice_pairs_serve_each_plane_of_every_scan(tmp_path):
    volumes = conftest.tiny_volumes(tmp_path, shape=(6, 7, 5))
    train = Split(train=("01", "02"), test=("04",)).training_set(volumes, "ref")
    data = SlicePairs(train, depth=2, min_fraction=0.0, context=1, directory=str(tmp_path),
                      views=ALL)
    assert [data.view_of(i) for i in range(6)] == ["axial", "axial", "coronal", "coronal",
                                                   "sagittal", "sagittal"]
    for view in ALL:
        idx = np.arange(len(data.rows[("x", view)]))
        got = data.batch("x", idx, view)
        (px, _), (py, _) = data.grids[view][0]
        for j, (s, z) in enumerate(data.rows[("x", view)]):
            subject = data.subjects[s]
            want = np.take(volumes[subject]["x"].image, z, axis=VIEWS[view])
            h, w = want.shape
            np.testing.assert_array_equal(got["source"][j, px:px + h, py:py + w, 1], want)
            target = np.take(volumes[subject]["ref"].image, z, axis=VIEWS[view])
            np.testing.assert_array_equal(got["target"][j, px:px + h, py:py + w, 0], target)
        assert got["source"].shape[1:3] == data.grids[view][1]


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_multi_view_network_averages_its_planes_and_saves_them(tmp_path):
    volumes = conftest.tiny_volumes(tmp_path, shape=(8, 8, 6))
    train = Split(train=("01", "02", "03"), test=("04",)).training_set(volumes, "ref")
    cfg = conftest.load_config("benchmark", "debug")
    with cfg.unlocked():
        cfg.model.views = ALL              # the benchmark's U-Net follows PhyCHarm's setting
        cfg.model.tta = "none"
        cfg.model.calibrate = "none"       # the networks' own outputs (a site map is not linear)
        cfg.train.mirror = 0.5
    assert cfg.unet.views == ALL
    h = methods.fit("unet", cfg, train, workdir=str(tmp_path / "u"), progress=False)
    assert tuple(h.cfg["views"]) == ALL
    v = volumes["04"]["x"]
    got = h.harmonize(v)
    singles = []
    for view in ALL:
        h.cfg["views"] = (view,)
        singles.append(h.harmonize(v))
    h.cfg["views"] = ALL
    np.testing.assert_allclose(got, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)
    assert np.abs(singles[0] - singles[2]).max() > 1e-4     # the planes do differ
    loaded = methods.load(methods.save(h, str(tmp_path / "saved")))
    np.testing.assert_array_equal(loaded.harmonize(v), got)
    with open(tmp_path / "saved" / "harmonizer.json") as f:
        assert json.load(f)["state"]["unet"]["views"] == list(ALL)
    # PhyCHarm trains on the planes in turn too (a different network from the axial one)
    p = methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "p"), progress=False)
    with cfg.unlocked():
        cfg.model.views = ("axial",)
    axial = methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "a"), progress=False)
    assert tuple(p.cfg["views"]) == ALL and tuple(axial.cfg["views"]) == ("axial",)
    assert not _leaves_equal(p.params, axial.params)


def test_a_bad_views_setting_fails_before_training(tmp_path):
    volumes = conftest.tiny_volumes(tmp_path, shape=(8, 8, 6))
    train = Split(train=("01", "02", "03"), test=("04",)).training_set(volumes, "ref")
    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.model.views = ("axial", "axial")
    with pytest.raises(InputError, match="config.model.views"):
        methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "p"), progress=False)


def test_simulated_pairs_slice_the_same_heads_in_every_plane():
    """Oracle: each plane's target slices are the closed-form signal of the anatomy's maps
    (computed here again) sliced along that plane; the planes cycle batch by batch."""
    from phyjax.data import simulated
    from phyjax.data.slices import brain_slices, to_slices
    from phyjax.data.volumes import normalize
    from phyjax.physics import signal

    reference = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=1.0, flip_angle_deg=8)
    heads = simulated.anatomies(1, seed=0, voxel_size=4, deform_mm=2.0, jitter=0.05,
                                texture=0.03)
    pairs = simulated.SimulatedPairs([PROTOCOL], [reference], heads, depth=2, min_fraction=0.3,
                                     context=1, seed=0, views=ALL)
    maps, mask = heads[0].maps(3.0), heads[0].mask
    truth = normalize(np.asarray(signal.synthesize(reference, maps["t1"], maps["t2"],
                                                   maps["t2star"], maps["pd"])), mask)
    for view in ALL:
        pads = pairs.grids[view][0]
        z = brain_slices(view_volume(mask, view), 0.3)
        np.testing.assert_array_equal(pairs.view_rows[view][:, 1], z)
        got = pairs.slices(np.arange(len(z)), 0, 0, view)
        want = to_slices(view_volume(truth, view), pads)[z][..., None]
        np.testing.assert_allclose(got["target"], want, rtol=1e-4, atol=1e-5)
    assert [pairs.view_of(i) for i in range(4)] == list(ALL) + ["axial"]
    assert pairs.batch(1, 2, 0)[0]["source"].shape[1:3] == pairs.grids["coronal"][1]


def test_a_thick_slice_acquired_along_another_axis_is_the_transposed_acquisition():
    """``acquire(slice_axis=0)`` (sagittal thick slices) equals acquiring the maps with that
    axis moved last and moving it back (no position-dependent effects: B1+, bias, noise off),
    and differs from the axial acquisition."""
    from phyjax.data import synthetic
    from phyjax.physics.scanner import ScannerEffects

    rng = np.random.default_rng(3)
    shape = (7, 8, 9)
    maps = {"t1": rng.uniform(0.5, 2.0, shape).astype(np.float32),
            "t2": rng.uniform(0.05, 0.1, shape).astype(np.float32),
            "t2star": rng.uniform(0.03, 0.06, shape).astype(np.float32),
            "pd": rng.uniform(0.6, 1.0, shape).astype(np.float32)}
    mask = np.ones(shape, bool)
    effects = ScannerEffects(slice_fwhm=2.5)
    key = jax.random.key(0)
    sagittal = synthetic.acquire(maps, mask, PROTOCOL, effects, key, slice_axis=0)
    moved = {k: np.moveaxis(v, 0, -1) for k, v in maps.items()}
    want = np.moveaxis(synthetic.acquire(moved, np.moveaxis(mask, 0, -1), PROTOCOL, effects,
                                         key), -1, 0)
    np.testing.assert_allclose(sagittal, want, rtol=1e-5, atol=1e-6)
    axial = synthetic.acquire(maps, mask, PROTOCOL, effects, key)
    assert np.abs(axial - sagittal).max() > 1e-3
