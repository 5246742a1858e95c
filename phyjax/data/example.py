"""An example BIDS folder shaped like a user's: different people at every site, no scan with
the target protocol, and sidecars written the way each vendor's dcm2niix output looks.

Made from the embedded default dataset (:mod:`phyjax.data.synthetic`): subject ``k`` keeps only
its scan from site ``k mod 4`` of the four non-reference sites, with its sidecar as the default
dataset writes it: in its vendor's dcm2niix style (:func:`phyjax.data.synthetic.vendor_sidecar`,
after the real sidecars in ``tests/data/vendor_t1_sidecars``) -- including what vendors leave
out, and without the dataset's site table that fills it: the GE IR-SPGR sidecar
gives the readout TR as ``RepetitionTime`` and no time between inversions, so
:func:`phyjax.data.sidecar.read_protocol` reads it as ``missing tr_prep_s`` until a site table
fills it, as with real GE data.  Brain masks go to ``derivatives/masks``; the ground-truth maps
are not copied (a user has none).

Usage: ``python -m phyjax.data.example runs/example_bids`` (README, "Your own data").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from phyjax.data.dataset import cache_dir
from phyjax.data.synthetic import DERIVATIVES, build_default_dataset

#: the four non-reference sites of the default dataset, whose vendor-style sidecars are copied
SITES = ("geIRSPGR3T", "mprage1p5T", "siemensMPRAGE3T", "spgr3T")


def write_example_bids(out: str, data_cfg) -> str:
    """Write the example folder into ``out`` (replaced if it exists) from the default dataset of
    ``data_cfg`` (built into the cache if needed).  Returns ``out``."""
    root = build_default_dataset(data_cfg, cache_dir(data_cfg), progress=True)
    final = out   # written into a hidden sibling folder, swapped in when complete
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    out = tempfile.mkdtemp(prefix=".~example-", dir=parent)
    os.chmod(out, 0o755)
    subjects = sorted(d[4:] for d in os.listdir(root) if d.startswith("sub-"))
    sites = sorted(SITES)
    rows = ["participant_id\tsite"]
    for k, subject in enumerate(subjects):
        site = sites[k % len(sites)]
        anat = os.path.join(f"sub-{subject}", "anat")
        os.makedirs(os.path.join(out, anat))
        stem = f"sub-{subject}_T1w"
        shutil.copy(os.path.join(root, f"sub-{subject}", f"ses-{site}", "anat",
                                 f"sub-{subject}_ses-{site}_T1w.nii.gz"),
                    os.path.join(out, anat, stem + ".nii.gz"))
        shutil.copy(os.path.join(root, f"sub-{subject}", f"ses-{site}", "anat",
                                 f"sub-{subject}_ses-{site}_T1w.json"),
                    os.path.join(out, anat, stem + ".json"))
        mask = f"sub-{subject}_desc-brain_mask.nii.gz"
        os.makedirs(os.path.join(out, "derivatives", "masks", anat), exist_ok=True)
        shutil.copy(os.path.join(root, DERIVATIVES, f"sub-{subject}", "anat", mask),
                    os.path.join(out, "derivatives", "masks", anat, mask))
        rows.append(f"sub-{subject}\t{site}")
    with open(os.path.join(out, "participants.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(out, "dataset_description.json"), "w") as f:
        json.dump({"Name": "phyjax example: unpaired multi-vendor T1w (simulated)",
                   "BIDSVersion": "1.9.0", "DatasetType": "raw"}, f, indent=2)
    os.makedirs(os.path.join(out, "derivatives", "masks"), exist_ok=True)
    with open(os.path.join(out, "derivatives", "masks", "dataset_description.json"), "w") as f:
        json.dump({"Name": "brain masks", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "phyjax"}]}, f, indent=2)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(out, final)
    return final


def main(argv=None) -> None:
    from phyjax.config_files import load_config

    ap = argparse.ArgumentParser(description="Write phyjax's example unpaired BIDS folder.")
    ap.add_argument("out", help="folder to write (replaced if it exists)")
    args = ap.parse_args(argv)
    print(write_example_bids(args.out, load_config("phycharm").data))


if __name__ == "__main__":
    main()
