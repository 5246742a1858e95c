"""Atomic outputs: a killed or failing writer never leaves a finished-looking file."""

import os
import signal
import subprocess
import sys

import conftest
import nibabel as nib
import numpy as np
import pytest

from phyjax.data.atomic import TMP_PREFIX, atomic_open, atomic_path
from phyjax.data.nifti import save_volume
from phyjax.evaluate import report

# A child process that writes one output through phyjax and is SIGKILLed at the worst moment:
# the content is complete under the temporary name, the rename has not happened.
_KILLED_WRITER = r"""
import os, signal, sys
import numpy as np
kind, path = sys.argv[1], sys.argv[2]
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if kind == "nifti":
    from phyjax.data.nifti import save_volume
    save_volume(np.ones((4, 4, 4)), np.eye(4), path)
elif kind == "csv":
    from phyjax.evaluate.report import write_rows
    write_rows([{"a": 1, "b": 2}], path)
elif kind == "figure":
    from phyjax.evaluate.figures import input_output_figure
    x = np.ones((8, 8, 8), np.float32)
    input_output_figure(x, x, x > 0, path)
print("not killed")
"""


@pytest.mark.parametrize("kind, name", [("nifti", "out.nii.gz"), ("csv", "metrics.csv"),
                                        ("figure", "figure.png")])
def test_a_writer_killed_before_the_rename_leaves_the_old_file(tmp_path, kind, name):
    path = tmp_path / name
    path.write_bytes(b"previous, complete output")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, kind, str(path)], env=env,
                          cwd=conftest.ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert path.read_bytes() == b"previous, complete output"
    others = [n for n in os.listdir(tmp_path) if n != name]
    # Only the hidden, unfinished temporary file is left, with the name's extension.
    assert len(others) == 1 and others[0].startswith(TMP_PREFIX) and others[0].endswith(name)
    assert os.path.getsize(tmp_path / others[0]) > 0


def test_a_writer_that_raises_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "a.json"
    with pytest.raises(ZeroDivisionError), atomic_open(path) as f:
        f.write('{"half": ')
        raise ZeroDivisionError("the writer failed half-way")
    assert not os.path.exists(path) and os.listdir(tmp_path / "sub") == []
    with pytest.raises(ValueError, match="mode"), atomic_open(path, "a"):
        pass


def test_outputs_are_complete_and_readable(tmp_path):
    """The renamed files are what the writers wrote (format chosen by the real extension)."""
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    out = save_volume(data, affine, tmp_path / "x" / "v.nii.gz")
    img = nib.load(out)
    np.testing.assert_array_equal(img.get_fdata(), data)
    np.testing.assert_array_equal(img.affine, affine)
    report.write_json(str(tmp_path / "s.json"), {"a": [1, 2]})
    assert (tmp_path / "s.json").read_text().replace(" ", "").replace("\n", "") == '{"a":[1,2]}'
    with atomic_path(tmp_path / "a.npy") as tmp:
        np.save(tmp, data)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)
    # Same permissions as a plain open() would give (not mkstemp's 0600).
    (tmp_path / "plain").write_text("x")
    assert os.stat(out).st_mode == os.stat(tmp_path / "plain").st_mode
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]
