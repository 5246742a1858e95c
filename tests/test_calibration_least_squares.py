"""The least-squares form of a site map (``config.model.calibrate_map="least_squares"``;
:func:`phyjax.methods.calibration.least_squares_knots`): isotonic regression on voxel pairs,
used where the maps' heads are voxel pairs with their target scans."""

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from phyjax.data.nifti import InputError
from phyjax.data.split import Split
from phyjax.data.volumes import Volume
from phyjax.methods.calibration import (apply_site_map, check_calibrate_map, fit_site_maps,
                                        least_squares_knots)
from phyjax.physics.sequences import Protocol

TARGET = Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0)
ALIGNED = Protocol.from_degrees("mprage", 2.0, 0.003, 0.9, 8.0, 1.5)
OTHER_MASK = Protocol.from_degrees("spgr", 0.02, 0.005, 0.0, 20.0, 3.0)
MASK = np.zeros((24, 24, 6), bool)
MASK[2:22, 2:22, :] = True


def _sse(output, target, knots):
    return float(np.sum((np.interp(output, *knots) - target) ** 2))


def test_the_map_is_isotonic_regression_and_fits_better_than_quantile_matching():
    rng = np.random.default_rng(0)
    o = rng.gamma(3.0, 0.2, 200_000)
    truth = np.sqrt(o)                                   # an increasing map ...
    t = truth + rng.normal(0.0, 0.1, o.size)             # ... plus zero-mean noise
    knots = least_squares_knots(o, t, 256)
    assert all(np.all(np.diff(k) >= 0) for k in knots)
    # the oracle: scikit-learn's isotonic regression on every pair (no bins)
    full = IsotonicRegression().fit(o, t).predict(o)
    sse_full = float(np.sum((full - t) ** 2))    # in-sample, so it also fits the noise a bit
    assert sse_full <= _sse(o, t, knots) <= 1.005 * sse_full
    # both estimate the conditional mean: the known map, away from the sparse ends
    inner = (o > np.quantile(o, 0.02)) & (o < np.quantile(o, 0.98))
    assert np.max(np.abs(np.interp(o, *knots) - truth)[inner]) < 0.03
    assert np.max(np.abs(np.interp(o, *knots) - full)[inner]) < 0.05
    # quantile matching transports the distribution instead: the target's noise spreads it,
    # so it is further from the pairs in least squares
    q = np.linspace(0, 1, 256)
    assert _sse(o, t, knots) < 0.97 * _sse(o, t, (np.quantile(o, q), np.quantile(t, q)))


def test_an_affine_relation_is_recovered_and_bad_input_is_refused():
    rng = np.random.default_rng(1)
    o = rng.uniform(0.0, 1.0, 50_000)
    t = 1.2 * o - 0.1 + rng.normal(0, 0.02, o.size)
    out_k, tgt_k = least_squares_knots(o, t, 64)
    np.testing.assert_allclose(tgt_k[2:-2], 1.2 * out_k[2:-2] - 0.1, atol=0.01)
    with pytest.raises(InputError, match="equal counts"):
        least_squares_knots(o, t[:-1], 64)
    with pytest.raises(InputError, match="knots"):
        least_squares_knots(o[:10], t[:10], 64)


def _head(subject, rng):
    """A head of three tissues in 4 x 4 blocks with a noisy target scan, scanned at two
    source sites: one sharing the target's brain mask (voxel pairs), one with its own."""
    blocks = rng.choice([0.3, 0.7, 1.0], (6, 6, MASK.shape[2]), p=[0.2, 0.4, 0.4])
    tissue = np.where(MASK, np.kron(blocks, np.ones((4, 4, 1))), 0)
    noisy = np.where(MASK, tissue + rng.normal(0, 0.08, MASK.shape), 0).astype(np.float32)
    own = MASK.copy()
    own[2, 2:22, :] = False
    return {"ref": Volume(subject, "ref", TARGET, noisy, MASK, f"{subject}_ref.nii.gz"),
            "aligned": Volume(subject, "aligned", ALIGNED, tissue.astype(np.float32), MASK,
                              f"{subject}_a.nii.gz"),
            "other": Volume(subject, "other", OTHER_MASK, tissue.astype(np.float32), own,
                            f"{subject}_o.nii.gz")}


class Smooth:
    """A network whose output is each head's clean tissue map through an increasing map: the
    target scans carry noise it does not (what a denoising network's output looks like)."""

    kind = "image"

    def __init__(self, heads):
        self.heads, self.cfg, self.name = heads, {"calibrate": "sites"}, "smooth"

    def harmonize(self, v, z_slices=None):
        return np.where(v.mask, 0.1 + 0.8 * v.image ** 2, 0).astype(np.float32)


def test_fit_site_maps_least_squares_where_voxel_pairs_else_the_quantile_map(capsys):
    rng = np.random.default_rng(2)
    heads = {f"{k:02d}": _head(f"{k:02d}", rng) for k in range(5)}
    train = Split(tuple(sorted(heads)[:4]), ("04",)).training_set(heads, "ref")
    net = Smooth(heads)
    quantile = {m["sites"][0]: m for m in fit_site_maps(net, train, 64, progress=False)}
    ls = {m["sites"][0]: m for m in fit_site_maps(net, train, 64, progress=True,
                                                  form="least_squares")}
    assert {m["form"] for m in quantile.values()} == {"quantile"}
    assert ls["aligned"]["form"] == "least_squares"
    # the site whose heads have another brain mask than their target scans': no voxel pairs,
    # so the quantile map, said
    assert ls["other"]["form"] == "quantile"
    assert ls["other"]["target"] == quantile["other"]["target"]
    assert "are not voxel pairs" in capsys.readouterr().out
    # the aligned site's knots are least_squares_knots of its pooled voxel pairs
    subjects = sorted(train.subjects)
    o = np.concatenate([net.harmonize(heads[s]["aligned"])[MASK] for s in subjects])
    t = np.concatenate([heads[s]["ref"].image[MASK] for s in subjects])
    np.testing.assert_allclose(ls["aligned"]["target"], least_squares_knots(o, t, 64)[1])
    # on a held-out head it is closer to the target scan than the quantile map (the network
    # removed the noise; quantile matching puts the noise's spread back as a contrast)
    held = heads["04"]
    out = net.harmonize(held["aligned"])
    err = {k: float(np.mean((apply_site_map(out, MASK, m["aligned"])[MASK]
                             - held["ref"].image[MASK]) ** 2)) for k, m in
           (("quantile", quantile), ("ls", ls))}
    assert err["ls"] < err["quantile"]


def test_an_unknown_form_names_the_key():
    assert check_calibrate_map("least_squares") == "least_squares"
    with pytest.raises(InputError, match="config.unet.calibrate_map"):
        check_calibrate_map("isotonic", "config.unet.calibrate_map")
    with pytest.raises(InputError, match="config.model.calibrate_map"):
        fit_site_maps(None, None, 64, form="affine")
