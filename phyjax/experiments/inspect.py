"""Inspect mode: every scan's protocol as read, written as ``protocols.tsv`` and printed."""

from __future__ import annotations

import os

from phyjax.config_files import load_config
from phyjax.data import bids, synthetic
from phyjax.data.dataset import cache_dir
from phyjax.data.sidecar import read_site_table

def _default_root(data_cfg) -> str:
    """The embedded default dataset of configs/phycharm.py (built if needed)."""
    default = load_config("phycharm").data
    with default.unlocked():
        default.cache_dir = data_cfg.cache_dir
    return synthetic.build_default_dataset(default, cache_dir(default))


def table(rows: list[dict], columns=("path", "site", "family", "tr_prep_s", "tr_readout_s",
                                     "ti_s", "flip_angle_deg", "te_s", "b0_t", "status")) -> str:
    """Rows as an aligned text table, each problem on its own line below its scan."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    for r, x in zip(rows, cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(x, widths)))
        if r.get("status") != "ok" and r.get("message"):
            lines.append(f"    -> {r['message']}")
    return "\n".join(lines)


def run(config, workdir: str) -> str:
    """Write ``<workdir>/protocols.tsv`` for ``config.data.bids_root`` and print it."""
    d = config.data
    root = d.bids_root or _default_root(d)
    site_table = read_site_table(d.site_params) if d.site_params else None
    rows = bids.inspect(root, d.get("suffix", "T1w"), site_table, d.get("mask_label", "brain"),
                        d.get("site_field", ""))
    path = bids.write_protocols(rows, os.path.join(workdir, "protocols.tsv"))
    print(table(rows))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "assumed", "missing", "error")}
    print(f"{len(rows)} scans: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return path
