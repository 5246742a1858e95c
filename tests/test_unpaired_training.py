"""PhyCHarm without traveling subjects (issue 12): physics-made pairs, any target protocol,
native resolution, BIDS derivatives out."""

import glob
import json
import os
import re

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

import conftest

from phyjax import methods
from phyjax.data import simulated
from phyjax.data.dataset import load_dataset
from phyjax.data.nifti import InputError
from phyjax.data.volumes import normalize
from phyjax.evaluate.metrics import ssim
from phyjax.experiments import harmonize as harmonize_mode
from phyjax.physics import signal
from phyjax.physics.sequences import Protocol

REFERENCE = Protocol.from_degrees("mprage", tr=2.4, te=0.00222, ti=1.0, flip_angle_deg=8,
                                  field_strength=3.0)
SHORT_TI = Protocol.from_degrees("mprage", tr=2.0, te=0.003, ti=0.65, flip_angle_deg=10,
                                 field_strength=3.0)


def test_point_range_refuses_any_other_target_and_names_the_field():
    accepted = simulated.target_range(REFERENCE, randomize=False)
    assert simulated.range_problems(REFERENCE, accepted) == []
    problems = simulated.range_problems(SHORT_TI, accepted)
    assert any(p.startswith("ti 0.65 s") for p in problems), problems
    spgr = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=20)
    assert "family" in simulated.range_problems(spgr, accepted)[0]


def test_documented_range_accepts_inside_and_refuses_outside():
    accepted = simulated.target_range(REFERENCE, randomize=True)
    assert simulated.range_problems(SHORT_TI, accepted) == []
    too_long = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=1.6, flip_angle_deg=8)
    assert simulated.range_problems(too_long, accepted) == ["ti 1.6 s (trained for 0.6-1.2 s)"]
    with pytest.raises(InputError, match="outside the documented range"):
        simulated.target_range(too_long, randomize=True)


def test_sampled_targets_start_with_the_target_and_stay_in_range():
    targets = simulated.sample_targets(REFERENCE, 20, seed=3)
    assert targets[0] is REFERENCE and len(targets) == 20
    accepted = simulated.target_range(REFERENCE, randomize=True)
    assert all(simulated.range_problems(t, accepted) == [] for t in targets)
    assert len({round(float(t.ti), 6) for t in targets}) == 20   # really drawn
    assert {float(t.field_strength) for t in targets} == {1.5, 3.0}


def test_randomized_sources_cover_each_family_in_range_with_readout_trains_that_fit():
    """Domain randomisation: ``n`` protocols per source family, inside the family's documented
    range, MPRAGE ones with a readout train that fits TI and TR - TI (the signal equation
    accepts it), reproducible from the seed and different for another."""
    own = [Protocol.from_degrees("mprage", 2.3, 0.003, 0.9, 9.0),
           Protocol.from_degrees("spgr", 0.02, 0.0045, 0.0, 25.0)]
    drawn = simulated.sample_sources(own, 3, seed=0)
    assert [p.sequence for p in drawn].count("mprage") == 3
    assert [p.sequence for p in drawn].count("spgr") == 3
    for p in drawn:
        assert simulated.range_problems(p, simulated.target_range(p, True)) == []
        if p.sequence == "mprage":
            assert signal.has_readout(p)
            half = 0.5 * float(p.n_readouts) * float(p.tr_readout)
            assert half <= float(p.ti) and half <= float(p.tr) - float(p.ti)
            assert np.isfinite(float(signal.synthesize(p, 1.0, 0.08, 0.05, 0.7)))
    assert drawn == simulated.sample_sources(own, 3, seed=0)
    assert drawn != simulated.sample_sources(own, 3, seed=1)
    assert simulated.sample_sources([Protocol(tr=3.0, te=0.1, sequence="se")], 3, 0) == []


