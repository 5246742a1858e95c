"""The in-plane filter a site map may choose on the heads it is learned on
(``config.model.calibrate_denoise``; :func:`phyjax.methods.calibration.choose_denoise`)."""

import json
import math
import warnings

import numpy as np
import pytest

from phyjax.data.nifti import InputError
from phyjax.data.split import Split
from phyjax.data.volumes import Volume
from phyjax.methods import map_cache
from phyjax.methods.calibration import (apply_site_map, calibrate_output, check_min_gain,
                                        choose_denoise, denoise_in_plane, fit_site_maps,
                                        parse_denoise)
from phyjax.physics.sequences import Protocol

TARGET = Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0)
NOISY = Protocol.from_degrees("mprage", 2.0, 0.003, 0.9, 8.0, 1.5)
CLEAN = Protocol.from_degrees("spgr", 0.02, 0.005, 0.0, 20.0, 3.0)
MASK = np.zeros((24, 24, 6), bool)
MASK[2:22, 2:22, :] = True


def test_parse_denoise_reads_pairs_and_off():
    assert parse_denoise("") == () and parse_denoise("off") == () and parse_denoise(None) == ()
    assert parse_denoise("0.5:0.1, 1:0.05") == ((0.5, 0.1), (1.0, 0.05))
    # nothing to choose among, or no scan to score them on: no filter
    entry = {"output": [0.0, 1.0], "target": [0.0, 1.0]}
    noisy = np.where(MASK, np.random.default_rng(0).normal(0.5, 0.1, MASK.shape), 0)
    assert choose_denoise([(noisy, np.where(MASK, 0.5, 0), MASK)], entry, ()) is None
    assert choose_denoise([], entry, ((0.5, 0.1),)) is None


@pytest.mark.parametrize("bad", ["0.5", "a:b", "0:0.1", "0.5:0", "4:0.1", "0.5:0.1,0.5:0.1",
                                 "0.5:inf", 0.5, ("0.5:0.1",)])
def test_a_bad_filter_list_names_the_key(bad):
    with pytest.raises(InputError, match="config.unet.calibrate_denoise"):
        parse_denoise(bad, "config.unet.calibrate_denoise")


def _bilateral_reference(image, mask, sigma, range_sd):
    """The bilateral filter written out voxel by voxel, slice by slice (the oracle)."""
    out = np.array(image, np.float64)
    r = max(1, math.ceil(3 * sigma))
    nx, ny, nz = image.shape
    for z in range(nz):
        for x in range(nx):
            for y in range(ny):
                if not mask[x, y, z]:
                    continue
                num = den = 0.0
                for dx in range(-r, r + 1):
                    for dy in range(-r, r + 1):
                        a, b = x + dx, y + dy
                        if 0 <= a < nx and 0 <= b < ny and mask[a, b, z]:
                            w = math.exp(-0.5 * (dx * dx + dy * dy) / sigma ** 2) * math.exp(
                                -0.5 * ((image[a, b, z] - image[x, y, z]) / range_sd) ** 2)
                            num += w * image[a, b, z]
                            den += w
                out[x, y, z] = num / den
    return out


def test_the_filter_is_the_bilateral_filter_of_each_axial_slice_inside_the_mask():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 1.0, (9, 8, 3)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[1:8, 1:7, :] = True
    mask[4, 3, 1] = False
    got = denoise_in_plane(image, mask, 0.7, 0.2)
    np.testing.assert_allclose(got, _bilateral_reference(image, mask, 0.7, 0.2), atol=2e-5)
    assert np.array_equal(got[~mask], image[~mask])
    # each slice on its own: changing slice 2 leaves slices 0 and 1 as they were
    other = image.copy()
    other[..., 2] = 0.5
    np.testing.assert_array_equal(denoise_in_plane(other, mask, 0.7, 0.2)[..., :2], got[..., :2])


def _head(subject, rng):
    """A head of three tissues in 4 x 4 blocks, scanned at the target site and two others."""
    blocks = rng.choice([0.3, 0.7, 1.0], (6, 6, MASK.shape[2]), p=[0.2, 0.4, 0.4])
    t = np.where(MASK, np.kron(blocks, np.ones((4, 4, 1))), 0).astype(np.float32)
    return {site: Volume(subject, site, p, t, MASK, f"{subject}_{site}.nii.gz")
            for site, p in (("ref", TARGET), ("noisy", NOISY), ("clean", CLEAN))}


