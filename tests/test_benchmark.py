"""The benchmark: held-out guarantees, config, and one end-to-end debug run of the real command."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import conftest

from phyjax import methods
from phyjax.data.nifti import InputError
from phyjax.data.split import LeakageError, Split, TrainingSet
from phyjax.data.volumes import Volume
from phyjax.evaluate import report
from phyjax.experiments import benchmark as bm
from phyjax.physics.sequences import Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(variant="debug"):
    return conftest.load_config("benchmark", variant)


# ----------------------------------------------------------------------------- held out

_volumes = conftest.tiny_volumes


def test_split_is_disjoint_and_training_set_hides_test_subjects(tmp_path):
    with pytest.raises(LeakageError, match="02"):
        Split(train=("01", "02"), test=("02", "03"))
    with pytest.raises(ValueError):
        Split(train=(), test=("01",))
    volumes = _volumes(tmp_path)
    split = Split.by_subject(volumes, n_test=2, seed=0)
    train = split.training_set(volumes, "ref")
    assert set(train.volumes) == set(split.train) and not set(train.volumes) & set(split.test)
    with pytest.raises(TypeError):
        train.volumes["03"] = {}                   # read-only
    with pytest.raises(TypeError, match="Split.training_set"):
        TrainingSet(split, volumes, "ref")         # only a Split can build one
    with pytest.raises(TypeError, match="TrainingSet"):
        methods.fit("zscore", load_config(), volumes)   # a plain dict is refused
    fitted = methods.fit("zscore", load_config(), train)
    assert fitted.fitted_on == frozenset(split.train)
    assert fitted.target_protocol == volumes["01"]["ref"].protocol
    assert split.held_out_subjects({"zscore": fitted}) == split.test


def test_a_method_fitted_on_a_test_subject_cannot_be_evaluated(tmp_path):
    volumes = _volumes(tmp_path)
    split_a = Split(train=("01", "02"), test=("03", "04"))
    split_b = Split(train=("03", "04"), test=("01", "02"))
    fitted = {"nyul": methods.fit("nyul", load_config(), split_a.training_set(volumes, "ref"))}
    with pytest.raises(LeakageError, match=r"'nyul' was fitted on test subject\(s\) \['01', '02'\]"):
        split_b.held_out_subjects(fitted)
    split_a.check_rows([{"method": "nyul", "subject": "03"}], fitted)
    with pytest.raises(LeakageError, match="not a test subject"):
        split_a.check_rows([{"method": "nyul", "subject": "01"}], fitted)
    with pytest.raises(LeakageError, match="fitted on"):
        split_b.check_rows([{"method": "nyul", "subject": "01"}], fitted)


def test_combat_uses_training_rows_only_and_rejects_single_subject_sites(tmp_path):
    volumes = _volumes(tmp_path, subjects=("01", "02", "03", "04", "05"))
    split = Split(train=("01", "02", "03"), test=("04", "05"))
    rng = np.random.default_rng(0)
    table = {(s, site): rng.standard_normal(4) for s in volumes for site in ("ref", "x")}
    seen = []

    def features(s, site):
        seen.append(s)
        return table[(s, site)]

    fitted = methods.fit("combat", load_config(), split.training_set(volumes, "ref"),
                         features=features)
    assert fitted.fitted_on == frozenset(split.train) and set(seen) == set(split.train)
    # Mapped into the target site: target rows come back unchanged.
    x = np.stack([table[("04", "ref")], table[("04", "x")]])
    y = fitted.transform(x, ["ref", "x"])
    np.testing.assert_allclose(y[0], x[0], rtol=1e-10)
    assert not np.allclose(y[1], x[1])
    one = Split(train=("01",), test=("04", "05"))
    with pytest.raises(ValueError, match="at least 2 training samples per site"):
        methods.fit("combat", load_config(), one.training_set(volumes, "ref"), features=features)


def test_target_protocol_must_be_one_protocol(tmp_path):
    volumes = _volumes(tmp_path)
    v = volumes["02"]["ref"]
    volumes["02"]["ref"] = Volume(v.subject, v.site, Protocol.from_degrees(
        "mprage", tr=2.3, te=0.003, ti=0.9, flip_angle_deg=9), v.image, v.mask, v.path)
    train = Split(train=("01", "02"), test=("03",)).training_set(volumes, "ref")
    with pytest.raises(InputError, match="differs"):
        train.target_protocol()


@pytest.mark.parametrize("name", ["none", "zscore", "histmatch", "nyul", "whitestripe", "combat"])
def test_saved_and_loaded_methods_harmonize_identically(tmp_path, name):
    volumes = _volumes(tmp_path)
    split = Split(train=("01", "02", "03"), test=("04",))
    rng = np.random.default_rng(1)
    table = {(s, site): rng.standard_normal(5) for s in volumes for site in ("ref", "x")}
    h = methods.fit(name, load_config(), split.training_set(volumes, "ref"),
                    features=lambda s, site: table[(s, site)])
    loaded = methods.load(methods.save(h, str(tmp_path / "saved" / name)))
    assert type(loaded) is type(h) and loaded.name == name
    assert loaded.fitted_on == h.fitted_on and loaded.target_protocol == h.target_protocol
    if h.kind == "image":
        v = volumes["04"]["x"]
        np.testing.assert_array_equal(loaded.harmonize(v), h.harmonize(v))
    else:
        x, sites = np.stack([table[("04", "ref")], table[("04", "x")]]), ["ref", "x"]
        np.testing.assert_array_equal(loaded.transform(x, sites), h.transform(x, sites))


def test_loading_a_folder_without_a_harmonizer_names_it(tmp_path):
    with pytest.raises(InputError, match="no fitted harmonizer"):
        methods.load(str(tmp_path))


def test_config_variants_methods_and_unknown_keys():
    cfg = load_config("debug")
    assert cfg.method == "benchmark" and cfg.data.n_test >= 2
    assert tuple(cfg.unet.features) == tuple(cfg.model.features)   # follows the model's widths
    # Every registered method runs through the benchmark experiment: the default config runs all
    # but the GANs, whose own config of the same experiment adds their sections and budget
    # (configs/cyclegan_radiomics.py), so the default benchmark stays within its runtime.
    default = bm.selected_methods(cfg)
    assert default == tuple(m for m in bm.AVAILABLE if m in default)
    gans = set(bm.AVAILABLE) - set(default)
    assert gans == {m for m in bm.AVAILABLE if m == "pix2pix" or m.startswith("cyclegan")}
    gan_cfg = conftest.load_config("cyclegan_radiomics", "debug")
    with gan_cfg.unlocked():
        gan_cfg.methods = tuple(sorted(gans))
    assert set(bm.selected_methods(gan_cfg)) == gans
    with pytest.raises(AttributeError):
        cfg.not_a_field = 1                                        # locked
    with cfg.unlocked():
        cfg.methods = ("none", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        bm.selected_methods(cfg)
    with pytest.raises(ValueError, match="variant"):
        load_config("huge")
    proc = subprocess.run([sys.executable, "-m", "phyjax.main",
                           "--config=configs/benchmark.py:debug", "--workdir=/tmp/unused",
                           "--config.radiomics.no_such_knob=3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "no_such_knob" in proc.stderr


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    """``python -m phyjax.main --config=configs/benchmark.py:debug`` on a fresh dataset cache."""
    workdir = tmp_path_factory.mktemp("benchmark")
    cache = tmp_path_factory.mktemp("cache")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "phyjax.main",
                           "--config=configs/benchmark.py:debug", f"--workdir={workdir}",
                           f"--config.data.cache_dir={cache}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_config("debug"), str(workdir)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _num(x):
    return float(x) if x not in ("", None) else float("nan")


def test_debug_run_writes_every_table_and_figure(debug_run):
    cfg, workdir = debug_run
    for name in ("benchmark.md", "benchmark.csv", "benchmark_per_subject.csv",
                 "benchmark_subject_level.csv", "site_features.csv", "site_distributions.csv",
                 "examples.png", "volumes.png", "radiomics.png", "split.json", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    split = json.load(open(os.path.join(workdir, "split.json")))
    rows = _csv(os.path.join(workdir, "benchmark.csv"))
    methods = list(cfg.methods)
    assert {(r["method"], r["site"]) for r in rows} == {
        (m, s) for m in methods for s in split["source_sites"] + ["overall"]}
    for r in rows:
        image_method = r["method"] != "combat"
        for key in ("ssim", "psnr", "nrmse", "dice_gm", "dice_wm", "iou_csf", "recall_gm"):
            assert np.isfinite(_num(r[f"{key}_mean"])) == image_method, (r["method"], key)
        for key in ("vol_absdiff_gm", "vol_reldiff_wm", "radiomic_relerr"):
            assert np.isfinite(_num(r[f"{key}_mean"])), (r["method"], key)
        if r["site"] == "overall":
            for key in ("cov_gm", "cov_wm", "cov_csf", "site_acc", "ssim" if image_method else "radiomic_relerr"):
                mean, lo, hi = (_num(r[f"{key}_{s}"]) for s in ("mean", "ci_low", "ci_high"))
                assert lo <= mean + 1e-12 and mean <= hi + 1e-12, (r["method"], key)
    md = open(os.path.join(workdir, "benchmark.md")).read()
    assert "chance level" in md and "Site classifier" in md and "Anatomy preservation" in md
    overall = {r["method"]: r for r in rows if r["site"] == "overall"}
    assert float(overall["none"]["rank_corr_mean"]) == pytest.approx(1.0)   # the source itself
    assert float(overall["none"]["edge_corr_mean"]) == pytest.approx(1.0)
    repro = {r["method"]: r for r in _csv(os.path.join(workdir, "reproducibility.csv"))}
    assert set(repro) == set(cfg.methods) and "Reproducibility" in md
    for r in repro.values():
        assert -1.0 <= float(r["median_icc21"]) <= 1.0
    desc = json.load(open(os.path.join(workdir, "dataset_description.json")))
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "phyjax"
    for m in methods:
        assert (f"| *{m} (ceiling)* |" if m in report.CEILINGS else f"| {m} |") in md
    if "phycharm" in methods:   # its maps scored while the evaluation harmonized them
        assert "PhyCHarm's quantitative maps on the held-out subjects: T1 NRMSE" in md


def test_debug_run_reports_the_rescan_ceiling_and_never_ranks_it(debug_run):
    cfg, workdir = debug_run
    assert "rescan" in cfg.methods
    rows = {(r["method"], r["site"]): r for r in _csv(os.path.join(workdir, "benchmark.csv"))}
    split = json.load(open(os.path.join(workdir, "split.json")))
    ceiling = rows[("rescan", "overall")]
    # An independent re-scan: close to the target scan, but a new noise draw, not a copy.
    assert 0.98 < float(ceiling["ssim_mean"]) < 1.0
    assert 25.0 < float(ceiling["psnr_mean"]) < 60.0
    # The same image whatever the source site.
    ssim = [float(rows[("rescan", s)]["ssim_mean"]) for s in split["source_sites"]]
    assert max(ssim) - min(ssim) < 1e-9
    assert split["fitted_on"]["rescan"] == []           # fitted on nobody
    for line in open(os.path.join(workdir, "benchmark.md")):
        if line.startswith("| *rescan (ceiling)* |"):
            assert "**" not in line


def test_rescan_needs_re_scans_and_says_so(tmp_path):
    volumes = _volumes(tmp_path)
    train = Split(train=("01", "02", "03"), test=("04",)).training_set(volumes, "ref")
    with pytest.raises(InputError, match="re-scans"):
        methods.fit("rescan", load_config(), train)


def test_markdown_table_never_bolds_a_ceiling_row():
    summary = [{"method": m, "site": report.OVERALL, "ssim_mean": v, "ssim_ci_low": v,
                "ssim_ci_high": v, "ssim_n": 3} for m, v in (("a", 0.9), ("b", 0.95),
                                                             ("rescan", 0.99))]
    table = report.markdown_table(summary, ["ssim"])
    assert "| b | **0.950" in table and "| *rescan (ceiling)* | 0.990" in table


def test_debug_run_never_evaluates_a_training_subject(debug_run):
    cfg, workdir = debug_run
    split = json.load(open(os.path.join(workdir, "split.json")))
    assert len(split["test"]) == cfg.data.n_test and not set(split["train"]) & set(split["test"])
    fitted = [m for m in cfg.methods if m not in report.CEILINGS]
    for method in fitted:   # every method was fitted on exactly the training subjects
        assert split["fitted_on"][method] == split["train"], method
    # Every fitted method was saved with the subjects it saw.
    for method in fitted:
        meta = json.load(open(os.path.join(workdir, method, "harmonizer", "harmonizer.json")))
        assert meta["fitted_on"] == split["train"] and meta["method"] == method
    # Both learned methods got per-site output maps (the benchmark's U-Net shares PhyCHarm's
    # config.model.calibrate): PhyCHarm's learned on heads made by the physics, the U-Net's,
    # which has no physics, on the training pairs
    assert cfg.unet.calibrate == cfg.model.calibrate == "sites"
    for method, key in (("phycharm", "model"), ("unet", "unet")):
        meta = json.load(open(os.path.join(workdir, method, "harmonizer", "harmonizer.json")))
        state = meta["state"][key]
        assert state["calibrate"] == "sites", method
        assert sorted(s for m in state["site_maps"] for s in m["sites"]) == sorted(
            split["source_sites"]), method
        physics = [f"physics-{k + 1:02d}" for k in range(cfg.model.calibrate_simulated)]
        assert state["calibration_subjects"] == (physics if method == "phycharm"
                                                 else split["train"]), method
    for name in ("benchmark_per_subject.csv", "benchmark_subject_level.csv"):
        subjects = {r["subject"].zfill(2) for r in _csv(os.path.join(workdir, name))}
        assert subjects == set(split["test"]), name
    # The site-difference report covers every subject and site (no fitting involved).
    features = _csv(os.path.join(workdir, "site_features.csv"))
    assert len(features) == cfg.data.n_subjects * len(cfg.data.sites)


# ----------------------------------------------------------------------------- no traveling subjects

def _unpaired_folder(tmp_path, travelers=()):
    """The debug default data (8 subjects) as a BIDS folder: 01-04 scanned only at the target
    site, 05-08 only at spgr3T, except ``travelers``, who keep both; an ``age`` column."""
    import glob
    import shutil

    from phyjax.data import synthetic

    cfg = load_config("debug")
    with cfg.unlocked():
        cfg.data.n_subjects = 8
    root = synthetic.build_default_dataset(cfg.data, str(tmp_path / "cache"), progress=False)
    bids_root = str(tmp_path / "bids")
    shutil.copytree(root, bids_root)
    for i in range(1, 9):
        keep = ("reference", "spgr3T") if f"{i:02d}" in travelers else (
            ("reference",) if i <= 4 else ("spgr3T",))
        for d in glob.glob(f"{bids_root}/sub-{i:02d}/ses-*"):
            if not d.endswith(keep):
                shutil.rmtree(d)
    with open(f"{bids_root}/participants.tsv", "w") as f:        # a covariate to keep
        f.write("participant_id\tage\n" + "".join(f"sub-{i:02d}\t{20 + 7 * i}\n"
                                                   for i in range(1, 9)))
    return bids_root


def _run_unpaired(tmp_path, bids_root):
    run = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "phyjax.main",
                           "--config=configs/benchmark.py:debug", f"--workdir={run}",
                           f"--config.data.bids_root={bids_root}", "--config.data.n_test=4",
                           "--config.eval.covariates=('age',)"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_traveling_subjects_are_held_out_subjects_with_a_target_and_another_scan():
    """Who gets the paired metrics in the unpaired benchmark: a held-out subject scanned at the
    target site and at least one other; nobody in a folder without traveling subjects."""
    from phyjax.data.dataset import Dataset
    from phyjax.experiments.unpaired import paired_metrics, traveling_subjects

    def dataset(sites_of):
        return Dataset(volumes={s: dict.fromkeys(sites) for s, sites in sites_of.items()},
                       root="", target_site="ref", has_maps=False)

    unpaired = dataset({"01": ["ref"], "02": ["ref"], "03": ["a"], "04": ["b"]})
    scans = [(s, site) for s, v in unpaired.volumes.items() for site in v]
    assert traveling_subjects(unpaired, scans) == []
    # ... so the benchmark gets no paired rows, hence writes no paired-metrics CSV or section
    notes = []
    assert paired_metrics(None, {}, unpaired, scans, {}, {}, notes) == ([], []) and notes == []
    partly = dataset({"01": ["ref", "a"], "02": ["ref"], "03": ["a", "b"], "04": ["ref", "b"]})
    scans = [(s, site) for s, v in partly.volumes.items() for site in v]
    assert traveling_subjects(partly, scans) == ["01", "04"]
    # only the held-out scans count: 04's other-site scan is in the training set
    assert traveling_subjects(partly, [k for k in scans if k != ("04", "b")]) == ["01"]


def test_unpaired_benchmark_with_no_method_left_names_the_folder_and_each_reason():
    """A folder on which every requested method is skipped (the sarcoma MR's sidecars lack the
    acquisition parameters PhyCHarm needs) is an error naming the folder and why -- before it
    crashed drawing a figure with no method in it."""
    from phyjax.data.dataset import Dataset
    from phyjax.data.nifti import InputError
    from phyjax.experiments.unpaired import require_methods, runnable

    class Scan:
        protocol = None

    data = Dataset(volumes={"01": {"ref": Scan()}, "02": {"a": Scan()}}, root="/data/sts",
                   target_site="ref", has_maps=False)
    keep, notes = runnable(["phycharm", "unet"], data)
    assert keep == [] and len(notes) == 2
    with pytest.raises(InputError, match=r"No method can run on /data/sts: phycharm not run: "
                                         r"it needs acquisition parameters, which 2 scan.*unet"):
        require_methods(keep, notes, data)
    keep, notes = runnable(["phycharm", "zscore"], data)
    require_methods(keep, notes, data)          # one left: no error
    assert keep == ["zscore"]


@pytest.fixture(scope="module")
def unpaired_run(tmp_path_factory):
    """The unpaired benchmark on the debug data as a BIDS folder with two traveling subjects
    (03, 05; everyone else scanned at one site only): ``(bids_root, run folder)``."""
    tmp_path = tmp_path_factory.mktemp("unpaired")
    bids_root = _unpaired_folder(tmp_path, travelers=("03", "05"))
    return bids_root, _run_unpaired(tmp_path, bids_root)


def test_benchmark_runs_without_traveling_subjects(unpaired_run):
    """Different subjects at each site: the unpaired benchmark, the paired-only methods skipped
    (two of eight subjects travel; they change who gets paired metrics, the next test)."""
    _, run = unpaired_run
    rows = {r["method"]: r for r in _csv(run / "unpaired.csv")}
    everyone = rows.pop("none (all subjects)")            # every scan, before harmonization
    assert int(everyone["n_images"]) == 10 and float(everyone["site_acc"]) == 1.0
    # PhyCHarm trains on physics-made pairs (the sidecars give the protocols); the U-Net cannot
    assert set(rows) == {"none", "zscore", "histmatch", "nyul", "whitestripe", "combat",
                         "phycharm", "phycharm_unpaired"}
    md = (run / "unpaired.md").read_text()
    assert "unet not run: it trains on paired scans" in md and "phycharm not run" not in md
    meta = json.load(open(run / "phycharm" / "harmonizer" / "harmonizer.json"))
    assert meta["state"]["model"]["pairs"] == "simulated"
    # no traveling pairs to learn per-site output maps on: the default calibrate_with="auto"
    # learns them on heads made by the physics (the debug config's 2), one per source
    # protocol, and the saved model says so (docs/phycharm_ablation.md item 70)
    assert meta["state"]["model"]["calibrate"] == "sites"
    assert meta["state"]["model"]["calibration_subjects"] == ["physics-01", "physics-02"]
    assert {m["subjects"] for m in meta["state"]["model"]["site_maps"]} == {2}
    # Before harmonization the two protocols are far apart; histogram matching to the target's
    # pooled histogram makes the in-ROI intensity distributions (nearly) equal ...
    none, hist = rows["none"], rows["histmatch"]
    assert float(none["intensity_distance"]) > 0.1 and float(hist["intensity_distance"]) < 0.05
    # ... and, being monotone, keeps every image's rank structure; no harmonization keeps all.
    assert float(hist["rank_corr"]) > 0.999 and float(none["edge_corr"]) == pytest.approx(1.0)
    assert float(none["bio_age"]) == pytest.approx(1.0) and "biology kept: age" in md
    split = json.load(open(run / "split.json"))
    held_out = {r["subject"].zfill(2) for r in _csv(run / "unpaired_features.csv")}
    assert held_out == set(split["test"])
    for method in rows:
        assert split["fitted_on"][method] == split["train"]
    assert (run / "site_embedding.png").stat().st_size > 0
    # The downstream task across sites: core vs rim of the brain mask is ranked perfectly within
    # every site, and the threshold learnt at one protocol transfers to the other after
    # histogram matching (with readout trains this SPGR and the MPRAGE target are close enough
    # that it often transfers without, too).  ComBat has no images.
    assert float(none["task_auc"]) == 1.0 and float(hist["task_auc"]) == 1.0
    assert float(hist["task_acc"]) >= max(float(none["task_acc"]), 0.9)
    assert np.isnan(_num(rows["combat"]["task_acc"])) and "core-vs-rim" in md
    per_site = _csv(run / "unpaired_downstream.csv")
    assert {(r["method"], r["site"]) for r in per_site if r["task"] == "core_vs_rim"} == {
        (m, s) for m in [*rows, "none (all subjects)"] if m != "combat"
        for s in ("reference", "spgr3T")}
    assert {r["method"] for r in per_site if r["task"] == "covariate:age"} == {
        *rows, "none (all subjects)"}
    assert all(np.isfinite(_num(rows[m]["cov_age_mae"])) for m in rows)


def test_unpaired_benchmark_adds_paired_metrics_for_traveling_subjects(unpaired_run):
    """A partly paired folder: the held-out subjects that also have a target-site scan get the
    paired metrics (against that scan), the others only the unpaired ones."""
    from phyjax.data.dataset import load_dataset

    bids_root, run = unpaired_run
    split = json.load(open(run / "split.json"))
    travelers = {"03", "05"} & set(split["test"])
    assert travelers and {"03", "05"} - travelers <= set(split["train"])
    md = (run / "unpaired.md").read_text()
    assert f"Traveling subjects (n={len(travelers)})" in md and "co-registered" in md
    per_image = _csv(run / "unpaired_paired_metrics_per_subject.csv")
    assert {r["subject"].zfill(2) for r in per_image} == travelers
    assert {r["site"] for r in per_image} == {"spgr3T"}             # never the target itself
    methods = {"none", "zscore", "histmatch", "nyul", "whitestripe", "combat", "phycharm",
               "phycharm_unpaired"}
    assert {r["method"] for r in per_image} == methods
    overall = {r["method"]: r for r in _csv(run / "unpaired_paired_metrics.csv")
               if r["site"] == "overall"}
    assert set(overall) == methods
    for m in methods - {"combat"}:
        for key in ("ssim", "psnr", "nrmse", "dice_gm", "vol_reldiff_wm", "radiomic_relerr"):
            assert np.isfinite(_num(overall[m][f"{key}_mean"])), (m, key)
    assert np.isnan(_num(overall["combat"]["ssim_mean"]))
    assert np.isfinite(_num(overall["combat"]["radiomic_relerr_mean"]))
    # Each method's own output was scored (not the source's).  Whether histogram matching comes
    # closer than the source is a property of the data, not of the wiring: with per-subject
    # atrophy (default data format 4) a pooled target histogram no longer fits every subject.
    assert float(overall["histmatch"]["ssim_mean"]) != float(overall["none"]["ssim_mean"])
    assert all(0.0 < float(overall[m]["ssim_mean"]) <= 1.0 for m in methods - {"combat"})
    # Oracle: "none" (the source inside its mask) against the target scan, in numpy.
    cfg = load_config("debug")
    with cfg.unlocked():
        cfg.data.bids_root = bids_root
    data = load_dataset(cfg.data, progress=False, paired=False, require_protocols=False)
    for r in per_image:
        if r["method"] != "none":
            continue
        subject = r["subject"].zfill(2)
        src, tgt = data.volumes[subject]["spgr3T"], data.volumes[subject]["reference"]
        out = np.where(src.mask, src.image, 0.0).astype(np.float64)[tgt.mask]
        ref = tgt.image.astype(np.float64)[tgt.mask]
        mse = np.mean((out - ref) ** 2)
        assert float(r["nrmse"]) == pytest.approx(np.sqrt(mse / np.mean(ref ** 2)), rel=1e-4)
        assert float(r["psnr"]) == pytest.approx(10 * np.log10(np.ptp(ref) ** 2 / mse), rel=1e-4)
