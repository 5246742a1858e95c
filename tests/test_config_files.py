"""phyjax.config_files.load_config: the configs as ``--config=configs/<name>.py[:variant]`` loads
them (compared with ml_collections' own config-file flag), and clear errors; check_number, the
range check of the numeric knobs."""

import pytest
from absl import flags
from ml_collections import config_flags

from phyjax.config_files import CONFIG_DIR, check_number, load_config
from phyjax.data.nifti import InputError


@pytest.mark.parametrize("name,variant", [("phycharm", None), ("benchmark", "debug"),
                                          ("cyclegan_radiomics", None)])
def test_same_config_as_the_command_lines_flag(name, variant):
    """ml_collections' DEFINE_config_file (what ``python -m phyjax.main --config=`` uses) reads
    the same file and variant into the same config."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    arg = f"{CONFIG_DIR}/{name}.py" + (f":{variant}" if variant else "")
    values(["prog", f"--config={arg}"])
    assert load_config(name, variant).to_dict() == values.config.to_dict()


def test_errors_name_the_problem():
    with pytest.raises(FileNotFoundError, match=r"configs/nosuch\.py.*'phycharm'"):
        load_config("nosuch")
    with pytest.raises(ValueError):
        load_config("phycharm", "no_such_variant")


@pytest.mark.parametrize("value,kwargs,ok", [
    (0.0, dict(low=0.0), True), (0.0, dict(low=0.0, low_open=True), False),
    (1.0, dict(low=0.0, high=1.0), True), (1.0, dict(low=0.0, high=1.0, high_open=True), False),
    (-1e-9, dict(low=0.0), False), (5, dict(high=4), False), ("0.25", dict(low=0, high=1), True),
    (float("nan"), {}, False), (float("inf"), dict(low=0.0), False), ("half", {}, False),
    (None, {}, False), ([1.0], {}, False), (-3.5, {}, True)])
def test_check_number_accepts_exactly_the_interval(value, kwargs, ok):
    """Each end open or closed as asked; non-numbers, NaN and infinities are refused with the
    key, the value and the interval in the message."""
    if ok:
        assert check_number(value, "config.x.k", **kwargs) == float(value)
    else:
        with pytest.raises(InputError, match=r"config\.x\.k=.*must be"):
            check_number(value, "config.x.k", **kwargs)


def test_check_number_message_states_the_interval_and_note():
    with pytest.raises(InputError, match=r"=1\.0; must be in \[0, 1\) \(a decay\)\.$"):
        check_number(1.0, "config.train.ema", low=0.0, high=1.0, high_open=True, note="a decay")
    with pytest.raises(InputError, match=r"must be > 0\.$"):
        check_number(0, "k", low=0, low_open=True)