def test_simulated_targets_are_the_signal_equation_of_the_anatomy():
    """Oracle: the clean target slices equal the closed-form signal of the same anatomy's maps
    (computed here again, independently of SimulatedPairs), normalized like a real scan; the
    source carries scanner effects, so it is not the clean source image."""
    heads = simulated.anatomies(1, seed=0, voxel_size=4, deform_mm=2.0, jitter=0.05, texture=0.03)
    pairs = simulated.SimulatedPairs([SHORT_TI], [REFERENCE], heads, depth=2, min_fraction=0.3,
                                     context=1, seed=0)
    head = heads[0]
    maps = head.maps(3.0)
    mask = head.mask
    truth = np.asarray(signal.synthesize(REFERENCE, maps["t1"], maps["t2"], maps["t2star"],
                                         maps["pd"]))
    truth = normalize(truth, mask)
    from phyjax.data.slices import brain_slices, to_slices
    z = brain_slices(mask, 0.3)
    got = pairs.slices(np.arange(len(pairs)), 0, 0)
    expected = to_slices(truth, pairs.pads)[z][..., None]
    np.testing.assert_allclose(got["target"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["mask"][..., 0] > 0, to_slices(mask, pairs.pads)[z] > 0)
    clean_src = normalize(np.asarray(signal.synthesize(SHORT_TI, maps["t1"], maps["t2"],
                                                       maps["t2star"], maps["pd"])), mask)
    centre = got["source"][..., 1]
    inside = got["mask"][..., 0] > 0
    diff = np.abs(centre - to_slices(clean_src, pairs.pads)[z])[inside]
    assert diff.mean() > 0.01          # noise, bias and B1+ were applied
    np.testing.assert_allclose(got["t1"][..., 0][inside],
                               to_slices(maps["t1"], pairs.pads)[z][inside], rtol=1e-6)


@pytest.fixture(scope="module")
def unpaired_model(tmp_path_factory):
    """A debug PhyCHarm trained for a range of targets on physics-made pairs, with the training
    subjects' target-site scans removed from the data it sees (no traveling subjects)."""
    cfg = conftest.load_config("phycharm")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
        cfg.train.pairs = "simulated"
        cfg.train.steps = 300         # enough for the generator to order T1 on six sites
        cfg.train.n_anatomies = 2
        cfg.target.randomize = True
        # The oracle below images the effective T1/M0 maps, which is the data only when partial
        # volume is imaged at the parameter level (at 4 mm most voxels mix tissues).
        cfg.data.partial_volume = "parameter"
    data = load_dataset(cfg.data, progress=False)
    split = data.split(cfg.data.n_test, cfg.data.seed)
    unpaired = {s: {site: v for site, v in sites.items() if site != data.target_site}
                for s, sites in data.volumes.items()}
    train = split.training_set(unpaired, data.target_site, REFERENCE)
    workdir = str(tmp_path_factory.mktemp("run"))
    fitted = methods.fit("phycharm", cfg, train, workdir=workdir, progress=False)
    folder = methods.save(fitted, os.path.join(workdir, "harmonizer"))
    return cfg, data, split, fitted, folder


def _truth(volume, protocol):
    t1 = np.where(volume.mask, volume.t1, 1.0)        # the maps are 0 outside the brain
    image = signal.synthesize(protocol, t1, jnp.inf, jnp.inf, volume.m0)
    return normalize(np.asarray(image), volume.mask)


def test_one_model_harmonizes_to_two_targets_each_closer_to_its_own(unpaired_model):
    _, data, split, fitted, _ = unpaired_model
    assert fitted.cfg["pairs"] == "simulated"
    assert fitted.cfg["base"] == "resynth"      # config.model.base=auto for a range of targets
    volume = data.volumes[split.test[0]]["siemensMPRAGE3T"]       # 3 T: maps at the target B0
    truth = {"ref": _truth(volume, REFERENCE), "short": _truth(volume, SHORT_TI)}
    out = {"ref": fitted.harmonize(volume, REFERENCE), "short": fitted.harmonize(volume, SHORT_TI)}
    m = volume.mask
    out = {k: normalize(v, m) for k, v in out.items()}     # contrast, not scale, is compared
    score = {(o, t): float(ssim(out[o], truth[t], m)) for o in out for t in truth}
    assert score[("ref", "ref")] > score[("ref", "short")], score
    assert score[("short", "short")] > score[("short", "ref")], score


def test_out_of_range_target_is_refused_before_any_work(unpaired_model):
    _, data, split, fitted, _ = unpaired_model
    volume = data.volumes[split.test[0]]["siemensMPRAGE3T"]
    far = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=2.0, flip_angle_deg=8)
    with pytest.raises(InputError, match="ti 2 s"):
        fitted.harmonize(volume, far)


