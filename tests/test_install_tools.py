"""tools/fetch_sdist.py: sdists located by name in a PEP 503 index and verified by our own sha256.

A local file:// index stands in for PyPI, so these run offline and do not depend on pip's log
format or any cache (issue 9: the old lookup grepped pip's `-vvv` output for a `#sha256=` fragment).
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import fetch_sdist  # noqa: E402


@pytest.fixture()
def index(tmp_path, monkeypatch):
    """A one-project simple index on disk: files/, simple/pkg-name/index.html linking to it."""
    payload = b"not really a tarball, but bytes with a known hash\n"
    files = tmp_path / "files"
    files.mkdir()
    (files / "pkg_name-1.0.tar.gz").write_bytes(payload)
    (files / "pkg_name-0.9.tar.gz").write_bytes(b"older")
    page = tmp_path / "simple" / "pkg-name"
    page.mkdir(parents=True)
    # Links as PyPI writes them: relative, one with a hash fragment and one without.
    (page / "index.html").write_text(
        '<html><body><a href="../../files/pkg_name-0.9.tar.gz">pkg_name-0.9.tar.gz</a>\n'
        '<a href="../../files/pkg_name-1.0.tar.gz#sha256=whatever">pkg_name-1.0.tar.gz</a></body></html>')
    missing = tmp_path / "empty-index"
    missing.mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", missing.as_uri())  # searched first, has nothing
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", (tmp_path / "simple").as_uri())
    return payload


def test_fetch_finds_by_name_and_verifies_hash(index, tmp_path):
    sha = hashlib.sha256(index).hexdigest()
    path = fetch_sdist.fetch("Pkg.Name", "pkg_name-1.0.tar.gz", sha, str(tmp_path / "dl"))
    assert Path(path).read_bytes() == index
    # A second call reuses the verified archive (works with the index gone).
    os.environ["PIP_EXTRA_INDEX_URL"] = (tmp_path / "nowhere").as_uri()
    assert fetch_sdist.fetch("pkg-name", "pkg_name-1.0.tar.gz", sha, str(tmp_path / "dl")) == path


def test_fetch_refuses_a_hash_that_differs(index, tmp_path):
    with pytest.raises(fetch_sdist.FetchError, match=r"pkg_name-1\.0\.tar\.gz: sha256 [0-9a-f]{64} .* differs"):
        fetch_sdist.fetch("pkg-name", "pkg_name-1.0.tar.gz", "0" * 64, str(tmp_path / "dl"))
    assert not any((tmp_path / "dl").iterdir()), "a rejected download must not be left behind"


def test_fetch_names_the_file_when_no_index_has_it(index, tmp_path):
    with pytest.raises(fetch_sdist.FetchError, match=r"pkg_name-2\.0\.tar\.gz: not offered by any package index"):
        fetch_sdist.fetch("pkg-name", "pkg_name-2.0.tar.gz", "0" * 64, str(tmp_path / "dl"))


def test_command_line_exit_status_and_message(index, tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "fetch_sdist.py"), "pkg-name", "pkg_name-1.0.tar.gz"]
    bad = subprocess.run(cmd + ["f" * 64, str(tmp_path / "a")], capture_output=True, text=True)
    assert bad.returncode == 1 and "pkg_name-1.0.tar.gz" in bad.stderr and "Traceback" not in bad.stderr
    good = subprocess.run(cmd + [hashlib.sha256(index).hexdigest(), str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert Path(good.stdout.strip()).read_bytes() == index

