"""Outputs that never look finished before they are, and output folders checked before any work.

Every file phyjax writes (NIfTI, CSV, TSV, JSON, Markdown, figures) goes through
:func:`atomic_path` or :func:`atomic_open`: it is written under a temporary name in the same folder
(``.~<random>-<name>``, hidden, same extension so that nibabel and matplotlib pick the same
format) and renamed onto ``<name>`` with :func:`os.replace` only once the writer returned.  A run
killed at any point leaves either the previous file or the complete new one under ``<name>``;
an unfinished write leaves only a hidden ``.~*`` file (removed when the writer raised).

Folders are handled where they are made: the default dataset and a fitted harmonizer are each
built in a temporary folder renamed at the end, and Orbax renames a checkpoint when complete.

:func:`check_writable` is what the command line runs on every folder a run will write, before any
work: a folder that is a file, cannot be made or written, or whose disk is (nearly) full is an
:class:`~phyjax.data.nifti.InputError` naming it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import IO

TMP_PREFIX = ".~"


def temporary_name(path: str | os.PathLike) -> str:
    """A fresh hidden name beside ``path`` that keeps its file name (and so its extension)."""
    head, tail = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(head, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{tail}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s content to; renamed onto ``path`` on success.

    The parent folder is created if needed.  If the body raises, the temporary file is removed
    and ``path`` is left as it was.  Usage::

        with atomic_path("out.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode, **kwargs)`` whose content appears under ``path`` only when the block
    finished (``mode``: ``"w"`` or ``"wb"``; appending cannot be atomic)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r}; expected 'w' or 'wb'.")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def check_writable(folder: str | os.PathLike, min_free_mb: float = 0.0) -> str:
    """Check, before any work, that ``folder`` can be made and written with ``min_free_mb``
    MB free on its disk.  Nothing is left behind (the folder is not created; a probe file in its
    nearest existing ancestor is removed).  Returns the absolute path.

    Raises:
      InputError: ``folder`` (or an ancestor) is a file, it cannot be written (read-only, no
        permission), or its disk has less than ``min_free_mb`` MB free.
    """
    from phyjax.data.nifti import InputError  # nifti writes through this module

    folder = os.path.abspath(os.fspath(folder))
    existing = folder
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            what = "it" if existing == folder else f"{existing}"
            raise InputError(f"{folder}: cannot be used as an output folder: {what} is a file, "
                             "not a folder.")
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    probe = os.path.join(existing, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-write-probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise InputError(f"{folder}: cannot write there ({exc.strerror or exc}); choose a "
                         "writable output folder.") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    free_mb = shutil.disk_usage(existing).free / 2 ** 20
    if free_mb < min_free_mb:
        raise InputError(f"{folder}: only {free_mb:.0f} MB free on its disk; this run needs at "
                         f"least {min_free_mb:.0f} MB (free some space or choose another "
                         "folder).")
    return folder