class StandIn:
    """A network whose output at site "noisy" is the target scan plus white noise of sd 0.05
    and at site "clean" the target through an increasing map: what a network passing a noisy
    source's noise through does, and one that does not."""

    kind = "image"

    def __init__(self, heads):
        self.heads, self.cfg, self.name = heads, {"calibrate": "sites"}, "stand-in"

    def harmonize(self, v, z_slices=None):
        t = self.heads[v.subject]["ref"].image
        if v.site == "noisy":
            rng = np.random.default_rng(int(v.subject))
            t = t + rng.normal(0, 0.05, t.shape)
        else:
            t = 0.1 + 0.8 * t ** 2
        return np.where(MASK, t, 0).astype(np.float32)


CANDIDATES = "0.5:0.05,0.7:0.1,1:0.1"


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(1)
    heads = {f"{k:02d}": _head(f"{k:02d}", rng) for k in range(6)}
    train = Split(tuple(sorted(heads)[:5]), ("05",)).training_set(heads, "ref")
    harm = StandIn(heads)
    with_filters = fit_site_maps(harm, train, 64, progress=False, denoise=CANDIDATES)
    plain = fit_site_maps(harm, train, 64, progress=False)
    return heads, harm, with_filters, plain


def test_a_noisy_site_chooses_the_least_squares_filter_and_a_clean_one_none(maps):
    heads, harm, with_filters, plain = maps
    by_site = {m["sites"][0]: m for m in with_filters}
    assert by_site["clean"]["denoise"] is None
    chosen = by_site["noisy"]["denoise"]
    assert chosen is not None and chosen["psnr_gain_db"] > 1.0
    # the knots are those of the maps without filters, and those maps carry no filter field
    for m, p in zip(with_filters, plain):
        assert m["output"] == p["output"] and m["target"] == p["target"]
        assert "denoise" not in p
    # least squares on the same scans (the first DENOISE_SCANS training heads), recomputed
    # here candidate by candidate: the chosen one is the smallest and beats no filter by the
    # reported gain
    entry = dict(by_site["noisy"], denoise=None)
    subjects = sorted(heads)[:4]

    def sse(f):
        total = 0.0
        for s in subjects:
            x = apply_site_map(harm.harmonize(heads[s]["noisy"]), MASK, entry)
            y = denoise_in_plane(x, MASK, *f) if f else x
            total += float(np.sum((y[MASK] - heads[s]["ref"].image[MASK]) ** 2))
        return total
    errors = {f: sse(f) for f in parse_denoise(CANDIDATES)}
    best = min(errors, key=errors.get)
    assert (chosen["sigma"], chosen["range"]) == best
    assert chosen["psnr_gain_db"] == pytest.approx(10 * np.log10(sse(None) / errors[best]),
                                                   rel=1e-4)


def test_a_filter_that_gains_less_than_the_least_gain_is_not_kept(maps):
    heads, harm, with_filters, _ = maps
    train = Split(tuple(sorted(heads)[:5]), ("05",)).training_set(heads, "ref")
    gain = next(m for m in with_filters if m["sites"] == ["noisy"])["denoise"]["psnr_gain_db"]
    for least, kept in ((gain - 0.01, True), (gain + 0.01, False)):
        again = fit_site_maps(harm, train, 64, progress=False, denoise=CANDIDATES,
                              denoise_min_gain=least)
        noisy = next(m for m in again if m["sites"] == ["noisy"])
        assert (noisy["denoise"] is not None) == kept
    for bad in (-0.1, float("nan"), "much", True):
        with pytest.raises(InputError, match="config.model.calibrate_denoise_min_gain"):
            check_min_gain(bad)


def test_no_filter_is_chosen_on_heads_whose_noise_is_not_the_site_s(maps):
    # heads made by the physics with drawn scanner effects (own_effects without the site)
    from phyjax.methods.calibration import CalibrationHeads

    heads, harm, _, _ = maps
    subset = {s: heads[s] for s in sorted(heads)[:5]}
    for own, kept in ((frozenset(), False), (frozenset({"noisy", "clean"}), True),
                      (None, True)):
        got = fit_site_maps(harm, CalibrationHeads(subset, "ref", own), 64, progress=False,
                            denoise=CANDIDATES)
        noisy = next(m for m in got if m["sites"] == ["noisy"])
        assert (noisy["denoise"] is not None) == kept


