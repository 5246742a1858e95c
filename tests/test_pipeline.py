"""End to end: the debug config trains, evaluates, writes finite outputs, resumes, harmonizes."""

import csv
import dataclasses
import glob
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import optax
import pytest

import conftest

from phyjax.data.nifti import InputError
from phyjax.experiments import phycharm
from phyjax.train import TrainState, fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(variant="debug"):
    return conftest.load_config("phycharm", variant)


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    cfg = load_config()
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
    workdir = str(tmp_path_factory.mktemp("run"))
    summary = phycharm.train_and_evaluate(cfg, workdir, progress=False)
    return cfg, workdir, summary


def test_debug_run_writes_finite_outputs(debug_run):
    cfg, workdir, _ = debug_run
    for name in ("metrics.csv", "metrics.md", "metrics_per_subject.csv", "maps_metrics.csv",
                 "figure.png", "split.json", "config.json", "train_log.csv",
                 "harmonizer/harmonizer.json", "harmonizer/params.msgpack", "protocols.tsv"):
        path = os.path.join(workdir, name)
        assert os.path.getsize(path) > 0, name
    with open(os.path.join(workdir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    sources = [s for s in cfg.data.sites if s != cfg.data.target_site]
    methods = set(cfg.eval.baselines) | {"phycharm"}
    assert {(r["method"], r["site"]) for r in rows} == {
        (m, s) for m in methods for s in sources + ["overall"]}
    for r in rows:
        for key in ("ssim_mean", "psnr_mean", "nrmse_mean"):
            assert np.isfinite(float(r[key])), (r, key)
    split = json.load(open(os.path.join(workdir, "split.json")))
    assert not set(split["train"]) & set(split["test"])
    assert len(split["test"]) == cfg.data.n_test
    with open(os.path.join(workdir, "train_log.csv")) as f:
        log = list(csv.DictReader(f))
    assert int(log[-1]["step"]) == cfg.train.steps
    assert all(np.isfinite(float(r["loss"])) for r in log)


def test_harmonized_volumes_keep_source_geometry(debug_run):
    cfg, workdir, _ = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    subject = split["test"][0]
    for site in split["source_sites"]:
        out = nib.load(os.path.join(workdir, "harmonized", f"sub-{subject}",
                                    f"sub-{subject}_ses-{site}_desc-phycharm_T1w.nii.gz"))
        src = nib.load(os.path.join(split["dataset"], f"sub-{subject}", f"ses-{site}", "anat",
                                    f"sub-{subject}_ses-{site}_T1w.nii.gz"))
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine)
        assert np.isfinite(out.get_fdata()).all()


def test_harmonize_mode_on_a_user_file(debug_run, tmp_path):
    cfg, workdir, _ = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    subject, site = split["test"][0], split["source_sites"][0]
    anat = os.path.join(split["dataset"], f"sub-{subject}", f"ses-{site}", "anat")
    src_path = os.path.join(anat, f"sub-{subject}_ses-{site}_T1w.nii.gz")
    # A user's file: other grid (flipped + shifted affine), sidecar next to it.
    img = nib.load(src_path)
    affine = img.affine.copy()
    affine[0, :] *= -1
    affine[:3, 3] += [3.0, -2.0, 1.0]
    user = tmp_path / "user_T1w.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32), affine), user)
    with open(tmp_path / "user_T1w.json", "w") as f:
        f.write(open(src_path.replace(".nii.gz", ".json")).read())
    mask = nib.load(os.path.join(split["dataset"], "derivatives", "phyjax-sim", f"sub-{subject}",
                                 "anat", f"sub-{subject}_desc-brain_mask.nii.gz"))
    nib.save(nib.Nifti1Image(mask.get_fdata().astype(np.float32), affine), tmp_path / "mask.nii.gz")
    h_cfg = cfg.copy_and_resolve_references()
    with h_cfg.unlocked():
        h_cfg.mode = "harmonize"
        h_cfg.harmonize.input = str(user)
        h_cfg.harmonize.mask = str(tmp_path / "mask.nii.gz")
        h_cfg.harmonize.output = str(tmp_path / "out.nii.gz")
        # what the vendor's sidecar leaves out (GE: the inversion TR), given on the command line
        # from the dataset's site table, as a user copies it from the protocol printout
        from phyjax.data.sidecar import read_site_table
        row = read_site_table(os.path.join(split["dataset"], "code", "site_parameters.tsv"))
        h_cfg.harmonize.tr = row.get(site, {}).get("tr_prep_s", -1.0)
    out_path = phycharm.run(h_cfg, workdir)
    out = nib.load(out_path)
    np.testing.assert_allclose(out.affine, affine)
    assert out.shape == img.shape
    data = out.get_fdata()
    assert np.isfinite(data).all() and data.max() > 0
    assert np.all(data[mask.get_fdata() == 0] == 0)
    assert os.path.exists(str(tmp_path / "out.png"))
    meta = json.load(open(tmp_path / "out.json"))     # target protocol + what was assumed
    target = json.load(open(os.path.join(workdir, "harmonizer", "harmonizer.json")))
    assert meta["RepetitionTime"] == target["target_protocol"]["tr_s"]
    assert meta["PhyjaxSourceProtocolOrigin"]["ti_s"] == "sidecar InversionTime"

    # The same mask on another grid (coarser, shifted) is matched by world coordinates.
    from nilearn.image import resample_img
    other = np.diag([3.0, 3.0, 3.0, 1.0])      # RAS, 3 mm, origin off the image's corner
    corners = np.array([[i, j, k, 1] for i in (0, img.shape[0]) for j in (0, img.shape[1])
                        for k in (0, img.shape[2])]) @ affine.T
    other[:3, 3] = corners[:, :3].min(0) + [1.3, -2.1, 0.7]
    moved = resample_img(nib.Nifti1Image(mask.get_fdata().astype(np.float32), affine),
                         target_affine=other, interpolation="nearest", force_resample=True,
                         copy_header=True)
    nib.save(moved, tmp_path / "mask_other_grid.nii.gz")
    with h_cfg.unlocked():
        h_cfg.harmonize.mask = str(tmp_path / "mask_other_grid.nii.gz")
        h_cfg.harmonize.output = str(tmp_path / "out2.nii.gz")
        h_cfg.harmonize.figure = False
    out2 = nib.load(phycharm.run(h_cfg, workdir)).get_fdata()
    inside = mask.get_fdata() > 0
    assert (out2[inside] != 0).mean() > 0.9          # by index it would be mostly misplaced
    assert (out2[~inside] != 0).mean() < 0.05

    with h_cfg.unlocked():
        h_cfg.harmonize.input = str(tmp_path / "missing.nii.gz")
    with pytest.raises(InputError, match="missing.nii.gz"):
        phycharm.run(h_cfg, workdir)
    # A sidecar that lacks what the sequence needs is an error naming the sidecar.
    bad = json.load(open(tmp_path / "user_T1w.json"))
    bad.pop("InversionTime", None)
    bad.pop("FlipAngle", None)
    bad.pop("EchoTime")
    with open(tmp_path / "user_T1w.json", "w") as f:
        json.dump(bad, f)
    with h_cfg.unlocked():
        h_cfg.harmonize.input = str(user)
    with pytest.raises(InputError, match="user_T1w.json"):
        phycharm.run(h_cfg, workdir)


_HARMONIZE_SCRIPT = """
import sys, numpy as np
from phyjax import methods
from phyjax.data.dataset import load_dataset
import conftest
cfg = conftest.load_config("phycharm", "debug")
with cfg.unlocked():
    cfg.data.cache_dir = sys.argv[2]
data = load_dataset(cfg.data, progress=False)
h = methods.load(sys.argv[1])
v = data.volumes[sys.argv[3]][sys.argv[4]]
np.save(sys.argv[5], h.harmonize(v))
"""


def test_harmonize_mode_with_data_consistency(debug_run, tmp_path):
    # --config.model.refine.enabled=True at harmonize time: the saved network, its maps made
    # consistent with the input (phyjax.physics.consistency); the output keeps more of the
    # input's fine detail than the network alone, and its sidecar says how it was made.
    from scipy import ndimage

    cfg, workdir, _ = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    subject, site = split["test"][0], "spgr3T"
    anat = os.path.join(split["dataset"], f"sub-{subject}", f"ses-{site}", "anat")
    src_path = os.path.join(anat, f"sub-{subject}_ses-{site}_T1w.nii.gz")
    mask_path = os.path.join(split["dataset"], "derivatives", "phyjax-sim", f"sub-{subject}",
                             "anat", f"sub-{subject}_desc-brain_mask.nii.gz")
    outs = {}
    for enabled in (False, True):
        h_cfg = cfg.copy_and_resolve_references()
        with h_cfg.unlocked():
            h_cfg.mode = "harmonize"
            h_cfg.harmonize.input = src_path
            h_cfg.harmonize.mask = mask_path
            h_cfg.harmonize.output = str(tmp_path / f"out{int(enabled)}.nii.gz")
            h_cfg.harmonize.figure = False
            h_cfg.model.refine.enabled = enabled
        outs[enabled] = nib.load(phycharm.run(h_cfg, workdir)).get_fdata()
        meta = json.load(open(tmp_path / f"out{int(enabled)}.json"))
        assert meta["PhyjaxHarmonizer"]["data_consistency"]["enabled"] is enabled
    mask = nib.load(mask_path).get_fdata() > 0
    assert np.all(outs[True][~mask] == 0)
    assert not np.allclose(outs[True][mask], outs[False][mask], atol=1e-3)
    src = nib.load(src_path).get_fdata()

    def highpass(x):
        return (x - ndimage.gaussian_filter(x, 1.0))[ndimage.binary_erosion(mask, iterations=2)]

    def corr(a, b):
        return float(np.corrcoef(highpass(a), highpass(b))[0, 1])

    # The gated base (the default) passes the refinement on only in the re-synthesis's share
    # (``out["gate"] * delta``) and its source share is already the input's own slice (smoothed
    # where the detail gate says, item 48), so the gain is smaller than the published base's:
    # 0.17 -> 0.21 for this 6-step model, against > 0.05 before item 48's smoothing.
    assert corr(outs[True], src) > corr(outs[False], src) + 0.02


def test_calibrate_puts_the_output_on_the_inputs_scale():
    # config.model.calibrate=p99: the harmonized image divided by its 99th in-mask percentile,
    # the normalization every input and target has (phyjax.data.volumes.normalize), so a global
    # scale of the network's output does not survive; the maps are untouched.
    from phyjax.methods.phycharm import calibrate_output

    rng = np.random.default_rng(0)
    mask = np.zeros((12, 10, 6), bool)
    mask[2:10, 2:8, 1:5] = True
    image = np.where(mask, rng.uniform(0.2, 1.3, mask.shape), 0.0).astype(np.float32)
    out = {"harmonized": image, "t1": image + 1.0}
    cal = calibrate_output(out, mask, "p99")
    assert np.percentile(cal["harmonized"][mask], 99) == pytest.approx(1.0, rel=1e-6)
    assert np.all(cal["harmonized"][~mask] == 0)
    np.testing.assert_allclose(cal["harmonized"],
                               image / np.percentile(image[mask], 99), rtol=1e-6)
    brighter = calibrate_output(dict(out, harmonized=1.07 * image), mask, "p99")
    np.testing.assert_allclose(brighter["harmonized"], cal["harmonized"], rtol=1e-5)
    assert cal["t1"] is out["t1"]
    assert calibrate_output(out, mask, "none") is out
    with pytest.raises(InputError, match="calibrate"):
        calibrate_output(out, mask, "p95")
    with pytest.raises(InputError, match="empty brain mask"):
        calibrate_output(out, np.zeros_like(mask), "p99")


def test_calibrate_match_is_a_monotone_map_of_the_source_with_the_outputs_histogram():
    # config.model.calibrate=match: the source scan mapped by a monotone increasing function
    # onto the network output's in-mask intensity distribution. Oracles: with as many voxels as
    # the reference and no ties, quantile matching is a rank permutation, so the sorted output
    # equals the sorted reference (np.sort); the order of the source is kept voxel by voxel; and
    # a strictly increasing transform of the source cannot change the result.
    from phyjax.methods.phycharm import calibrate_output

    rng = np.random.default_rng(1)
    mask = np.zeros((12, 10, 6), bool)
    mask[2:10, 2:8, 1:5] = True
    source = np.where(mask, rng.uniform(0.1, 1.0, mask.shape), 0.0).astype(np.float32)
    network = np.where(mask, rng.gamma(3.0, 0.2, mask.shape), 0.0).astype(np.float32)
    out = {"harmonized": network, "t1": network + 1.0}
    got = calibrate_output(out, mask, "match", source=source)["harmonized"]
    np.testing.assert_allclose(np.sort(got[mask]), np.sort(network[mask]), rtol=1e-6)
    order = np.argsort(source[mask])
    assert np.all(np.diff(got[mask][order]) >= 0)
    assert np.all(got[~mask] == 0)
    warped = np.where(mask, 3.0 + source ** 2, 0.0).astype(np.float32)
    np.testing.assert_allclose(calibrate_output(out, mask, "match", source=warped)["harmonized"],
                               got, rtol=1e-6)
    with pytest.raises(InputError, match="source scan"):
        calibrate_output(out, mask, "match")
    with pytest.raises(InputError, match="source scan"):
        calibrate_output(out, mask, "match", source=source[:, :, :3])
    with pytest.raises(InputError, match="empty"):
        calibrate_output(out, np.zeros_like(mask), "match", source=source)


def test_site_maps_undo_a_sites_monotone_distortion_on_unseen_heads():
    # config.model.calibrate=sites: a stand-in network whose output at site "a" is its
    # subject's target scan through a known increasing distortion g, at site "b" the target
    # itself. Oracle: the map learned on the training pairs is g's inverse, so on a head it
    # never saw (another tissue mix) it gives back the target scan; at "b" it is the identity;
    # a protocol with no map keeps the output (a warning); no maps at all is an error.
    from phyjax.data.split import Split
    from phyjax.data.volumes import Volume
    from phyjax.methods.phycharm import calibrate_output, fit_site_maps
    from phyjax.physics.sequences import Protocol

    rng = np.random.default_rng(3)
    mask = np.zeros((10, 10, 8), bool)
    mask[1:9, 1:9, 1:7] = True
    pref = Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0, 3.0)
    pa = Protocol.from_degrees("mprage", 2.0, 0.003, 0.9, 8.0, 1.5)
    pb = Protocol.from_degrees("spgr", 0.02, 0.004, 0.0, 20.0, 3.0)
    g = lambda x: 0.2 + 0.5 * x ** 2     # noqa: E731  increasing on x > 0

    def head(subject, wm_fraction):
        p = [0.2, 0.8 - wm_fraction, wm_fraction]
        levels = rng.choice([0.3, 0.7, 1.0], mask.shape, p=p)
        target = np.where(mask, levels + rng.normal(0, 0.03, mask.shape), 0).astype(np.float32)
        return {site: Volume(subject, site, q, target, mask, f"{subject}_{site}.nii.gz")
                for site, q in (("ref", pref), ("a", pa), ("b", pb))}

    volumes = {f"{k:02d}": head(f"{k:02d}", 0.3 + 0.02 * k) for k in range(4)}
    volumes["99"] = head("99", 0.15)                 # held out: less WM than any training head

    def raw(v):                          # the stand-in network's output
        t = volumes[v.subject]["ref"].image
        return np.where(mask, g(t) if v.site == "a" else t, 0).astype(np.float32)

    class StandIn:                       # harmonize(volume) as a trained PhyCHarm would
        cfg = {"calibrate": "sites"}

        def harmonize(self, v, z_slices=None):
            assert self.cfg["calibrate"] == "none"     # maps are learned on the raw output
            out = raw(v)
            if z_slices is not None:                   # a slice network's subset pass
                out[..., np.setdiff1d(np.arange(out.shape[2]), z_slices)] = 0
            return out

    net = StandIn()
    train = Split(train=("00", "01", "02", "03"), test=("99",)).training_set(volumes, "ref")
    maps = fit_site_maps(net, train, knots=256, progress=False)
    assert net.cfg["calibrate"] == "sites"
    assert sorted(m["sites"][0] for m in maps) == ["a", "b"]
    assert all(m["subjects"] == 4 for m in maps)
    target = volumes["99"]["ref"].image
    for site, err_before in (("a", 0.1), ("b", 0.0)):
        out = {"harmonized": raw(volumes["99"][site])}
        got = calibrate_output(out, mask, "sites", site_maps=maps,
                               protocol=volumes["99"][site].protocol)["harmonized"]
        assert np.abs(out["harmonized"] - target)[mask].mean() >= err_before
        assert np.abs(got - target)[mask].mean() < 0.01
        assert np.all(got[~mask] == 0)
    other = Protocol.from_degrees("spgr", 0.03, 0.004, 0.0, 20.0, 1.5)
    with pytest.warns(UserWarning, match="no site map"):
        same = calibrate_output(out, mask, "sites", site_maps=maps, protocol=other)
    assert same is out
    with pytest.raises(InputError, match="no site maps"):
        calibrate_output(out, mask, "sites", site_maps=[], protocol=pb)
    with pytest.raises(InputError, match="at least 2"):
        fit_site_maps(net, train, knots=1, progress=False)
    # every second slice only (calibrate_slice_step=2): the pooled voxels are exactly the
    # mask's on every second slice of source and target alike, the sample of the i-th subject
    # starting at slice i mod 2 (subjects 00, 02: slices 0, 2, 4, ...; 01, 03: 1, 3, 5, ...;
    # heads on one grid then have every slice position sampled), and the maps still invert g
    from phyjax.methods.calibration import pooled_outputs
    groups = pooled_outputs(net, train, progress=False, slice_step=2)

    def sample(subject, start, site="ref"):
        sel = mask.copy()
        sel[..., np.arange(mask.shape[2]) % 2 != start] = False
        return raw(volumes[subject][site])[sel]
    for group in groups:
        (site,) = group["sites"]
        np.testing.assert_array_equal(
            group["tgt"], np.concatenate([sample(f"{k:02d}", k % 2) for k in range(4)]))
        np.testing.assert_array_equal(
            group["out"], np.concatenate([sample(f"{k:02d}", k % 2, site) for k in range(4)]))
    assert np.all(np.concatenate([group["out"] for group in groups]) > 0)   # no skipped slice pooled
    half = fit_site_maps(net, train, knots=256, progress=False, slice_step=2)
    out = {"harmonized": raw(volumes["99"]["a"])}
    got = calibrate_output(out, mask, "sites", site_maps=half,
                           protocol=volumes["99"]["a"].protocol)["harmonized"]
    assert np.abs(got - target)[mask].mean() < 0.01
    with pytest.raises(InputError, match="calibrate_slice_step"):
        pooled_outputs(net, train, progress=False, slice_step=0)


