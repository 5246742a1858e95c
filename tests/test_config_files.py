"""phyjax.config_files.load_config: the configs as ``--config=configs/<name>.py[:variant]`` loads
them (compared with ml_collections' own config-file flag), and clear errors."""

import pytest
from absl import flags
from ml_collections import config_flags

from phyjax.config_files import CONFIG_DIR, load_config


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