def _bids_valid(relpath: str) -> bool:
    """BIDS (schema) validity of a derivative file name: the raw-data rules of the official
    schema (bidsschematools) after removing the ``desc-`` entity derivatives add."""
    from bidsschematools import validator

    raw = re.sub(r"_desc-[0-9a-zA-Z+]+", "", relpath)
    result = validator.validate_bids([os.path.join("/bids", raw)], dummy_paths=True,
                                     accept_non_bids_dir=True)
    return not result["path_tracking"]


def test_bids_folder_is_harmonized_into_a_valid_derivatives_dataset(unpaired_model, tmp_path):
    cfg, data, _, fitted, folder = unpaired_model
    h = cfg.copy_and_resolve_references()
    out_root = str(tmp_path / "derivatives" / "phyjax")
    with h.unlocked():
        h.harmonize.bids_root = data.root
        h.harmonize.output = out_root
        h.target.sequence = "mprage"              # another target, given on the command line
        h.target.tr, h.target.ti, h.target.te = 2.0, 0.65, 0.003
        h.target.flip_angle, h.target.field_strength = 10.0, 3.0
    written = harmonize_mode.harmonize(h.harmonize, folder, "", target_cfg=h.target,
                                       data_cfg=h.data, config=h)
    assert written == out_root
    desc = json.load(open(os.path.join(out_root, "dataset_description.json")))
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "phyjax"
    assert desc["GeneratedBy"][0]["Config"]["target"]["ti"] == 0.65
    sources = sorted(glob.glob(os.path.join(data.root, "sub-*", "ses-*", "anat", "*_T1w.nii.gz")))
    assert sources
    for src in sources:
        rel = os.path.relpath(src, data.root)
        stem = os.path.join(out_root, rel[:-len("_T1w.nii.gz")])
        src_img = nib.load(src)
        for suffix in ("_desc-harmonized_T1w", "_T1map", "_M0map"):
            path = stem + suffix + ".nii.gz"
            assert _bids_valid(os.path.relpath(path, out_root)), path
            img = nib.load(path)
            np.testing.assert_allclose(img.affine, src_img.affine)
            assert img.shape == src_img.shape and np.isfinite(img.get_fdata()).all()
        t1 = nib.load(stem + "_T1map.nii.gz").get_fdata()
        assert 0.0 <= t1.min() and t1.max() <= fitted.cfg["t1_max"]
        meta = json.load(open(stem + "_desc-harmonized_T1w.json"))
        assert meta["InversionTime"] == pytest.approx(0.65)
        assert meta["PhyjaxHarmonizer"]["target_given_as_protocol"] is True
        assert json.load(open(stem + "_T1map.json"))["Units"] == "s"
    assert not _bids_valid("sub-01/ses-a/anat/sub-01_ses-a_foo-bar_T1w.nii.gz")  # can fail


