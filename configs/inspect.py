r"""Inspect a BIDS folder before any work: every scan's protocol as read, and what is missing.

Usage:
  python -m phyjax.main --config=configs/inspect.py --workdir=runs/inspect \
      --config.data.bids_root=/path/to/bids [--config.data.site_params=sites.tsv]

Writes ``<workdir>/protocols.tsv`` (columns path, subject, session, site, family, tr_prep_s,
tr_readout_s, ti_s, flip_angle_deg, te_s, b0_t, status, message, then image_type, n_readouts,
ti2_s, flip2_deg, manufacturer) and prints it as a table.  ``status`` is ``ok`` when the protocol
is complete, ``assumed`` when a documented vendor default filled a gap (the message says which),
``missing`` or ``error`` otherwise.  With ``data.bids_root`` empty it inspects the embedded
default dataset.  Training and harmonizing refuse to start while any scan is ``missing`` or
``error`` (the benchmark only on ``error``, running physics-free methods on the rest); a site
table (TSV: ``site`` + any of the value columns, BIDS units) fills the gaps.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    if arg not in (None, ""):
        raise ValueError(f"Unknown config variant {arg!r}; expected ''.")
    config = ConfigDict()
    config.method = "inspect"
    data = config.data = ConfigDict()
    data.bids_root = ""      # empty: the embedded default dataset (built with configs/phycharm.py)
    data.site_params = ""    # TSV: site + tr_prep_s, tr_readout_s, ti_s, ... filling gaps
    data.suffix = "T1w"
    data.mask_label = "brain"  # ROI masks: derivatives/*/sub-*/[ses-*/]anat/*desc-<label>_mask
    data.site_field = ""     # sidecar field naming the site (e.g. Manufacturer); "" = ses- label
    data.cache_dir = ""
    config.lock()
    return config
