"""Config variants: ``large`` changes what the README says it changes and nothing else, and the
benchmark's U-Net follows PhyCHarm's networks and budget."""

import conftest
import pytest


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("name", ["phycharm", "benchmark"])
def test_large_variant_changes_batch_channels_and_ensemble_only(name):
    default = _flat(conftest.load_config(name, "").to_dict())
    large = _flat(conftest.load_config(name, "large").to_dict())
    assert default.keys() == large.keys()
    changed = {k for k in default if default[k] != large[k]}
    expected = {"train.batch_size", "model.features", "model.ensemble"}
    if name == "benchmark":
        expected |= {"unet.features", "unet.ensemble"}   # the U-Net shares PhyCHarm's networks
    assert changed == expected
    assert large["train.batch_size"] == 2 * default["train.batch_size"]
    assert large["train.steps"] == default["train.steps"] == 800
    assert [int(1.5 * f) for f in default["model.features"]] == list(large["model.features"])
    assert (default["model.ensemble"], large["model.ensemble"]) == (1, 2)
    if name == "benchmark":
        assert large["unet.ensemble"] == large["model.ensemble"]


@pytest.mark.parametrize("name", ["phycharm", "benchmark"])
def test_unknown_variant_names_the_known_ones(name):
    with pytest.raises(ValueError, match="'huge'.*'large'"):
        conftest.load_config(name, "huge")