def test_calibrated_harmonizer_and_harmonize_mode(debug_run, tmp_path):
    # The saved harmonizer with calibrate=p99 gives its uncalibrated output over that output's
    # 99th in-mask percentile; in harmonize mode --config.model.calibrate=p99 (an inference
    # setting) does the same to the written NIfTI and says so in its sidecar.
    from phyjax import methods
    from phyjax.data.dataset import load_dataset

    cfg, workdir, _ = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    subject, site = split["test"][0], "spgr3T"
    data = load_dataset(cfg.data, progress=False)
    vol = data.volumes[subject][site]
    harm = methods.load(os.path.join(workdir, "harmonizer"))
    # the default (calibrate=sites): one map per source site, learned on heads made by the
    # physics with each site's protocol (calibrate_with=physics, item 71), saved and read back
    # with the harmonizer; the output is the plain one through its site's map
    assert harm.cfg["calibrate"] == cfg.model.calibrate == "sites"
    maps = harm.cfg["site_maps"]
    assert sorted(s for m in maps for s in m["sites"]) == sorted(
        s for s in split["source_sites"])
    sited = harm.harmonize(vol)
    harm.cfg["calibrate"] = "none"
    plain = harm.harmonize(vol)
    mask = vol.mask.astype(bool)
    (m,) = [m for m in maps if m["sites"] == [site]]
    assert len(m["output"]) == cfg.model.calibrate_knots
    expected = np.zeros_like(plain)
    expected[mask] = np.interp(plain[mask], m["output"], m["target"])
    if m.get("denoise"):    # the in-plane filter the map chose on its heads (calibrate_denoise)
        from phyjax.methods.calibration import denoise_in_plane

        expected = denoise_in_plane(expected, mask, m["denoise"]["sigma"], m["denoise"]["range"])
    np.testing.assert_allclose(sited[mask], expected[mask], rtol=1e-5, atol=1e-6)
    # outputs on some slices only (what the site maps pool with calibrate_slice_step > 1):
    # the full output there, 0 elsewhere; the whole-scan calibrations refuse it
    z = np.arange(1, vol.image.shape[2], 3)
    part = harm.harmonize(vol, z_slices=z)
    np.testing.assert_allclose(part[..., z], plain[..., z], rtol=1e-5, atol=1e-6)
    assert np.all(np.delete(part, z, axis=2) == 0) and np.any(part[..., z] != 0)
    harm.cfg["calibrate"] = "p99"
    with pytest.raises(InputError, match="whole scan"):
        harm.harmonize(vol, z_slices=z)
    cal = harm.harmonize(vol)
    np.testing.assert_allclose(cal, plain / np.percentile(plain[mask], 99), rtol=1e-5)
    assert np.percentile(cal[mask], 99) == pytest.approx(1.0, rel=1e-5)

    anat = os.path.join(split["dataset"], f"sub-{subject}", f"ses-{site}", "anat")
    mask_path = os.path.join(split["dataset"], "derivatives", "phyjax-sim", f"sub-{subject}",
                             "anat", f"sub-{subject}_desc-brain_mask.nii.gz")
    written = {}
    for calibrate in ("sites", "none", "p99"):
        h_cfg = cfg.copy_and_resolve_references()
        with h_cfg.unlocked():
            h_cfg.mode = "harmonize"
            h_cfg.harmonize.input = os.path.join(anat, f"sub-{subject}_ses-{site}_T1w.nii.gz")
            h_cfg.harmonize.mask = mask_path
            h_cfg.harmonize.output = str(tmp_path / f"{calibrate}.nii.gz")
            h_cfg.harmonize.figure = False
            h_cfg.model.calibrate = calibrate
        written[calibrate] = nib.load(phycharm.run(h_cfg, workdir)).get_fdata()
        meta = json.load(open(tmp_path / f"{calibrate}.json"))
        assert meta["PhyjaxHarmonizer"]["calibrate"] == calibrate
        assert meta["PhyjaxHarmonizer"]["calibrate_site_map"] == (
            [site] if calibrate == "sites" else None)
        assert meta["PhyjaxHarmonizer"]["tta"] == cfg.model.tta
        assert meta["PhyjaxHarmonizer"]["base"] == "gated"    # auto, one target
        assert harm.cfg["source_smoothing"] == 0.5 and harm.cfg["source_range"] == 0.0  # saved
        assert meta["PhyjaxHarmonizer"]["source_smoothing"] == cfg.model.source_smoothing == 0.5
        assert meta["PhyjaxHarmonizer"]["source_range"] == cfg.model.source_range == 0.0
        assert meta["PhyjaxHarmonizer"]["detail_gate"] is cfg.model.detail_gate is True
        assert meta["PhyjaxHarmonizer"]["ensemble"] == cfg.model.ensemble == 1
        assert meta["PhyjaxHarmonizer"]["views"] == list(cfg.model.views) == ["axial"]
    # From the command line only the model settings given there replace the saved ones.
    from phyjax.experiments.harmonize import _load_harmonizer

    with h_cfg.unlocked():
        h_cfg.model.tta = "none" if cfg.model.tta == "flip" else "flip"
        h_cfg.harmonize.model_overrides = ()
    kept = _load_harmonizer(os.path.join(workdir, "harmonizer"), h_cfg).cfg
    assert (kept["calibrate"], kept["tta"]) == ("sites", cfg.model.tta)
    with h_cfg.unlocked():
        h_cfg.harmonize.model_overrides = ("calibrate",)
    named = _load_harmonizer(os.path.join(workdir, "harmonizer"), h_cfg).cfg
    assert (named["calibrate"], named["tta"]) == ("p99", cfg.model.tta)
    m = nib.load(mask_path).get_fdata() > 0
    assert np.abs(written["sites"][m] - written["none"][m]).max() > 1e-3
    assert np.percentile(written["p99"][m], 99) == pytest.approx(1.0, rel=1e-4)
    assert not np.isclose(np.percentile(written["none"][m], 99), 1.0, rtol=1e-3)
    np.testing.assert_allclose(written["p99"][m] * np.percentile(written["none"][m], 99),
                               written["none"][m], rtol=1e-4, atol=1e-6)
    # A harmonizer saved without site maps (trained on physics-made pairs): the default
    # calibrate=sites keeps its saved setting; asking for it by name is an error naming it.
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(os.path.join(workdir, "harmonizer"), bare)
    meta = json.load(open(bare / "harmonizer.json"))
    meta["state"]["model"].pop("site_maps")
    meta["state"]["model"]["calibrate"] = "none"
    json.dump(meta, open(bare / "harmonizer.json", "w"))
    with h_cfg.unlocked():
        h_cfg.model.calibrate = "sites"
        h_cfg.harmonize.model_overrides = None
    assert _load_harmonizer(str(bare), h_cfg).cfg["calibrate"] == "none"
    with h_cfg.unlocked():
        h_cfg.harmonize.model_overrides = ("calibrate",)
    with pytest.raises(InputError, match="no site maps"):
        _load_harmonizer(str(bare), h_cfg)


