r"""Command line: ``python -m phyjax.main --config=configs/phycharm.py --workdir=runs/phycharm``.

Thin by design (flax-examples style): parse flags, hand the config to
:func:`phyjax.experiments.registry.run`, which runs the experiment ``config.method`` names.  Any config field can be overridden
with ``--config.<path>=<value>``; an unknown key is an error.  Bad input exits
with status 2 and a one-line message naming the file and the problem.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from phyjax.data.nifti import InputError
from phyjax.experiments import registry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, metrics, figures.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO

    config = FLAGS.config
    try:
        result = registry.run(config, FLAGS.workdir)
    except InputError as exc:
        print(f"phyjax: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if isinstance(result, dict) and "rows" in result:
        print(f"Wrote metrics, volumes and figure to {FLAGS.workdir} "
              f"({result['total_seconds']:.0f} s).")
    elif isinstance(result, str):
        print(f"Wrote {result}")


if __name__ == "__main__":
    app.run(main)
