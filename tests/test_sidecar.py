"""Reading real vendors' sidecars (phyjax.data.sidecar) against an MR physicist's reading of each.

The oracle is the table in tests/data/vendor_t1_sidecars/README.md (copied from ../shared/data with
its licences): family, inversion TR, readout TR, TI, flip, TE and B0 as a physicist reads each real
dcm2niix sidecar of Siemens, GE, Philips and United Imaging.  Where the physicist found a value
absent, the reading must say it is missing (never a silent guess).
"""

import json
import math
import re
from pathlib import Path

import pytest

from phyjax.data.nifti import InputError
from phyjax.data.sidecar import (FIELDS, READOUTS_KEY, mp2rage_protocol_from_sidecars,
                                 protocol_to_sidecar, read_protocol, read_site_table)
from phyjax.physics import signal, tissues
from phyjax.physics.sequences import Protocol

DATA = Path(__file__).parent / "data"
VENDOR = DATA / "vendor_t1_sidecars"
PRISMA = DATA / "bids_sidecars_siemens_prisma"
COLUMNS = ("tr_prep_s", "tr_readout_s", "ti_s", "flip_angle_deg", "te_s", "b0_t")


def _physicist_table():
    rows = []
    for line in (VENDOR / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 9 and cells[0].startswith("`") and cells[0].endswith(".json`"):
            values = {k: float(v) for k, v in zip(COLUMNS, cells[3:9]) if v}
            rows.append((cells[0].strip("`"), cells[2], values))
    return rows


PHYSICIST = _physicist_table()


def _read(path, **kw):
    return read_protocol(json.loads(Path(path).read_text()), Path(path).name, **kw)


def test_the_oracle_table_was_parsed():
    assert len(PHYSICIST) == 8
    assert {f for f, _, _ in PHYSICIST} == {p.name for p in VENDOR.glob("*.json")}


@pytest.mark.parametrize("name,family,expected", PHYSICIST, ids=[r[0] for r in PHYSICIST])
def test_vendor_sidecars_read_as_the_physicist_reads_them(name, family, expected):
    r = _read(VENDOR / name)
    assert r.family == family, r.evidence
    for key, value in expected.items():
        assert r.values.get(key) == pytest.approx(value, rel=1e-9), key
    for key in ("tr_prep_s", "ti_s"):         # absent per the physicist -> missing, not guessed
        if family == "mprage" and key not in expected:
            assert key not in r.values and any(m.startswith(key) for m in r.missing), r.message
    if r.status == "ok":
        p = r.protocol()
        assert p.sequence == family
        assert p.tr == pytest.approx(expected["tr_prep_s" if family == "mprage"
                                              else "tr_readout_s"])
    else:
        assert r.status == "missing"
        with pytest.raises(InputError, match=re.escape(name)):
            r.protocol()


def test_readout_parameters_are_carried_into_the_protocol():
    table = {"tr_prep_s": 2.3}                  # the Philips ADNI T1-TFE lacks only this
    r = _read(VENDOR / "Philips_R571_T1TFE_mprage_classic.json", site_values=table)
    assert r.status == "ok" and r.origin["tr_prep_s"] == "site table"
    p = r.protocol()
    assert (p.tr, p.ti, p.tr_readout, p.n_readouts) == (2.3, 0.9, 0.006501, 256.0)
    assert p.flip_angle == pytest.approx(math.radians(9))


def test_a_sidecar_phyjax_writes_carries_the_whole_readout_train():
    """BIDS has no field for readouts per shot: phyjax's own key carries it, so an MPRAGE written
    by :func:`protocol_to_sidecar` reads back with its full readout train and gives the same
    signal (the full-form equation depends on the readout count: a different count would not)."""
    p = Protocol.from_degrees("mprage", tr=2.4, te=0.003, ti=0.9, flip_angle_deg=9.0).replace(
        tr_readout=0.007, n_readouts=176.0)
    sidecar = json.loads(json.dumps(protocol_to_sidecar(p)))        # through a JSON file
    assert sidecar[READOUTS_KEY] == 176.0
    r = read_protocol(sidecar, "phyjax.json")
    assert r.status == "ok" and r.origin["n_readouts"].startswith(f"sidecar {READOUTS_KEY}")
    q = r.protocol()
    assert (q.tr, q.ti, q.tr_readout, q.n_readouts) == (2.4, 0.9, 0.007, 176.0)
    gm = tissues.tissue_parameters(3.0)["gm"]

    def s(x):
        return float(signal.mprage_readout(gm.t1, gm.t2star, gm.pd, x.tr, x.ti, x.te,
                                           x.flip_angle, x.tr_readout, x.n_readouts))
    assert s(q) == pytest.approx(s(p), rel=1e-6)
    assert abs(s(p.replace(n_readouts=128.0)) - s(p)) > 1e-3 * abs(s(p))
    # a protocol without a train writes no count; an other vendor's sidecar is unaffected
    assert READOUTS_KEY not in protocol_to_sidecar(p.replace(n_readouts=0.0))
    assert READOUTS_KEY not in protocol_to_sidecar(Protocol.from_degrees(
        "spgr", tr=0.02, te=0.004, flip_angle_deg=20.0))


def test_mp2rage_is_its_own_family_and_uni_is_read():
    inv1, inv2, uni = (_read(PRISMA / f) for f in (
        "Si_2_t1_mp2rage_sag_p3_32_INV1.json", "Si_3_t1_mp2rage_sag_p3_32_INV2.json",
        "Si_4_t1_mp2rage_sag_p3_32_UNI_Images.json"))
    assert [r.family for r in (inv1, inv2, uni)] == ["mp2rage"] * 3
    assert [r.image_type for r in (inv1, inv2, uni)] == ["INV1", "INV2", "UNI"]
    assert (inv1.values["ti_s"], inv1.values["flip_angle_deg"], inv1.values["tr_prep_s"]) == (
        0.822, 4.0, 5.0)
    assert (inv2.values["ti2_s"], inv2.values["flip2_deg"]) == (2.5, 5.0)
    assert uni.status == "missing" and "ti_s" not in uni.values
    assert any("tr_readout_s" in a for a in uni.assumed)       # the documented default, stated
    # A site table completes the UNI; the result equals the pair of INV1/INV2 sidecars.
    table = {"ti_s": 0.822, "ti2_s": 2.5, "flip_angle_deg": 4, "flip2_deg": 5, "n_readouts": 224}
    full = _read(PRISMA / "Si_4_t1_mp2rage_sag_p3_32_UNI_Images.json", site_values=table)
    assert full.status == "assumed"
    assert full.mp2rage_protocol() == mp2rage_protocol_from_sidecars(
        PRISMA / "Si_2_t1_mp2rage_sag_p3_32_INV1.json",
        PRISMA / "Si_3_t1_mp2rage_sag_p3_32_INV2.json", n_readouts=224)
    with pytest.raises(InputError, match="MP2RAGE UNI read"):
        full.protocol()              # not silently a single-inversion MPRAGE
    listed = read_protocol({"InversionTime": [0.7, 2.5], "FlipAngle": [4, 5],
                            "RepetitionTime": 5.0, "EchoTime": 0.003, "ScanningSequence": "GR\\IR",
                            "MagneticFieldStrength": 7}, "list.json")
    assert listed.family == "mp2rage" and (listed.values["ti_s"], listed.values["ti2_s"]) == (
        0.7, 2.5)


@pytest.mark.parametrize("key,value,expect", [
    ("RepetitionTime", 2300, r"probably 2\.3 s \(given in ms\)"),
    ("InversionTime", 900, r"probably 0\.9 s"),
    ("EchoTime", 4.11, r"probably 0\.00411 s"),
    ("MagneticFieldStrength", 30000, r"probably 3 T \(given in gauss\)"),
    ("FlipAngle", math.radians(9), r"probably radians \(9 degrees\)"),
    ("FlipAngle", 270, "exceeds 180"),
])
def test_unit_mistakes_are_caught_with_what_was_meant(key, value, expect):
    sidecar = json.loads((PRISMA / "Si_6_T1_mprage_ns_sag_p2.json").read_text())
    sidecar[key] = value
    r = read_protocol(sidecar, "x.json")
    assert r.status == "error" and re.search(expect, r.message), r.message
    with pytest.raises(InputError, match=expect):
        r.protocol()


@pytest.mark.parametrize("name,tr,meant", [
    ("Siemens_VE11_t1_fl2d_sag.json", 300.0, r"probably 0\.3 s \(given in ms\)"),
    ("GE_HD16_irspgr.json", 6.964, r"probably 0\.006964 s \(given in ms\)"),
])
def test_a_gradient_echo_tr_in_ms_is_caught_even_with_te_in_seconds(name, tr, meant):
    # TE in s alone does not prove the TR's unit: 300 (ms) for a 2-D FLASH would read as a
    # 300 s TR (no T1 weighting), 6.964 for a GE IR-SPGR as a 7 s echo spacing.
    sidecar = json.loads((VENDOR / name).read_text())
    assert sidecar["EchoTime"] < 0.01 and sidecar["RepetitionTime"] == pytest.approx(tr / 1e3)
    sidecar["RepetitionTime"] = tr
    r = read_protocol(sidecar, name, site_values={"tr_prep_s": 2.0})
    assert r.status == "error" and re.search(meant, r.message), r.message


def test_a_readout_train_that_cannot_fit_its_timing_is_an_error_not_a_signal():
    # The real GE IR-SPGR (TI 0.4 s, echo spacing 6.964 ms): 256 readouts per inversion put half
    # the train, 0.89 s, before the k-space centre -- longer than TI.  Jitted, the readout-train
    # equation would return a positive number for it; the reading must stop here instead.
    r = _read(VENDOR / "GE_HD16_irspgr.json", site_values={"tr_prep_s": 2.0, "n_readouts": 256})
    assert r.status == "error" and "does not fit" in r.message and "TI 0.4 s" in r.message
    with pytest.raises(InputError, match="GE_HD16_irspgr.json"):
        r.protocol()
    # the same train fits a 1.2 s TI (half 0.89 s <= 1.2 and <= 2.5 - 1.2)
    ok = _read(VENDOR / "GE_HD16_irspgr.json",
               site_values={"tr_prep_s": 2.5, "n_readouts": 256, "ti_s": 1.2},
               overrides={"ti_s": 1.2})
    assert ok.status == "ok", ok.message
    assert signal.readout_problem(ok.protocol()) == ""
    # 64 readouts (half 0.22 s) fit the sidecar's own TI
    assert _read(VENDOR / "GE_HD16_irspgr.json",
                 site_values={"tr_prep_s": 2.0, "n_readouts": 64}).status == "ok"


def test_a_readout_train_flip_of_90_degrees_or_more_is_an_error():
    sidecar = json.loads((PRISMA / "Si_6_T1_mprage_ns_sag_p2.json").read_text())
    sidecar["FlipAngle"] = 100
    r = read_protocol(sidecar, "x.json")
    assert r.status == "error" and "not a readout-train flip angle" in r.message, r.message
    spgr = json.loads((VENDOR / "Siemens_VE11_t1_fl2d_sag.json").read_text())
    spgr["FlipAngle"] = 100                     # a spoiled gradient echo may use it
    assert read_protocol(spgr, "y.json").status == "ok"


def test_command_line_overrides_beat_the_sidecar_and_site_table():
    r = _read(VENDOR / "GE_HD16_irspgr.json", site_values={"tr_prep_s": 2.0, "ti_s": 0.5},
              overrides={"tr_prep_s": 2.2})
    assert r.values["tr_prep_s"] == 2.2 and r.origin["tr_prep_s"] == "command line"
    assert r.values["ti_s"] == 0.4 and r.origin["ti_s"] == "sidecar InversionTime"  # fills gaps only


def test_site_table_file(tmp_path):
    path = tmp_path / "sites.tsv"
    path.write_text("site\ttr_prep_s\tn_readouts\nGE\t2.1\t176\nPhilips\t\t256\n")
    assert read_site_table(str(path)) == {"GE": {"tr_prep_s": 2.1, "n_readouts": 176.0},
                                          "Philips": {"n_readouts": 256.0}}
    path.write_text("site\tTR\nGE\t2.1\n")
    with pytest.raises(InputError, match="unknown columns"):
        read_site_table(str(path))
    path.write_text("site\ttr_prep_s\nGE\t2,1\n")
    with pytest.raises(InputError, match="line 2: tr_prep_s"):
        read_site_table(str(path))
    with pytest.raises(InputError, match="not found"):
        read_site_table(str(tmp_path / "none.tsv"))


def test_every_field_is_a_tsv_column_and_unknown_families_are_refused():
    r = _read(VENDOR / "Siemens_VE11_t1_fl2d_sag.json")
    row = r.row()
    assert list(row)[:8] == ["family", *COLUMNS, "status"] and set(FIELDS) <= set(row)
    assert read_protocol({}, "empty.json").status == "missing"
    with pytest.raises(InputError, match="empty.json: missing the sequence family"):
        read_protocol({}, "empty.json").protocol()
    with pytest.raises(ValueError, match="epi"):
        read_protocol({}, "x.json", family="epi")


# ----------------------------------------------------------------------------- a folder of them

def _vendor_bids(root: Path, duplicate_run=False):
    """One subject with one session per real vendor sidecar (tiny images)."""
    import nibabel as nib
    import numpy as np

    sites = {}
    for i, f in enumerate(sorted(VENDOR.glob("*.json"))):
        site = f"{f.stem.split('_')[0]}{i}"
        anat = root / "sub-01" / f"ses-{site}" / "anat"
        anat.mkdir(parents=True)
        runs = ("_run-1", "_run-2") if duplicate_run and i == 0 else ("",)
        for run in runs:
            nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
                     str(anat / f"sub-01_ses-{site}{run}_T1w.nii.gz"))
            (anat / f"sub-01_ses-{site}{run}_T1w.json").write_text(f.read_text())
        sites[site] = f.name
    return sites