def test_a_protocol_without_a_map_gets_the_one_the_physics_made_in_training(debug_run,
                                                                           tmp_path):
    # config.harmonize.new_protocol_map=physics (item 72): a scan whose protocol has no site
    # map gets one made at harmonize time.  Oracle: training's own map for that protocol,
    # made by the same physics on the same heads -- with the site's map removed from the saved
    # harmonizer, the map made at harmonize time is that map, and harmonize mode writes the
    # output the saved harmonizer wrote, saying how its map was made; "none" leaves it
    # uncalibrated, as before.  Fitted effects are read off the scans being harmonized.
    import shutil

    from phyjax import methods
    from phyjax.data.dataset import load_dataset
    from phyjax.data.split import Split, protocols_match
    from phyjax.methods import phycharm as method
    from phyjax.methods.base import protocol_from_json
    from phyjax.physics import scanner

    cfg, workdir, _ = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    data = load_dataset(cfg.data, progress=False)
    train = data.training_set(Split(tuple(split["train"]), tuple(split["test"])))
    _, scans = method._source_scans(train, "test")
    first = scans[0].protocol        # simulated first at training (the same draws as here)
    site = scans[0].site
    harm = methods.load(os.path.join(workdir, "harmonizer"))
    assert harm.cfg["physics_heads"] == method.heads_settings(cfg)
    (learned,) = [m for m in harm.cfg["site_maps"]
                  if protocols_match(protocol_from_json(m["protocol"]), first)]
    harm.cfg["site_maps"] = [m for m in harm.cfg["site_maps"] if m is not learned]
    own = [v for v in scans if protocols_match(v.protocol, first)]
    assert method.unmapped_protocols(harm, [v.protocol for v in own]) == [first]
    (made,) = method.physics_site_maps(harm, own)
    np.testing.assert_allclose(made["output"], learned["output"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(made["target"], learned["target"], rtol=1e-5, atol=1e-6)
    assert made["sites"] == [] and made["made"]["heads"] == cfg.model.calibrate_simulated
    assert made["made"]["effects"] == "drawn" and made["made"]["fitted_effects"] is None
    assert harm.cfg["site_maps"][-1] is made
    assert method.unmapped_protocols(harm, [v.protocol for v in own]) == []
    assert method.physics_site_maps(harm, own) == []          # once per protocol
    # another target than the fitted one: no map applies, none is made
    other = dataclasses.replace(harm.target_protocol, tr=harm.target_protocol.tr + 0.1)
    harm.cfg["site_maps"] = [m for m in harm.cfg["site_maps"] if m is not made]
    harm.maps_apply = lambda t: t is None
    assert method.unmapped_protocols(harm, [v.protocol for v in own], other) == []
    del harm.maps_apply
    # fitted effects: read off the scans given, and the heads imaged with them
    seen = []

    def fake_fit(p, volumes, heads, profile=None, seed=0, grid=None, reference=None):
        seen.append(([v.path for v in volumes], len(heads), reference))
        return scanner.ScannerEffects(b1_scale=0.9, noise_fraction=0.05), 0.1
    monkey = pytest.MonkeyPatch()
    monkey.setattr(method.simulated, "fit_site_effects", fake_fit)
    try:
        (fitted,) = method.physics_site_maps(harm, own, effects="fitted")
    finally:
        monkey.undo()
    assert seen == [([v.path for v in own], 2, None)]
    assert fitted["made"]["fitted_effects"]["b1_scale"] == 0.9
    assert not np.allclose(fitted["output"], learned["output"])
    harm.cfg.pop("physics_heads")
    harm.cfg["site_maps"] = [m for m in harm.cfg["site_maps"] if m is not fitted]
    with pytest.raises(InputError, match="new_protocol_map=none"):
        method.physics_site_maps(harm, own)

    # harmonize mode, a test subject's scan of that site, the harmonizer without its map (and
    # without the maps earlier tests' harmonize runs kept beside the shared run's)
    from phyjax.methods import map_cache

    bare = tmp_path / "bare"
    shutil.copytree(os.path.join(workdir, "harmonizer"), bare,
                    ignore=shutil.ignore_patterns(map_cache.FOLDER))
    meta = json.load(open(bare / "harmonizer.json"))
    meta["state"]["model"]["site_maps"] = [
        m for m in meta["state"]["model"]["site_maps"]
        if not protocols_match(protocol_from_json(m["protocol"]), first)]
    json.dump(meta, open(bare / "harmonizer.json", "w"))
    # "filtered": the site's own map with a wide in-plane filter (config.model.
    # calibrate_denoise chooses one at training where it gains enough; the saved map's own
    # choice, a filter or none, is what "saved" went through)
    filtered = tmp_path / "filtered"
    shutil.copytree(os.path.join(workdir, "harmonizer"), filtered,
                    ignore=shutil.ignore_patterns(map_cache.FOLDER))
    f_meta = json.load(open(filtered / "harmonizer.json"))
    chosen = {"sigma": 1.5, "range": 1.0, "psnr_gain_db": 0.3}
    for m in f_meta["state"]["model"]["site_maps"]:
        if protocols_match(protocol_from_json(m["protocol"]), first):
            saved_filter = m.get("denoise")
            m["denoise"] = chosen
    json.dump(f_meta, open(filtered / "harmonizer.json", "w"))
    subject = split["test"][0]
    anat = os.path.join(split["dataset"], f"sub-{subject}", f"ses-{site}", "anat")
    from phyjax.data.sidecar import read_site_table    # what the vendor's sidecar leaves out
    row = read_site_table(os.path.join(split["dataset"], "code", "site_parameters.tsv"))
    written, sidecars = {}, {}
    # "static": without the readout train the site table gives (GE's sidecar has no readout
    # count), the scan's protocol is the static form, which no training map is for
    # "kept": the same harmonize run again reads the map "made" kept beside the model
    # (config.harmonize.new_protocol_cache) instead of making it
    def not_again(*args, **kwargs):
        raise AssertionError("the kept map was made again")
    for name, folder, how in (("saved", "", "physics"), ("made", str(bare), "physics"),
                              ("kept", str(bare), "physics"), ("none", str(bare), "none"),
                              ("static", "", "physics"), ("filtered", str(filtered), "none")):
        h_cfg = cfg.copy_and_resolve_references()
        with h_cfg.unlocked():
            h_cfg.mode = "harmonize"
            h_cfg.harmonize.input = os.path.join(anat, f"sub-{subject}_ses-{site}_T1w.nii.gz")
            h_cfg.harmonize.mask = os.path.join(
                split["dataset"], "derivatives", "phyjax-sim", f"sub-{subject}", "anat",
                f"sub-{subject}_desc-brain_mask.nii.gz")
            h_cfg.harmonize.output = str(tmp_path / f"{name}.nii.gz")
            h_cfg.harmonize.figure = False
            h_cfg.harmonize.harmonizer = folder
            h_cfg.harmonize.new_protocol_map = how
            if not folder:      # nothing kept in the shared run's harmonizer folder
                h_cfg.harmonize.new_protocol_cache = "off"
            h_cfg.harmonize.tr = row.get(site, {}).get("tr_prep_s", -1.0)
            if name != "static":
                h_cfg.harmonize.n_readouts = row.get(site, {}).get("n_readouts", -1.0)
                h_cfg.harmonize.tr_readout = row.get(site, {}).get("tr_readout_s", -1.0)
        if how == "none" and name == "none":
            with pytest.warns(UserWarning, match="no site map was learned"):
                written[name] = nib.load(phycharm.run(h_cfg, workdir)).get_fdata()
        elif name == "kept":
            with pytest.MonkeyPatch.context() as m:
                m.setattr(method, "fit_site_maps", not_again)
                written[name] = nib.load(phycharm.run(h_cfg, workdir)).get_fdata()
        else:
            written[name] = nib.load(phycharm.run(h_cfg, workdir)).get_fdata()
        sidecars[name] = json.load(open(tmp_path / f"{name}.json"))["PhyjaxHarmonizer"]
    np.testing.assert_allclose(written["made"], written["saved"], rtol=1e-5, atol=1e-5)
    assert np.abs(written["none"] - written["saved"]).max() > 1e-3
    assert sidecars["saved"]["calibrate_site_map"] == [site]
    assert sidecars["saved"]["calibrate_site_map_made"] is None
    # the filter: named in the sidecar, applied inside the brain only, and it smooths (less
    # in-plane Laplacian energy than the same map's output without it)
    assert sidecars["saved"]["calibrate_site_map_filter"] == saved_filter
    assert sidecars["filtered"]["calibrate_site_map_filter"] == chosen
    brain = written["saved"] != 0
    assert np.array_equal(written["filtered"][~brain], written["saved"][~brain])
    assert np.abs(written["filtered"] - written["saved"]).max() > 1e-3

    def roughness(x):
        lap = 4 * x[1:-1, 1:-1] - x[2:, 1:-1] - x[:-2, 1:-1] - x[1:-1, 2:] - x[1:-1, :-2]
        return float(np.sum(lap[brain[1:-1, 1:-1]] ** 2))
    assert roughness(written["filtered"]) < 0.9 * roughness(written["saved"])
    assert sidecars["made"]["calibrate_site_map"].startswith(method.MADE_AT_HARMONIZE)
    assert sidecars["made"]["calibrate_site_map_made"]["effects"] == "drawn"
    np.testing.assert_array_equal(written["kept"], written["made"])
    assert sidecars["kept"] == sidecars["made"]
    (kept,) = glob.glob(str(bare / "new_protocol_maps" / "*.json"))
    assert sidecars["made"]["calibrate_site_map_made"]["kept"] == kept
    assert sidecars["none"]["calibrate_site_map"] == "none learned for this protocol: " \
        "uncalibrated"
    if row.get(site, {}).get("n_readouts", -1.0) > 0:
        assert sidecars["static"]["calibrate_site_map"].startswith(method.MADE_AT_HARMONIZE)
    assert json.load(open(bare / "harmonizer.json")) == meta      # the saved model unchanged
    # a BIDS folder: one map for the protocol, made from its scans, before any is harmonized
    from phyjax.experiments import harmonize as harmonize_mode

    b_cfg = cfg.copy_and_resolve_references()
    with b_cfg.unlocked():
        b_cfg.harmonize.bids_root = split["dataset"]
        b_cfg.harmonize.output = str(tmp_path / "bids_out")
        b_cfg.data.site_params = os.path.join(split["dataset"], "code", "site_parameters.tsv")
    made_calls = []
    real = method.physics_site_maps

    def counted(*args, **kwargs):
        made_calls.append(len(args[1]))
        return real(*args, **kwargs)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(method, "physics_site_maps", counted)
    try:
        harmonize_mode.harmonize(b_cfg.harmonize, str(bare), "", data_cfg=b_cfg.data,
                                 config=b_cfg)
    finally:
        monkey.undo()
    def n_scans(session):
        return min(harmonize_mode.NEW_MAP_SCANS, len(glob.glob(os.path.join(
            split["dataset"], "sub-*", f"ses-{session}", "anat", "*_T1w.nii.gz"))))
    # the site's protocol, and the target's own (the target site's scans harmonized to it had
    # no map either: training learns maps for the source protocols)
    assert sorted(made_calls) == sorted([n_scans(site), n_scans(harm.target_site)])
    stem = os.path.join(tmp_path, "bids_out", f"sub-{subject}", f"ses-{site}", "anat",
                        f"sub-{subject}_ses-{site}_desc-harmonized_T1w")
    assert json.load(open(stem + ".json"))["PhyjaxHarmonizer"]["calibrate_site_map"].startswith(
        method.MADE_AT_HARMONIZE)
    np.testing.assert_allclose(nib.load(stem + ".nii.gz").get_fdata(), written["saved"],
                               rtol=1e-5, atol=1e-5)
    with h_cfg.unlocked():
        h_cfg.harmonize.new_protocol_map = "guess"
    with pytest.raises(InputError, match=r"config\.harmonize\.new_protocol_map='guess'"):
        phycharm.run(h_cfg, workdir)
    with h_cfg.unlocked():
        h_cfg.harmonize.new_protocol_map = "physics"
        h_cfg.harmonize.new_protocol_cache = " "
    with pytest.raises(InputError, match=r"config\.harmonize\.new_protocol_cache=' '"):
        phycharm.run(h_cfg, workdir)


def test_mirror_tta_of_the_saved_harmonizer(debug_run):
    # model.tta=flip on a trained PhyCHarm: the mean of its maps and image on the scan and on
    # the scan mirrored along the axis its affine names left-right (x for this RAS data),
    # mirrored back; a volume with no affine to read is refused by name.
    from phyjax import methods
    from phyjax.data.dataset import load_dataset
    from phyjax.data.volumes import Volume

    cfg, workdir, _ = debug_run
    with open(os.path.join(workdir, "split.json")) as f:
        split = json.load(f)
    vol = load_dataset(cfg.data, progress=False).volumes[split["test"][0]]["spgr3T"]
    harm = methods.load(os.path.join(workdir, "harmonizer"))
    assert harm.cfg["tta"] == cfg.model.tta          # the trained run's setting, saved
    harm.cfg["calibrate"] = "none"   # the network's own outputs (the site map is not linear)
    harm.cfg["tta"] = "none"
    plain = harm.predict(vol)
    mirrored = Volume(vol.subject, vol.site, vol.protocol, np.flip(vol.image, 0).copy(),
                      np.flip(vol.mask, 0).copy(), vol.path, affine=vol.grid_affine())
    other = harm.predict(mirrored)
    harm.cfg["tta"] = "flip"
    both = harm.predict(vol)
    for k in ("t1", "m0", "harmonized"):
        np.testing.assert_allclose(both[k], 0.5 * (plain[k] + np.flip(other[k], 0)),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(both["harmonized"], plain["harmonized"], atol=1e-4)
    lost = Volume(vol.subject, vol.site, vol.protocol, vol.image, vol.mask,
                  "/nowhere/scan.nii.gz")
    with pytest.raises(InputError, match="/nowhere/scan.nii.gz.*affine"):
        harm.predict(lost)


def test_saved_phycharm_harmonizes_identically_in_a_fresh_process(debug_run, tmp_path):
    """The run's harmonizer/ folder is all another process needs, and it gives the same image."""
    from phyjax import methods
    from phyjax.data.dataset import load_dataset

    cfg, workdir, _ = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    subject, site = split["test"][0], split["source_sites"][0]
    folder = os.path.join(workdir, "harmonizer")
    data = load_dataset(cfg.data, progress=False)
    here = methods.load(folder).harmonize(data.volumes[subject][site])
    out = tmp_path / "fresh.npy"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
    proc = subprocess.run([sys.executable, "-c", _HARMONIZE_SCRIPT, folder, cfg.data.cache_dir,
                           subject, site, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), here)
    # ... and the image the evaluation wrote (same harmonizer, before saving).
    saved = nib.load(os.path.join(workdir, "harmonized", f"sub-{subject}",
                                  f"sub-{subject}_ses-{site}_desc-phycharm_T1w.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj, np.float32), here)


def test_fit_resumes_to_the_same_state(tmp_path):
    """An interrupted run resumed from its checkpoint equals an uninterrupted one."""
    tx = optax.adam(0.1)
    target = jnp.arange(4.0)

    @jax.jit
    def step(state, batch):
        loss, g = jax.value_and_grad(lambda p: jnp.sum((p * batch - target) ** 2))(state.params)
        u, o = tx.update(g, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, u),
                             opt_state=o), {"loss": loss}

    def batch_fn(i):
        return jnp.full(4, 1.0 + 0.1 * np.random.default_rng(i).random())

    fresh = lambda: TrainState.create(jnp.zeros(4), tx)  # noqa: E731
    full = fit(fresh(), step, batch_fn, 8, str(tmp_path / "a"), checkpoint_every=2,
               progress=False)
    fit(fresh(), step, batch_fn, 5, str(tmp_path / "b"), checkpoint_every=5, progress=False)
    resumed = fit(fresh(), step, batch_fn, 8, str(tmp_path / "b"), checkpoint_every=2,
                  progress=False)
    assert int(resumed.step) == 8
    np.testing.assert_allclose(resumed.params, full.params, rtol=1e-6)
    with open(tmp_path / "b" / "train_log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(steps) and steps[-1] == 8

    # Killed after logging steps past its last checkpoint: the resumed run logs them once.
    import shutil
    fit(fresh(), step, batch_fn, 6, str(tmp_path / "c"), checkpoint_every=4, log_every=1,
        progress=False)
    shutil.rmtree(tmp_path / "c" / "checkpoints" / "6")        # the kill came before this save
    resumed = fit(fresh(), step, batch_fn, 8, str(tmp_path / "c"), checkpoint_every=4,
                  log_every=1, progress=False)
    np.testing.assert_allclose(resumed.params, full.params, rtol=1e-6)
    with open(tmp_path / "c" / "train_log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 9))

    # Resumed by code that logs one metric more (and one fewer): every row keeps its columns.
    def step_plus(state, batch):
        state, metrics = step(state, batch)
        return state, {"extra": jnp.float32(7.0), **{k: v for k, v in metrics.items()
                                                      if k != "loss"}}

    fit(fresh(), step, batch_fn, 4, str(tmp_path / "d"), checkpoint_every=4, log_every=2,
        progress=False)
    fit(fresh(), step_plus, batch_fn, 8, str(tmp_path / "d"), checkpoint_every=4, log_every=2,
        progress=False)
    with open(tmp_path / "d" / "train_log.csv") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert all(len(r) == len(header) for r in rows)
    logged = [dict(zip(header, r)) for r in rows[1:]]
    assert [r["step"] for r in logged] == ["2", "4", "6", "8"]
    assert [r["extra"] for r in logged] == ["", "", "7.0", "7.0"]
    assert all(r["loss"] != "" for r in logged[:2]) and all(r["loss"] == "" for r in logged[2:])
    assert all(float(r["seconds_per_step"]) > 0 for r in logged)

    # A checkpoint past the steps asked for is refused, not returned as a shorter run's result.
    with pytest.raises(InputError, match="step 8, past the 5 steps"):
        fit(fresh(), step, batch_fn, 5, str(tmp_path / "a"), progress=False)


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "phyjax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_rejects_unknown_config_key(tmp_path):
    res = _cli("--config=configs/phycharm.py:debug", f"--workdir={tmp_path}",
               "--config.train.stepz=3")
    assert res.returncode != 0
    assert "stepz" in res.stderr


def test_cli_names_missing_input_file(tmp_path):
    res = _cli("--config=configs/phycharm.py:debug", f"--workdir={tmp_path}",
               "--config.mode=harmonize", f"--config.harmonize.input={tmp_path}/nope.nii.gz")
    assert res.returncode == 2
    assert "nope.nii.gz" in res.stderr


def test_resuming_with_a_different_model_is_refused(debug_run):
    cfg, workdir, _ = debug_run
    other = cfg.copy_and_resolve_references()
    with other.unlocked():
        other.model.cond_features = cfg.model.cond_features + 1
    with pytest.raises(InputError, match="different 'model' config"):
        phycharm.train_and_evaluate(other, workdir, progress=False)


def test_resuming_with_another_inference_setting_is_allowed(tmp_path):
    # model.refine, model.calibrate and model.tta act at inference only, and
    # model.calibrate_simulated and calibrate_slice_step after training (which heads and slices
    # the site maps are learned on): a trained run may be re-evaluated with them changed, and
    # also a config.json written before calibrate_simulated existed; any other model setting
    # still refuses to resume.
    from phyjax.experiments.common import prepare_workdir

    cfg = load_config()
    (tmp_path / "checkpoints").mkdir()
    prepare_workdir(cfg, str(tmp_path))
    other = cfg.copy_and_resolve_references()
    with other.unlocked():
        other.model.refine.enabled = not cfg.model.refine.enabled
        other.model.refine.noise = 0.02
        other.model.calibrate = "p99"
        other.model.tta = "none" if cfg.model.tta == "flip" else "flip"
        other.model.calibrate_simulated = cfg.model.calibrate_simulated + 8
        other.model.calibrate_slice_step = cfg.model.calibrate_slice_step + 1   # the maps' slices
    prepare_workdir(other, str(tmp_path))
    old = json.loads(cfg.to_json())
    del old["model"]["calibrate_simulated"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    prepare_workdir(other, str(tmp_path))
    with other.unlocked():
        other.model.t1_max = cfg.model.t1_max + 1.0
    with pytest.raises(InputError, match="different 'model' config"):
        prepare_workdir(other, str(tmp_path))


def test_read_run_returns_what_the_run_wrote_and_names_what_is_missing(tmp_path):
    # the benchmark scripts reload a run's data through read_run: the config prepare_workdir
    # wrote, the split write_split wrote, and an error naming the folder and file otherwise
    from phyjax.experiments.common import prepare_workdir, read_run

    cfg = load_config()
    run = str(tmp_path / "run")
    with pytest.raises(InputError, match=r"run: no config.json"):
        read_run(run)
    prepare_workdir(cfg, run)
    with pytest.raises(InputError, match=r"run: no split.json"):
        read_run(run)
    got, split = read_run(run, split=False)
    assert split is None and got.to_dict() == json.loads(cfg.to_json())
    (tmp_path / "run" / "split.json").write_text('{"test": ["03"]')
    with pytest.raises(InputError, match=r"split.json: not JSON"):
        read_run(run)
    (tmp_path / "run" / "split.json").write_text('{"test": ["03"]}')
    assert read_run(run)[1] == {"test": ["03"]}


@pytest.mark.parametrize("section,key,value", [
    ("train", "steps", 3), ("train", "pairs", "simulated"), ("train", "w_tissue", 1.0),
    ("target", "randomize", True)])
def test_resuming_with_other_training_or_target_settings_is_refused(tmp_path, section, key,
                                                                    value):
    # Before, only model/data/seed were compared: a run with other steps, pairs or target
    # range resumed the old network and saved it under the new settings' labels.
    from phyjax.experiments.common import prepare_workdir

    cfg = load_config()
    (tmp_path / "checkpoints").mkdir()
    prepare_workdir(cfg, str(tmp_path))
    other = cfg.copy_and_resolve_references()
    with other.unlocked():
        other[section][key] = value
    assert other[section][key] != cfg[section][key]
    with pytest.raises(InputError, match=f"different '{section}' config"):
        prepare_workdir(other, str(tmp_path))
    with other.unlocked():                       # how often it logs and saves: same network
        other[section][key] = cfg[section][key]
        other.train.log_every = cfg.train.log_every + 1
        other.train.checkpoint_every = cfg.train.checkpoint_every + 1
    prepare_workdir(other, str(tmp_path))


@pytest.mark.parametrize("key,changed", [("ensemble", 2),
                                         ("views", ("axial", "coronal", "sagittal")),
                                         ("calibrate_heads", 1)])
def test_a_run_saved_before_a_training_setting_existed_resumes_with_its_old_value(
        tmp_path, key, changed):
    """``experiments.common.ADDED_LATER``: a config.json without ``model.<key>`` was trained with the value it
    lists (one network; axial slices), so it resumes; any other value is another training."""
    from phyjax.experiments.common import prepare_workdir

    cfg = load_config()
    (tmp_path / "checkpoints").mkdir()
    old = json.loads(cfg.to_json())
    del old["model"][key]                           # a config.json written before it existed
    (tmp_path / "config.json").write_text(json.dumps(old))
    prepare_workdir(cfg, str(tmp_path))             # the listed value: the same training
    (tmp_path / "config.json").write_text(json.dumps(old))
    with cfg.unlocked():
        cfg.model[key] = changed
    with pytest.raises(InputError, match="different 'model' config"):
        prepare_workdir(cfg, str(tmp_path))


def _renamed_bids(src_root, dst, old, new):
    """Copy of a BIDS folder with session ``old`` renamed ``new`` (folders and file names)."""
    import shutil

    shutil.copytree(src_root, dst)
    for path in sorted(glob.glob(os.path.join(dst, "**", f"*ses-{old}*"), recursive=True),
                       key=len, reverse=True):   # files before their folders
        head, tail = os.path.split(path)
        os.rename(path, os.path.join(head, tail.replace(f"ses-{old}", f"ses-{new}")))
    return dst


def test_train_on_a_user_bids_folder_then_harmonize_in_a_fresh_process(debug_run, tmp_path):
    """The target is whatever session the user names; harmonize mode uses its scans' protocol."""
    from phyjax.data.sidecar import protocol_from_sidecar, read_sidecar
    from phyjax.methods.base import protocol_from_json

    cfg, workdir, _ = debug_run
    dataset = json.load(open(os.path.join(workdir, "split.json")))["dataset"]
    root = _renamed_bids(dataset, str(tmp_path / "bids"), "reference", "prismaHCP")
    run = str(tmp_path / "run")
    res = _cli("--config=configs/phycharm.py:debug", f"--workdir={run}",
               f"--config.data.bids_root={root}", "--config.data.target_site=prismaHCP",
               "--config.model.tta=none")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.load(open(os.path.join(run, "harmonizer", "harmonizer.json")))
    assert meta["target_site"] == "prismaHCP"
    sidecar = os.path.join(root, "sub-01", "ses-prismaHCP", "anat", "sub-01_ses-prismaHCP_T1w.json")
    assert protocol_from_json(meta["target_protocol"]) == protocol_from_sidecar(
        read_sidecar(sidecar), source=sidecar)
    # Harmonize a source scan in a new process: only the run folder and the input are needed.
    anat = os.path.join(root, "sub-01", "ses-spgr3T", "anat")
    out = str(tmp_path / "h.nii.gz")
    res = _cli("--config=configs/phycharm.py", f"--workdir={run}", "--config.mode=harmonize",
               f"--config.harmonize.input={anat}/sub-01_ses-spgr3T_T1w.nii.gz",
               f"--config.harmonize.output={out}", "--config.harmonize.figure=False")
    assert res.returncode == 0, res.stderr[-3000:]
    img, src = nib.load(out), nib.load(f"{anat}/sub-01_ses-spgr3T_T1w.nii.gz")
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata().max() > 0
    # The harmonizer was trained and evaluated without test-time augmentation: harmonize mode
    # keeps that (the config file's default, flip, is not a request), and applies it only
    # when the command names it.
    assert json.loads((tmp_path / "h.json").read_text())["PhyjaxHarmonizer"]["tta"] == "none"
    res = _cli("--config=configs/phycharm.py", f"--workdir={run}", "--config.mode=harmonize",
               f"--config.harmonize.input={anat}/sub-01_ses-spgr3T_T1w.nii.gz",
               f"--config.harmonize.output={tmp_path}/flip.nii.gz",
               "--config.harmonize.figure=False", "--config.model.tta=flip")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "flip.json").read_text())["PhyjaxHarmonizer"]["tta"] == "flip"
    assert not np.allclose(nib.load(str(tmp_path / "flip.nii.gz")).get_fdata(), img.get_fdata())


def _regrid(path, zoom_mm, flip_x=False, order=1):
    """Rewrite a NIfTI on another grid of the same world space (nilearn, independent of phyjax)."""
    from nilearn.image import resample_img

    img = nib.load(path)
    target = np.diag([zoom_mm, zoom_mm, zoom_mm, 1.0])
    target[:3, 3] = img.affine[:3, 3]
    out = resample_img(img, target_affine=target, interpolation="continuous" if order else
                       "nearest", force_resample=True, copy_header=True)
    data, affine = np.asarray(out.get_fdata(), np.float32), out.affine.copy()
    if flip_x:   # same world, LAS voxel order
        data = data[::-1]
        affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
        affine[:3, 0] *= -1
    nib.save(nib.Nifti1Image(data, affine), path)


def test_mixed_matrix_voxel_sizes_and_orientations_train_and_come_back(debug_run, tmp_path):
    """Subjects on different grids train together; outputs have each input's shape and affine."""
    import shutil

    cfg, workdir, _ = debug_run
    dataset = json.load(open(os.path.join(workdir, "split.json")))["dataset"]
    root = str(tmp_path / "bids")
    shutil.copytree(dataset, root)
    for subject, zoom, flip in (("02", 5.0, False), ("03", 3.0, True)):
        for path in glob.glob(os.path.join(root, "**", f"sub-{subject}*.nii.gz"), recursive=True):
            _regrid(path, zoom, flip, order=0 if "mask" in path else 1)
    run = str(tmp_path / "run")
    res = _cli("--config=configs/phycharm.py:debug", f"--workdir={run}",
               f"--config.data.bids_root={root}")
    assert res.returncode == 0, res.stderr[-3000:]
    split = json.load(open(os.path.join(run, "split.json")))
    for subject in split["test"]:
        for site in split["source_sites"]:
            src = nib.load(os.path.join(root, f"sub-{subject}", f"ses-{site}", "anat",
                                        f"sub-{subject}_ses-{site}_T1w.nii.gz"))
            out = nib.load(os.path.join(run, "harmonized", f"sub-{subject}",
                                        f"sub-{subject}_ses-{site}_desc-phycharm_T1w.nii.gz"))
            assert out.shape == src.shape and np.allclose(out.affine, src.affine)
            data = out.get_fdata()
            mask = nib.load(glob.glob(os.path.join(root, "derivatives", "*", f"sub-{subject}",
                                                   "anat", "*desc-brain_mask*"))[0]).get_fdata()
            assert np.isfinite(data).all() and (data[mask > 0] != 0).mean() > 0.9
            assert (data[mask == 0] != 0).mean() < 0.05
    meta = json.load(open(os.path.join(run, "harmonizer", "harmonizer.json")))
    assert meta["grid_mm"] == [4.0, 4.0, 4.0]     # the median voxel size of the scans


def test_a_killed_cli_run_resumes_to_the_uninterrupted_result(debug_run, tmp_path):
    """A real ``python -m phyjax.main`` process SIGKILLed mid-training (after its first
    checkpoint, before its last) and restarted with the same command ends with the parameters,
    training log and metrics of the uninterrupted run with the same seed (``debug_run``)."""
    import signal
    import time

    import flax.serialization

    cfg, reference, _ = debug_run
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "phyjax.main", "--config=configs/phycharm.py:debug",
           f"--workdir={run}", f"--config.data.cache_dir={cfg.data.cache_dir}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    first = run / "checkpoints" / str(cfg.train.checkpoint_every) / "commit_success.txt"
    last = run / "checkpoints" / str(cfg.train.steps) / "commit_success.txt"
    assert cfg.train.checkpoint_every < cfg.train.steps
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and first.exists()
    assert not last.exists(), "killed too late: training had finished"
    assert not (run / "metrics.csv").exists()        # nothing that looks finished
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]

    def params(folder):
        with open(folder / "harmonizer" / "params.msgpack", "rb") as f:
            return jax.tree.leaves(flax.serialization.msgpack_restore(f.read()))

    for a, b in zip(params(run), params(pathlib.Path(reference)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    def table(path, skip=()):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        return [{k: v for k, v in r.items() if k not in skip} for r in rows]

    log, ref_log = (table(p / "train_log.csv", skip=("seconds_per_step",))
                    for p in (run, pathlib.Path(reference)))
    assert [r["step"] for r in log] == [r["step"] for r in ref_log]   # each step logged once
    for name in ("train_log.csv", "metrics.csv", "metrics_per_subject.csv"):
        got, want = (table(p / name, skip=("seconds_per_step",))
                     for p in (run, pathlib.Path(reference)))
        assert len(got) == len(want) and got, name
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for k in g:
                try:
                    np.testing.assert_allclose(float(g[k]), float(w[k]), rtol=1e-4, atol=1e-6,
                                               err_msg=f"{name}: {k}")
                except ValueError:
                    assert g[k] == w[k], (name, k)


def test_a_bids_folder_stops_at_a_corrupt_scan_with_every_scan_before_it_written(debug_run,
                                                                              tmp_path):
    # Harmonize mode runs two scans at once (phyjax.parallel) and writes them one by one in
    # the folder's order: a scan that cannot be read stops the run at its own turn, naming the
    # file, with every scan before it written and none after it -- as one at a time did.
    import shutil

    from phyjax.data import bids
    from phyjax.experiments import harmonize as harmonize_mode

    cfg, workdir, _ = debug_run
    dataset = json.load(open(os.path.join(workdir, "split.json")))["dataset"]
    root = str(tmp_path / "bids")
    shutil.copytree(dataset, root)
    h_cfg = cfg.copy_and_resolve_references()
    with h_cfg.unlocked():
        h_cfg.harmonize.bids_root = root
        h_cfg.harmonize.output = str(tmp_path / "out")
        h_cfg.harmonize.new_protocol_map = "none"
        h_cfg.data.site_params = os.path.join(root, "code", "site_parameters.tsv")
    scans = bids.scan_bids(root, site_table=None, mask_label="brain")[:5]
    for scan in bids.scan_bids(root, site_table=None, mask_label="brain")[5:]:
        os.remove(scan.path)             # five scans are enough
    bad = scans[2].path
    with open(bad, "wb") as f:
        f.write(b"not a NIfTI file")
    with pytest.raises(InputError, match=os.path.basename(bad)):
        harmonize_mode.harmonize(h_cfg.harmonize, os.path.join(workdir, "harmonizer"), "",
                                 data_cfg=h_cfg.data, config=h_cfg)
    written = [os.path.exists(os.path.join(
        tmp_path, "out", os.path.relpath(os.path.dirname(s.path), root),
        os.path.basename(s.path).replace("_T1w.nii.gz", "_desc-harmonized_T1w.nii.gz")))
        for s in scans]
    assert written == [True, True, False, False, False]
