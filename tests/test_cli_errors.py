"""Bad command lines and output folders: one line naming the value, exit status 2, before any work.

Flag-parsing cases run the real command (``python -m phyjax.main``; they stop before JAX is
imported, ~0.5 s each); the output-folder checks call :func:`phyjax.main.check_config` in-process
on real folders (a file, a read-only folder, a disk with less free space than required).
"""

import json
import os
import stat
import subprocess
import sys

import conftest
import nibabel as nib
import numpy as np
import pytest

from phyjax.data.atomic import TMP_PREFIX, check_writable
from phyjax.data.nifti import InputError

ROOT = conftest.ROOT


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "phyjax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _one_line_error(res, *names):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phyjax: error: "), res.stderr[-2000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.mark.parametrize("args, names", [
    (["--config.train.stepz=3"], ["--config.train.stepz", "'stepz'", "steps"]),
    (["--config.nothere.x=1"], ["--config.nothere.x", "'nothere'"]),
    (["--config.train.steps=abc"], ["--config.train.steps=abc"]),
    (["--bogus=1"], ["bogus"]),
    (["extra_argument"], ["extra_argument"]),
])
def test_bad_flags_are_one_line(tmp_path, args, names):
    res = _cli("--config=configs/phycharm.py:debug", f"--workdir={tmp_path}/run", *args)
    _one_line_error(res, *names)
    assert not os.path.exists(tmp_path / "run")


def test_bad_config_file_or_variant_is_one_line(tmp_path):
    line = _one_line_error(_cli("--config=configs/nope.py", f"--workdir={tmp_path}"),
                           "configs/nope.py", "not found")
    assert "Traceback" not in line
    _one_line_error(_cli("--config=configs/phycharm.py:debgu", f"--workdir={tmp_path}"),
                    "configs/phycharm.py:debgu", "'debgu'", "'debug'")


def test_workdir_that_is_a_file_stops_the_real_command(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    _one_line_error(_cli("--config=configs/phycharm.py:debug", f"--workdir={afile}"),
                    str(afile), "is a file")
    assert afile.read_text() == "not a folder"


def _config(**overrides):
    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        for key, value in overrides.items():
            node = cfg
            *path, last = key.split(".")
            for p in path:
                node = node[p]
            node[last] = value
    return cfg


def test_unknown_method_and_mode(tmp_path):
    from phyjax.main import check_config

    with pytest.raises(InputError, match=r"--config.method='foo'.*benchmark, inspect, phycharm"):
        check_config(_config(method="foo"), str(tmp_path), 0)
    with pytest.raises(InputError, match=r"--config.mode='harmonise'.*'train_eval' or 'harmonize'"):
        check_config(_config(mode="harmonise"), str(tmp_path), 0)


def _read_only_folder(tmp_path):
    """A folder this process cannot write: chmod 555 (ignored by root, so /sys for root)."""
    if os.geteuid() == 0:
        return "/sys"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return str(ro)


def test_output_folders_are_checked_before_any_work(tmp_path):
    from phyjax.main import check_config

    cache = str(tmp_path / "cache")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match=f"{afile}: .*is a file"):
        check_config(_config(**{"data.cache_dir": cache}), str(afile), 0)
    with pytest.raises(InputError, match=f"{afile}/run: .*{afile} is a file"):
        check_config(_config(**{"data.cache_dir": cache}), str(afile / "run"), 0)
    ro = _read_only_folder(tmp_path)
    with pytest.raises(InputError, match=f"{ro}/run: cannot write there"):
        check_config(_config(**{"data.cache_dir": cache}), f"{ro}/run", 0)
    with pytest.raises(InputError, match=f"{ro}/cache: cannot write there"):   # dataset cache
        check_config(_config(**{"data.cache_dir": f"{ro}/cache"}), str(tmp_path / "w"), 0)
    # Harmonize mode writes its output, not the (possibly read-only) model folder.
    h = {"mode": "harmonize", "harmonize.input": "t1w.nii.gz"}
    check_config(_config(**h, **{"harmonize.output": str(tmp_path / "h.nii.gz")}), ro, 0)
    with pytest.raises(InputError, match=f"{ro}: cannot write there"):
        check_config(_config(**h, **{"harmonize.output": f"{ro}/h.nii.gz"}), str(tmp_path), 0)
    with pytest.raises(InputError, match="harmonize.output='result'.*.nii or .nii.gz"):
        check_config(_config(**h, **{"harmonize.output": "result"}), str(tmp_path), 0)
    with pytest.raises(InputError, match=f"{ro}/deriv: cannot write there"):
        check_config(_config(**{"mode": "harmonize", "harmonize.bids_root": str(tmp_path),
                                "harmonize.output": f"{ro}/deriv"}), str(tmp_path), 0)
    # Nothing was made or left behind by the checks.
    assert sorted(os.listdir(tmp_path)) == ["afile"] + (["ro"] if ro != "/sys" else [])


def test_full_disk_is_refused_with_the_free_space(tmp_path):
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free / 2 ** 20
    check_writable(tmp_path / "new", min_free_mb=free_mb / 2)
    with pytest.raises(InputError, match=f"{tmp_path}/new: only [0-9]+ MB free .* at least"):
        check_writable(tmp_path / "new", min_free_mb=free_mb * 2 + 1)
    assert not os.path.exists(tmp_path / "new")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]


def test_bids_folder_with_one_subject_names_the_folder(tmp_path):
    """Loaded (a few voxels), then refused at the split, naming the folder and n_test."""
    from phyjax.data.dataset import load_dataset

    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    img = np.zeros((8, 8, 8), np.float32)
    img[2:6, 2:6, 2:6] = 1.0
    nib.save(nib.Nifti1Image(img, np.eye(4)), anat / "sub-01_T1w.nii.gz")
    masks = root / "derivatives" / "masks" / "sub-01" / "anat"
    masks.mkdir(parents=True)
    nib.save(nib.Nifti1Image((img > 0).astype(np.uint8), np.eye(4)),
             masks / "sub-01_desc-brain_mask.nii.gz")
    (anat / "sub-01_T1w.json").write_text(json.dumps(
        {"RepetitionTime": 0.02, "EchoTime": 0.004, "FlipAngle": 25,
         "MagneticFieldStrength": 3, "ScanningSequence": "GR", "SequenceVariant": "SP",
         "MRAcquisitionType": "3D", "Manufacturer": "Philips", "InstitutionName": "site1"}))
    cfg = _config(**{"data.bids_root": str(root)})
    data = load_dataset(cfg.data, progress=False, paired=False)
    with pytest.raises(InputError, match=f"{root}: 1 subject \\(01\\).*n_test=1.*at least 2"):
        data.split(cfg.data.n_test, cfg.data.seed)
