r"""Command line: ``python -m phyjax.main --config=configs/phycharm.py --workdir=runs/phycharm``.

Thin by design (flax-examples style): parse flags, hand the config to
:func:`phyjax.experiments.registry.run`, which runs the experiment ``config.method`` names.  Any config field can be overridden
with ``--config.<path>=<value>``; an unknown key is an error.  Bad input exits
with status 2 and a one-line message naming the file and the problem: a bad flag, config file,
config variant, key, method or mode; an output folder that is a file, cannot be written or is
(nearly) full (checked before any work); and everything the experiments raise as
:class:`~phyjax.data.nifti.InputError`.
"""

from __future__ import annotations

import errno
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from phyjax.data.atomic import check_writable
from phyjax.data.nifti import InputError
from phyjax.experiments import registry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, metrics, figures.")
flags.DEFINE_float("min_free_mb", 200.0, "Refuse to start when a folder the run writes has less "
                   "free disk space than this (MB).")
flags.mark_flags_as_required(["config", "workdir"])

#: ``config.mode`` values per method (methods without a ``mode`` field have one mode).
MODES = {"phycharm": ("train_eval", "harmonize")}

#: OSError numbers that mean "the output cannot be written", reported as one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EISDIR, errno.ENOTDIR}


def _fail(message: str) -> None:
    print(f"phyjax: error: {message}", file=sys.stderr)
    sys.exit(2)


def _last_line(text: str) -> str:
    """The last line of an error text (a traceback's ``ValueError: ...``), without its type."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else str(text)
    head, sep, tail = last.partition(": ")
    return tail if sep and head.isidentifier() and head.endswith(("Error", "Exception")) else last


def _config_arg(argv) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def parse_flags(argv):
    """absl's flag parsing with every failure as one line (exit status 2): an unknown flag or
    config key, a missing or broken config file, an unknown config variant, a bad value."""
    try:
        rest = FLAGS(argv)
    except flags.Error as exc:
        msg = str(exc)
        if "Error whilst parsing config file" in msg:   # the config's get_config raised
            _fail(f"--config={_config_arg(argv)}: {_last_line(msg)}")
        _fail(msg.splitlines()[0] if "\n" in msg and "Traceback" in msg else _last_line(msg))
    except (AttributeError, KeyError) as exc:          # an override names no config field
        key = exc.args[0] if exc.args else exc
        key = key.args[0] if isinstance(key, KeyError) and key.args else key
        name = str(key).splitlines()[0].strip("'\"")
        hint = " ".join(str(key).splitlines()[1:])
        bad = [a.split("=", 1)[0] for a in argv
               if a.startswith("--config.") and name in a.split("=", 1)[0].split(".")]
        where = bad[0] if bad else "--config.*"
        _fail(f"{where}: the config has no field {name!r}" + (f" ({hint})" if hint else "")
              + f"; see {_config_arg(argv).split(':')[0] or 'the config file'}.")
    config_path = _config_arg(argv)
    try:
        FLAGS.config.get("method")   # ml_collections defers a config file's load error to here
    except OSError as exc:
        path = config_path.split(":")[0]
        if path and not os.path.exists(path):
            _fail(f"--config={config_path}: config file {path} not found.")
        _fail(f"--config={config_path}: {_last_line(exc)}")
    except AttributeError:
        pass   # no --config: absl reports the missing required flag
    return rest


def output_folders(config, workdir: str) -> list[str]:
    """The folders a run writes into: harmonize (or segment) mode's output folder, else
    ``workdir`` (and the default dataset's cache when no BIDS folder is given)."""
    if config.get("mode") == "harmonize":
        from phyjax.experiments.harmonize import output_path

        h = config.harmonize
        if h.get("bids_root"):
            return [h.output or os.path.join(h.bids_root, "derivatives", "phyjax")]
        out = output_path(h.output, h.input or "input.nii.gz",
                          os.path.join(workdir, "harmonized"))
        return [os.path.dirname(os.path.abspath(out))]
    if config.get("mode") == "segment":   # physics_seg: configs/physics_seg.py's defaults
        s = config.segment
        return [s.output or (os.path.join(s.bids_root, "derivatives", "phyjax-physics-seg")
                             if s.get("bids_root") else os.path.join(workdir, "segment"))]
    folders = [workdir]
    if "data" in config and not config.data.get("bids_root") and "cache_dir" in config.data:
        from phyjax.data.dataset import cache_dir

        folders.append(cache_dir(config.data))
    return folders


def check_config(config, workdir: str, min_free_mb: float) -> None:
    """Everything about the command line that can be checked before any work; raises InputError
    naming the value: an unknown method or mode, an output folder that is a file, cannot be
    written or has less than ``min_free_mb`` MB free."""
    method = config.get("method", "phycharm")
    if method not in registry.METHODS:
        raise InputError(f"--config.method={method!r}: unknown method; available: "
                         f"{', '.join(sorted(registry.METHODS))}.")
    if "mode" in config and config.mode not in MODES.get(method, (config.mode,)):
        raise InputError(f"--config.mode={config.mode!r}: unknown mode for {method}; expected "
                         f"{' or '.join(map(repr, MODES[method]))}.")
    for folder in dict.fromkeys(output_folders(config, workdir)):
        check_writable(folder, min_free_mb)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])} (options are --config, --workdir, "
              "--config.<field>=<value>).")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO

    config = FLAGS.config
    if config.get("mode") == "harmonize" and "model_overrides" in config.get("harmonize", {}):
        # Harmonize mode keeps the saved harmonizer's inference settings but those named here.
        given = config_flags.get_override_values(FLAGS["config"])
        config.harmonize.model_overrides = tuple(sorted(
            {k.split(".")[1] for k in given if k.startswith("model.")}))
    try:
        check_config(config, FLAGS.workdir, FLAGS.min_free_mb)
        result = registry.run(config, FLAGS.workdir)
    except InputError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        _fail(f"{exc.filename or FLAGS.workdir}: {exc.strerror} (nothing was left under a "
              "finished-looking name; rerun to resume from the last checkpoint).")
    if isinstance(result, dict) and "rows" in result:
        print(f"Wrote metrics, volumes and figure to {FLAGS.workdir} "
              f"({result['total_seconds']:.0f} s).")
    elif isinstance(result, str):
        print(f"Wrote {result}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
