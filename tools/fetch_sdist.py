#!/usr/bin/env python3
"""Fetch one source archive from the package index pip is configured with, verified by its sha256.

Usage:  python tools/fetch_sdist.py PACKAGE FILENAME SHA256 DEST_DIR

The archive is looked up by name through the PEP 503 "simple" pages of pip's index
(``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` when set, else ``pip config``'s
``global.index-url`` / ``global.extra-index-url``, else https://pypi.org/simple), downloaded, and
its sha256 computed here with hashlib. Nothing depends on how pip prints or annotates links, on
pip's cache, or on anything left in ``$HOME``. An archive already in DEST_DIR is reused only when
its hash matches the pin.

Exit status 0 and the archive's path on stdout; otherwise exit 1 with one line on stderr naming
the file and the problem (not found in any index, download failed, sha256 differs from the pin).
Standard library only: this runs before anything else is installed.
"""
from __future__ import annotations

import hashlib
import html.parser
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_INDEX = "https://pypi.org/simple"
PROG = "fetch_sdist"


class FetchError(RuntimeError):
    """The archive could not be found, downloaded or verified; the message names the file."""


def _pip_config(key: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", key],
        capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def index_urls() -> list[str]:
    """Indexes to search, in pip's order: the main index, then the extra ones."""
    if "PIP_INDEX_URL" in os.environ:
        main = os.environ["PIP_INDEX_URL"]
    else:
        main = _pip_config("global.index-url") or DEFAULT_INDEX
    extra = os.environ.get("PIP_EXTRA_INDEX_URL")
    if extra is None:
        extra = _pip_config("global.extra-index-url")
    return [u for u in [main, *extra.split()] if u]


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def _read(url: str, timeout: float = 60.0) -> bytes:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        with open(path, "rb") as f:
            return f.read()
    req = urllib.request.Request(url, headers={"Accept": "text/html", "User-Agent": "phyjax-fetch-sdist"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def find_link(package: str, filename: str, indexes: list[str]) -> str:
    """The download address of ``filename`` on the project page of ``package`` in the first index offering it."""
    name = re.sub(r"[-_.]+", "-", package).lower()  # PEP 503 normalisation
    tried = []
    for index in indexes:
        page = index.rstrip("/") + "/" + name + "/"
        try:
            text = _read(page).decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as e:
            tried.append(f"{page} ({e})")
            continue
        parser = _Anchors()
        parser.feed(text)
        for href in parser.hrefs:
            url = urllib.parse.urljoin(page, href)
            base = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
            if base == filename:
                return url.split("#", 1)[0]
        tried.append(page)
    raise FetchError(f"{filename}: not offered by any package index ({'; '.join(tried)})")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(package: str, filename: str, sha256: str, dest: str) -> str:
    """Download ``filename`` into ``dest`` (or reuse it there) and return its path once its sha256 equals ``sha256``.

    Raises:
        FetchError: not found in any index, download failed, or the sha256 differs from the pin.
    """
    os.makedirs(dest, exist_ok=True)
    path = os.path.join(dest, filename)
    if os.path.exists(path) and sha256_of(path) == sha256:
        return path
    url = find_link(package, filename, index_urls())
    part = path + ".part"
    try:
        data = _read(url, timeout=300.0)
    except (OSError, urllib.error.URLError) as e:
        raise FetchError(f"{filename}: download from {url} failed ({e})") from e
    with open(part, "wb") as f:
        f.write(data)
    got = sha256_of(part)
    if got != sha256:
        os.remove(part)
        raise FetchError(f"{filename}: sha256 {got} from {url} differs from the pinned {sha256}; refusing to use it")
    os.replace(part, path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        print(fetch(*argv))
    except FetchError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
