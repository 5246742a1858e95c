"""An example BIDS folder shaped like a user's: different people at every site, no scan with
the target protocol, and sidecars written the way each vendor's dcm2niix output looks.

Made from the embedded default dataset (:mod:`phyjax.data.synthetic`): subject ``k`` keeps only
its scan from site ``k mod 4`` of the four non-reference sites, and each sidecar is rewritten in
its vendor's style (field names and conventions of the real sidecars in
``tests/data/vendor_t1_sidecars``) -- including what vendors leave out: the GE IR-SPGR sidecar
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

from phyjax.data.dataset import cache_dir
from phyjax.data.synthetic import DERIVATIVES, build_default_dataset

#: site -> sidecar as the vendor writes it (BIDS units: s, degrees, T); the physics is the
#: default dataset's site config (configs/phycharm.py)
VENDOR_SIDECARS = {
    "siemensMPRAGE3T": {  # Siemens XA30 MPRAGE: RepetitionTime = time between inversions
        "Manufacturer": "Siemens", "ManufacturersModelName": "MAGNETOM Prisma Fit",
        "MagneticFieldStrength": 3, "ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
        "SequenceName": "*tfl3d1_16ns", "PulseSequenceDetails": "%SiemensSeq%\\tfl",
        "MRAcquisitionType": "3D", "RepetitionTime": 2.3, "InversionTime": 0.9,
        "EchoTime": 0.00298, "FlipAngle": 9},
    "geIRSPGR3T": {  # GE IR-SPGR (BRAVO): RepetitionTime = readout TR; no inversion TR
        "Manufacturer": "GE", "ManufacturersModelName": "DISCOVERY MR750",
        "MagneticFieldStrength": 3, "ScanningSequence": "GR", "SequenceVariant": "SS\\SP\\SK",
        "SequenceName": "efgre3d", "MRAcquisitionType": "3D", "RepetitionTime": 0.0078,
        "InversionTime": 0.75, "EchoTime": 0.0031, "FlipAngle": 12},
    "mprage1p5T": {  # Siemens 1.5 T MPRAGE
        "Manufacturer": "Siemens", "ManufacturersModelName": "Avanto",
        "MagneticFieldStrength": 1.5, "ScanningSequence": "GR\\IR", "SequenceVariant": "SP\\MP",
        "SequenceName": "*tfl3d1_ns", "MRAcquisitionType": "3D", "RepetitionTime": 2.4,
        "InversionTime": 1.0, "EchoTime": 0.0036, "FlipAngle": 8},
    "spgr3T": {  # Philips 3-D T1-FFE (RF-spoiled gradient echo, no prepulse)
        "Manufacturer": "Philips", "ManufacturersModelName": "Ingenia",
        "MagneticFieldStrength": 3, "ScanningSequence": "GR", "SequenceVariant": "SP",
        "MRAcquisitionType": "3D", "RepetitionTime": 0.02, "EchoTime": 0.0045,
        "FlipAngle": 25},
}


def write_example_bids(out: str, data_cfg) -> str:
    """Write the example folder into ``out`` (replaced if it exists) from the default dataset of
    ``data_cfg`` (built into the cache if needed).  Returns ``out``."""
    root = build_default_dataset(data_cfg, cache_dir(data_cfg), progress=True)
    if os.path.exists(out):
        shutil.rmtree(out)
    subjects = sorted(d[4:] for d in os.listdir(root) if d.startswith("sub-"))
    sites = sorted(VENDOR_SIDECARS)
    rows = ["participant_id\tsite"]
    for k, subject in enumerate(subjects):
        site = sites[k % len(sites)]
        anat = os.path.join(f"sub-{subject}", "anat")
        os.makedirs(os.path.join(out, anat))
        stem = f"sub-{subject}_T1w"
        shutil.copy(os.path.join(root, f"sub-{subject}", f"ses-{site}", "anat",
                                 f"sub-{subject}_ses-{site}_T1w.nii.gz"),
                    os.path.join(out, anat, stem + ".nii.gz"))
        with open(os.path.join(out, anat, stem + ".json"), "w") as f:
            json.dump({**VENDOR_SIDECARS[site], "InstitutionName": site}, f, indent=2)
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
    return out


def main(argv=None) -> None:
    import importlib.util

    ap = argparse.ArgumentParser(description="Write phyjax's example unpaired BIDS folder.")
    ap.add_argument("out", help="folder to write (replaced if it exists)")
    args = ap.parse_args(argv)
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "phycharm.py")
    spec = importlib.util.spec_from_file_location("phycharm_cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(write_example_bids(args.out, module.get_config().data))


if __name__ == "__main__":
    main()