def test_inspect_writes_every_scan_and_training_refuses_listing_each(tmp_path):
    from ml_collections import ConfigDict

    from phyjax.data import bids
    from phyjax.experiments import inspect

    sites = _vendor_bids(tmp_path / "bids", duplicate_run=True)
    cfg = ConfigDict({"data": {"bids_root": str(tmp_path / "bids"), "site_params": "",
                               "suffix": "T1w", "cache_dir": ""}})
    out = inspect.run(cfg, str(tmp_path / "run"))
    with open(out) as f:
        header, *lines = [line.rstrip("\n").split("\t") for line in f]
    assert header[:13] == list(bids.PROTOCOL_COLUMNS)
    rows = [dict(zip(header, x)) for x in lines]
    scans = {r["site"]: r for r in rows if r["family"]}
    assert len(rows) == len(sites) + 2      # the two runs of the first site, + the duplicate row
    expected = {name: family for name, family, _ in PHYSICIST}
    for site, name in sites.items():
        assert scans[site]["family"] == expected[name], site
    missing = {s for s, r in scans.items() if r["status"] == "missing"}
    assert {sites[s] for s in missing} == {"GE_HD16_irspgr.json", "Philips_R53_T1W3D_TFE.json",
                                           "Philips_R571_T1TFE_mprage_classic.json",
                                           "UIH_R002_gre_fsp_IR.json"}
    assert any(r["status"] == "error" and "has 2 scans" in r["message"] for r in rows)
    # --config.method=inspect on the main config (no data.suffix there: T1w) lists the same
    from phyjax.config_files import load_config

    main_cfg = load_config("phycharm")
    main_cfg.data.bids_root = str(tmp_path / "bids")
    with open(inspect.run(main_cfg, str(tmp_path / "run_main"))) as f:
        assert [line.rstrip("\n").split("\t") for line in f] == [header, *lines]
    # Training refuses before any work, naming every incomplete sidecar and the repeated runs.
    with pytest.raises(InputError) as info:
        bids.scan_bids(str(tmp_path / "bids"))
    text = str(info.value)
    assert "6 problem(s)" in text and "has 2 scans" in text   # 4 sites (GE's twice) + the runs
    for s in missing:
        assert f"ses-{s}/anat/sub-01_ses-{s}_" in text


