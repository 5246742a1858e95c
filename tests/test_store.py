"""Data streamed from disk: the slice store and on-disk volumes give what memory would."""

import gc
import os

import numpy as np
import pytest

import conftest

from phyjax.data.dataset import load_dataset
from phyjax.data.nifti import InputError
from phyjax.data.slices import grid, to_slices, with_context
from phyjax.data.store import SliceStore


def test_slice_store_reads_what_the_in_memory_slices_hold(tmp_path):
    rng = np.random.default_rng(0)
    vols = [rng.random((9, 11, 7)).astype(np.float32) for _ in range(3)]
    pads, _ = grid(vols[0].shape, depth=3)
    store = SliceStore(str(tmp_path), pads)
    for k, v in enumerate(vols):
        store.add(f"scan {k}/image", v)               # a key with a space and a slash
    z = np.array([0, 6, 3, 3])
    expected = with_context(to_slices(vols[1], pads), 2)[z]
    np.testing.assert_array_equal(store.read("scan 1/image", z, context=2), expected)
    np.testing.assert_array_equal(store.read("scan 2/image", z)[..., 0],
                                  to_slices(vols[2], pads)[z])
    rows = np.array([[2, 1], [0, 5], [2, 0], [1, 6]])
    got = store.gather(rows, lambda k: f"scan {k}/image", context=1)
    for r, (k, zz) in enumerate(rows):
        np.testing.assert_array_equal(got[r], with_context(to_slices(vols[k], pads), 1)[zz])
    with pytest.raises(KeyError):
        store.read("never added", z)


def test_streamed_dataset_equals_the_in_memory_one(tmp_path):
    cfg = conftest.load_config("phycharm")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.data.n_subjects = 2
    cfg.data.stream = "off"
    memory = load_dataset(cfg.data, progress=False)
    cfg.data.stream = "on"
    disk = load_dataset(cfg.data, progress=False, workdir=str(tmp_path / "run"))
    for s, sites in memory.volumes.items():
        for site, v in sites.items():
            d = disk.volumes[s][site]
            assert isinstance(d._arrays["image"], str) and "disk" in repr(d)  # not in memory
            for name in ("image", "mask", "t1", "m0"):
                np.testing.assert_array_equal(getattr(d, name), getattr(v, name))
    store = disk._store.name
    del disk
    gc.collect()
    assert not os.path.exists(store)                  # the temporary folder goes with it
    cfg.data.stream = "sometimes"
    with pytest.raises(InputError, match="data.stream"):
        load_dataset(cfg.data, progress=False)