def test_the_chosen_filter_brings_a_new_head_closer_to_its_target(maps):
    heads, harm, with_filters, plain = maps
    v, target = heads["05"]["noisy"], heads["05"]["ref"].image
    out = {"harmonized": harm.harmonize(v)}
    err = {}
    for name, site_maps in (("filtered", with_filters), ("plain", plain)):
        got = calibrate_output(out, MASK, "sites", site_maps=site_maps, protocol=NOISY)
        err[name] = np.sqrt(np.mean((got["harmonized"][MASK] - target[MASK]) ** 2))
        assert np.all(got["harmonized"][~MASK] == 0)
    assert err["filtered"] < 0.8 * err["plain"]
    # a map without a filter is the monotone map alone (np.interp of its knots)
    m = next(m for m in plain if m["sites"] == ["noisy"])
    np.testing.assert_allclose(apply_site_map(out["harmonized"], MASK, m)[MASK],
                               np.interp(out["harmonized"][MASK], m["output"], m["target"]))


def test_a_kept_map_keeps_its_filter_and_a_bad_filter_is_made_again(tmp_path):
    key = {"format": map_cache.FORMAT, "what": "a test key"}
    entry = {"output": [0.0, 1.0], "target": [0.0, 2.0],
             "denoise": {"sigma": 0.7, "range": 0.1, "psnr_gain_db": 0.4}}
    path = map_cache.store(str(tmp_path), key, entry)
    kept, where = map_cache.load(str(tmp_path), key)
    assert where == path and kept == entry
    plain = {"output": [0.0, 1.0], "target": [0.0, 2.0]}
    map_cache.store(str(tmp_path), dict(key, what="plain"), plain)
    assert map_cache.load(str(tmp_path), dict(key, what="plain"))[0] == plain
    with open(path) as f:
        saved = json.load(f)
    saved["map"]["denoise"]["sigma"] = -1.0
    with open(path, "w") as f:
        json.dump(saved, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert map_cache.load(str(tmp_path), key)[0] is None
    assert any(path in str(w.message) for w in caught)


def test_the_unet_and_phycharm_refuse_a_bad_filter_list_before_training():
    from conftest import load_config

    from phyjax.methods.unet import unet_config

    config = load_config("benchmark")
    config.model.calibrate_denoise = "0.5:0.1,zero"
    with pytest.raises(InputError, match="config.unet.calibrate_denoise"):
        unet_config(config)
    assert config.unet.calibrate_denoise == "0.5:0.1,zero"    # the U-Net shares the field


class Shuffled(StandIn):
    """StandIn whose calls finish out of order (the first subjects' scans slowest), so that
    two calls in flight would misplace outputs if results were taken as they finish."""

    def harmonize(self, v, z_slices=None):
        import time
        time.sleep(0.01 * (6 - int(v.subject)) + 0.005 * (v.site == "noisy"))
        return super().harmonize(v, z_slices)


def test_site_maps_and_evaluation_are_the_same_with_one_worker_or_two(monkeypatch):
    from phyjax.evaluate.loop import evaluate_images

    rng = np.random.default_rng(1)
    heads = {f"{k:02d}": _head(f"{k:02d}", rng) for k in range(6)}
    train = Split(tuple(sorted(heads)[:5]), ("05",)).training_set(heads, "ref")
    got = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("PHYJAX_THREADS", workers)
        harm = Shuffled(heads)
        maps = fit_site_maps(harm, train, 64, progress=False, denoise=CANDIDATES, slice_step=2)
        rows = evaluate_images({"a": harm, "b": StandIn(heads)}, heads, sorted(heads),
                               ("noisy", "clean"), "ref")
        got[workers] = (maps, rows)
    assert got["1"] == got["2"]
    assert [(r["subject"], r["site"], r["method"]) for r in got["2"][1]] == [
        (s, site, m) for s in sorted(heads) for site in ("noisy", "clean") for m in "ab"]