def test_a_site_table_fills_the_gaps_and_is_recorded(tmp_path):
    from phyjax.data import bids

    sites = _vendor_bids(tmp_path / "bids")
    table = {s: {"tr_prep_s": 2.3, "ti_s": 0.9} for s, name in sites.items()
             if name.startswith(("GE_HD16", "Philips", "UIH"))}
    scans = bids.scan_bids(str(tmp_path / "bids"), site_table=table)
    by_site = {s.site: s for s in scans}
    rows = {r["site"]: r for r in bids.scan_rows(scans, str(tmp_path / "bids"))}
    for site in table:
        r = by_site[site].reading
        assert r.status == "ok" and r.origin["tr_prep_s"] == f"site table ({site})"
        assert by_site[site].protocol.tr == 2.3
        assert f"tr_prep_s from site table ({site})" in rows[site]["origin"]   # recorded
    # ... but never replaces what the sidecar says.
    ge = next(s for s in table if sites[s].startswith("GE_HD16"))
    assert by_site[ge].protocol.ti == 0.4


def test_a_b0_without_a_tissue_table_reads_but_says_phycharm_refuses_it():
    sidecar = json.loads((PRISMA / "Si_6_T1_mprage_ns_sag_p2.json").read_text())
    sidecar["MagneticFieldStrength"] = 1.0
    r = read_protocol(sidecar, "x.json")
    assert r.status == "ok" and "no tissue relaxation table for B0 = 1 T" in r.message
    sidecar["MagneticFieldStrength"] = 2.89362       # what Siemens 3 T systems write
    assert "no tissue relaxation table" not in read_protocol(sidecar, "x.json").message


