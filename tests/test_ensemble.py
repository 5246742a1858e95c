"""Deep ensembles of the slice networks (``config.model.ensemble`` / ``config.unet.ensemble``)."""

import json
import os

import conftest
import jax
import numpy as np
import pytest

from phyjax import methods
from phyjax.data.nifti import InputError
from phyjax.data.split import Split
from phyjax.methods.networks import check_ensemble, member_config, predict_volume
from phyjax.methods.unet import UNetHarmonizer
from phyjax.physics.sequences import Protocol

PROTOCOL = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=20.0,
                                 field_strength=3.0)


def _scaled_predict(params, source, mask, code, b0):
    """A slice 'network' whose output depends on its parameters and is not mirror-symmetric."""
    ramp = 1.0 + 0.1 * np.arange(source.shape[1])[None, :, None, None]
    c = source.shape[-1] // 2
    return {"harmonized": params["a"] * source[..., c:c + 1] * ramp + params["b"],
            "other": params["b"] * source[..., c:c + 1] ** 2}


def _run(params, image, tta="none"):
    return predict_volume(_scaled_predict, params, image, np.ones(image.shape, bool), PROTOCOL,
                          depth=2, batch_size=4, context=1, tta=tta, mirror=0)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_an_ensemble_outputs_the_mean_of_its_members(tta):
    image = np.random.default_rng(0).random((9, 6, 7)).astype(np.float32)
    members = [{"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 0.5}, {"a": -1.0, "b": 2.0}]
    singles = [_run(p, image, tta) for p in members]
    both = _run(members, image, tta)
    for k in singles[0]:
        np.testing.assert_allclose(both[k], np.mean([s[k] for s in singles], axis=0),
                                   rtol=1e-6, atol=1e-7)
    # closed form for the linear output: the mean of the members' coefficients
    mean = {"a": np.mean([p["a"] for p in members]), "b": np.mean([p["b"] for p in members])}
    np.testing.assert_allclose(both["harmonized"], _run(mean, image, tta)["harmonized"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_run(members[:1], image, tta)["other"], singles[0]["other"])


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "two"])
def test_check_ensemble_refuses_what_is_not_a_number_of_networks(bad):
    with pytest.raises(InputError, match="config.model.ensemble=.*whole number"):
        check_ensemble(bad, "config.model.ensemble")
    assert check_ensemble(3.0) == 3 and check_ensemble(1) == 1


def test_member_config_shifts_the_seed_and_leaves_the_config_alone():
    cfg = conftest.load_config("benchmark", "debug")
    with cfg.unlocked():
        cfg.model.ensemble = 3
    m = member_config(cfg, 2, "model")
    assert m.seed == cfg.seed + 2 and m.model.ensemble == 1
    assert cfg.model.ensemble == 3 and cfg.unet.ensemble == 3   # the unet follows the model


def _volumes(tmp_path):
    return conftest.tiny_volumes(tmp_path, shape=(8, 8, 5))


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_unet_ensemble_is_its_seeds_networks_averaged_and_saves_whole(tmp_path):
    volumes = _volumes(tmp_path)
    train = Split(train=("01", "02", "03"), test=("04",)).training_set(volumes, "ref")
    cfg = conftest.load_config("benchmark", "debug")
    with cfg.unlocked():
        cfg.model.ensemble = 2            # the benchmark's U-Net follows PhyCHarm's setting
        cfg.unet.tta = "none"
    h = methods.fit("unet", cfg, train, workdir=str(tmp_path / "u"), progress=False)
    assert isinstance(h.params, list) and len(h.params) == 2 and h.cfg["ensemble"] == 2
    assert not _leaves_equal(h.params[0], h.params[1])
    assert os.path.isdir(tmp_path / "u" / "member1" / "checkpoints")   # resumes on its own
    # member 1 is the network a single run with seed + 1 trains (a second computation)
    alone = member_config(cfg, 1, "model")
    single = methods.fit("unet", alone, train, workdir=str(tmp_path / "s1"), progress=False)
    assert _leaves_equal(single.params, h.params[1])
    # the ensemble's image is the mean of its members' images, through the one site map
    # learned for the ensemble (the benchmark's default calibrate=sites, shared with PhyCHarm)
    from phyjax.methods.calibration import calibrate_output

    assert h.cfg["calibrate"] == "sites" and h.cfg["site_maps"]
    v = volumes["04"]["x"]
    base = {"name": h.name, "fitted_on": h.fitted_on, "target_site": h.target_site,
            "target_protocol": h.target_protocol, "grid_mm": h.grid_mm}
    one_cfg = {k: val for k, val in h.cfg.items() if k != "ensemble"}
    one_cfg["calibrate"] = "none"
    images = [UNetHarmonizer(p, one_cfg, h.batch_size, **base).harmonize(v) for p in h.params]
    got = h.harmonize(v)
    mean = calibrate_output({"harmonized": np.mean(images, axis=0)}, v.mask, "sites",
                            site_maps=h.cfg["site_maps"], protocol=v.protocol)["harmonized"]
    np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)
    assert np.abs(images[0] - images[1]).max() > 1e-4
    loaded = methods.load(methods.save(h, str(tmp_path / "saved")))
    assert len(loaded.params) == 2
    np.testing.assert_array_equal(loaded.harmonize(v), got)
    with open(tmp_path / "saved" / "harmonizer.json") as f:
        assert json.load(f)["state"]["unet"]["ensemble"] == 2


def test_a_bad_ensemble_setting_fails_before_training(tmp_path):
    volumes = _volumes(tmp_path)
    train = Split(train=("01", "02", "03"), test=("04",)).training_set(volumes, "ref")
    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.model.ensemble = 0
    with pytest.raises(InputError, match="config.model.ensemble=0"):
        methods.fit("phycharm", cfg, train, workdir=str(tmp_path / "p"), progress=False)
    assert not os.path.exists(tmp_path / "p" / "checkpoints")