def test_native_resolution_runs_on_the_input_grid():
    image = np.random.default_rng(0).random((20, 24, 16)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[4:16, 4:20, 3:13] = True
    ras = np.diag([1.0, 1.0, 1.2, 1.0])
    grid, data, m, resampled = harmonize_mode.working_grid(image, ras, mask, None)
    assert not resampled and data is image and m is mask       # nothing resampled
    np.testing.assert_array_equal(grid, ras)
    lps = np.diag([-1.0, -1.0, 1.2, 1.0])
    grid, data, m, resampled = harmonize_mode.working_grid(image, lps, mask, None)
    assert resampled and np.allclose(np.diag(grid)[:3], [1.0, 1.0, 1.2])  # own voxel size, RAS
    assert abs(int(m.sum()) - int(mask.sum())) <= 0.05 * mask.sum()
    grid, _, _, _ = harmonize_mode.working_grid(image, ras, mask, (2.0, 2.0, 2.0))
    assert np.allclose(np.diag(grid)[:3], 2.0)                  # the training voxel size


def test_own_unpaired_bids_folder_trains_and_harmonizes_end_to_end(tmp_path):
    """The README's flow on a folder without traveling subjects and without any scan of the
    target: each subject has one site; the target is given as a protocol."""
    import shutil

    from phyjax.experiments import phycharm

    cfg = conftest.load_config("phycharm")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.data.n_subjects = 4
    built = load_dataset(cfg.data, progress=False).root
    root = tmp_path / "mine"
    shutil.copytree(built, root)
    sites = ["geIRSPGR3T", "siemensMPRAGE3T"]
    for k, subject in enumerate(sorted(glob.glob(str(root / "sub-*")))):
        for ses in glob.glob(os.path.join(subject, "ses-*")):
            if not ses.endswith(sites[k % 2]):
                shutil.rmtree(ses)
    with cfg.unlocked():
        cfg.data.bids_root = str(root)
        cfg.data.n_test = 2
        cfg.target.sidecar = str(tmp_path / "target.json")
        cfg.train.n_anatomies = 1
    json.dump({"RepetitionTime": 2.4, "InversionTime": 1.0, "EchoTime": 0.00222,
               "FlipAngle": 8, "MagneticFieldStrength": 3, "ScanningSequence": "GR\\IR",
               "SequenceVariant": "SP\\MP", "MRAcquisitionType": "3D"},
              open(cfg.target.sidecar, "w"))
    workdir = str(tmp_path / "run")
    summary = phycharm.train_and_evaluate(cfg, workdir, progress=False)
    meta = json.load(open(os.path.join(workdir, "harmonizer", "harmonizer.json")))
    assert meta["state"]["model"]["pairs"] == "simulated"
    assert meta["target_protocol"]["ti_s"] == 1.0
    assert summary["rows"] == [] and any("not scored" in n for n in summary["notes"])
    split = json.load(open(os.path.join(workdir, "split.json")))
    saved = glob.glob(os.path.join(workdir, "harmonized", "sub-*", "*.nii.gz"))
    assert len(saved) == len(split["test"]) == 2
    with cfg.unlocked():
        cfg.mode = "harmonize"
        cfg.harmonize.bids_root = str(root)
        cfg.harmonize.output = str(tmp_path / "out")
    out = phycharm.run(cfg, workdir)
    assert len(glob.glob(os.path.join(out, "sub-*", "ses-*", "anat", "*_T1map.nii.gz"))) == 4


def test_example_folder_reads_like_real_vendor_sidecars(tmp_path):
    """The example's vendor-style sidecars read as the physicist reads the real ones: GE
    IR-SPGR lacks the inversion TR (``missing``), the others are complete, and the values are
    the physics the images were simulated with."""
    from phyjax.data import bids
    from phyjax.data.example import write_example_bids

    cfg = conftest.load_config("phycharm")
    with cfg.unlocked():
        cfg.data.cache_dir = str(tmp_path / "cache")
    out = write_example_bids(str(tmp_path / "example"), cfg.data)
    scans = bids.scan_bids(out, strict=False)
    assert len(scans) == cfg.data.n_subjects and all(s.mask_path for s in scans)
    for s in scans:
        site = json.load(open(s.path.replace(".nii.gz", ".json")))["InstitutionName"]
        if site == "geIRSPGR3T":
            assert s.reading.status == "missing" and "tr_prep_s" in s.reading.message
            continue
        assert s.reading.status == "ok", s.reading.message
        expected = cfg.data.sites[site]
        p = s.protocol
        assert p.sequence == expected.sequence
        assert float(p.tr) == pytest.approx(expected.tr) and float(p.te) == pytest.approx(expected.te)
