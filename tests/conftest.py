"""Shared test fixtures and helpers."""

import atexit
import importlib.util
import os
import shutil
import tempfile

# One persistent XLA compilation cache for the whole test session -- this process, the
# `python -m phyjax.main` subprocesses and the notebook kernels (they inherit the variable): the
# debug configuration's training step is compiled once instead of once per process (the debug
# run: 52 -> 22 s CPU).  Keyed by JAX on the program and its options; removed at exit.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="phyjax-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

import jax  # after the cache variable
import jax.numpy as jnp
import pytest

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def _x64_context():
    """Context manager enabling float64 in JAX (the API moved between JAX versions)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # JAX < 0.7
    return enable_x64(True)


@pytest.fixture
def x64():
    """Run one test with float64 enabled; the previous setting is restored afterwards."""
    with _x64_context():
        assert jnp.asarray(1.0).dtype == jnp.float64
        yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(folder: str, name: str):
    """The project's ``<folder>/<name>.py`` (a config or a benchmark script: not packages),
    loaded by path as ml_collections loads a config."""
    spec = importlib.util.spec_from_file_location(f"_{folder}_{name}",
                                                  os.path.join(ROOT, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_slice_batch(seed: int = 0, channels: int = 3) -> dict:
    """A PhyCHarm training batch of two 16x16 slices (``channels`` source slices of context, a
    10x10 brain mask, unit T1 / zero M0 maps, a random target zero outside the mask)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.zeros((2, 16, 16, 1), np.float32)
    mask[:, 3:13, 3:13] = 1
    return {"source": rng.uniform(0.2, 1, (2, 16, 16, channels)).astype(np.float32) * mask,
            "mask": mask, "t1": np.ones_like(mask), "m0": np.zeros_like(mask),
            "target": rng.uniform(0.1, 1, mask.shape).astype(np.float32) * mask}


def load_config(name: str, variant: str = "debug"):
    """``configs/<name>.py``'s ``get_config(variant)`` (:func:`phyjax.config_files.load_config`;
    the tests' default variant is the tiny ``debug`` one)."""
    from phyjax.config_files import load_config as load

    return load(name, variant)


def tiny_volumes(tmp_path, subjects=("01", "02", "03", "04"), sites=("ref", "x"),
                 shape=(6, 6, 4)):
    """Tiny real NIfTI volumes ``{subject: {site: Volume}}`` of random images, written into
    ``tmp_path`` (site ``ref`` an MPRAGE, every other site an SPGR: another protocol)."""
    import numpy as np

    from phyjax.data.nifti import save_volume
    from phyjax.data.volumes import Volume
    from phyjax.physics.sequences import Protocol

    out = {}
    for i, s in enumerate(subjects):
        for j, site in enumerate(sites):
            rng = np.random.default_rng(i * 10 + j)
            image = rng.random(shape).astype(np.float32) + 0.1 + 0.5 * j
            path = str(tmp_path / f"sub-{s}_ses-{site}_T1w.nii.gz")
            save_volume(image, np.diag([2.0, 2.0, 2.0, 1.0]), path)
            protocol = Protocol.from_degrees("mprage" if site == "ref" else "spgr", tr=2.0 if
                                             site == "ref" else 0.02, te=0.003,
                                             ti=1.0 if site == "ref" else 0.0, flip_angle_deg=9)
            out.setdefault(s, {})[site] = Volume(s, site, protocol, image,
                                                 np.ones(shape, bool), path)
    return out
