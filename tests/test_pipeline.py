"""End to end: the debug config trains, evaluates, writes finite outputs, resumes, harmonizes."""

import csv
import json
import os
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
                 "figure.png", "split.json", "config.json", "train_log.csv"):
        path = os.path.join(workdir, name)
        assert os.path.getsize(path) > 0, name
    with open(os.path.join(workdir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    sources = [s for s in cfg.data.sites if s != cfg.data.target_site]
    methods = set(cfg.eval.baselines) | {"phycharm"}
    assert {(r["method"], r["site"]) for r in rows} == {(m, s) for m in methods for s in sources}
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
    out_path = phycharm.run(h_cfg, workdir)
    out = nib.load(out_path)
    np.testing.assert_allclose(out.affine, affine)
    assert out.shape == img.shape
    data = out.get_fdata()
    assert np.isfinite(data).all() and data.max() > 0
    assert np.all(data[mask.get_fdata() == 0] == 0)
    assert os.path.exists(str(tmp_path / "out.png"))

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