def test_the_command_line_completes_a_ge_irspgr_readout_train_and_refuses_it_elsewhere():
    # GE's IR-SPGR sidecar gives neither the inversion TR nor a readout count: with the TR
    # alone the protocol is the static MPRAGE form (no readouts); config.harmonize.n_readouts
    # adds the count, and the protocol then carries the sidecar's readout TR (6.964 ms, the
    # physicist's) with it, or the one given.  On a sequence without an inversion-prepared
    # readout train the readout names are an error naming the sidecar.
    from phyjax.data.sidecar import read_given

    path = str(VENDOR / "GE_HD16_irspgr.json")
    assert read_given(path, "", {}, require_file=True).status == "missing"
    assert read_given(path, "", {"tr": 2.0}, require_file=True).protocol().n_readouts == 0
    p = read_given(path, "", {"tr": 2.0, "n_readouts": 100}, require_file=True).protocol()
    assert (p.sequence, p.n_readouts, p.tr) == ("mprage", 100.0, 2.0)
    assert p.tr_readout == pytest.approx(0.006964)
    q = read_given(path, "", {"tr": 2.0, "n_readouts": 100, "tr_readout": 0.007},
                   require_file=True).protocol()
    assert q.tr_readout == pytest.approx(0.007)
    spgr = str(VENDOR / "Siemens_VE11_t1_fl2d_sag.json")
    with pytest.raises(InputError, match=r"Siemens_VE11_t1_fl2d_sag\.json: n_readouts=128"):
        read_given(spgr, "", {"n_readouts": 128}, require_file=True)
