"""The project's config files (``configs/*.py``), loaded by name as ``--config=`` loads them.

``configs/`` is not a package: ``python -m phyjax.main --config=configs/phycharm.py`` hands the
file to ml_collections, which loads it by path.  Scripts, benchmarks and the inspect mode that
need a config's defaults (the embedded dataset's settings, the benchmark's fixed segmenter) load
it here the same way, from the repository's ``configs/`` folder.
"""

from __future__ import annotations

import importlib.util
import math
import os

from ml_collections import ConfigDict

from phyjax.data.nifti import InputError

#: the repository's ``configs/`` folder
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(name: str, variant: str | None = None) -> ConfigDict:
    """``get_config(variant)`` of ``configs/<name>.py`` (e.g. ``"phycharm"``, ``"benchmark"``;
    ``variant`` as after the colon of ``--config=configs/<name>.py:<variant>``, None for the
    default).  Raises FileNotFoundError naming the path when there is no such config file, and
    whatever the config's ``get_config`` raises for an unknown variant (ValueError)."""
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    if not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))
        raise FileNotFoundError(f"no config file {path} (configs: {known})")
    spec = importlib.util.spec_from_file_location(f"_phyjax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant is not None else module.get_config()


def check_number(value, key: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, note: str = "") -> float:
    """``value`` (a config knob) as a float if it is a finite number inside the interval from
    ``low`` to ``high`` (None: unbounded; ``low_open`` / ``high_open``: that end excluded),
    else InputError naming ``key`` (e.g. ``"config.train.ema"``), the value given and the
    interval, with ``note`` (what the knob means, its units) appended."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        if low is not None and high is not None:
            span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            span = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            span = f"{'<' if high_open else '<='} {high:g}"
        else:
            span = "a finite number"
        raise InputError(f"{key}={value!r}; must be {span}" + (f" ({note})" if note else "")
                         + ".")
    return x
