"""SliceThickness: read from real dcm2niix sidecars, written into the default dataset's, and
the slice profile of physics-made source scans taken from it (``config.train.slice_profile``,
docs/phycharm_ablation.md item 66)."""

import json
import os

import numpy as np
import pytest

from phyjax.data import simulated, synthetic
from phyjax.data.bids import EXTRA_COLUMNS
from phyjax.data.nifti import InputError
from phyjax.data.sidecar import read_protocol
from phyjax.data.volumes import Volume, slice_axis
from phyjax.physics import scanner
from phyjax.physics.sequences import Protocol

VENDOR = os.path.join(os.path.dirname(__file__), "data", "vendor_t1_sidecars")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(VENDOR) if f.endswith(".json")))
def test_real_vendor_sidecars_give_their_slice_thickness_and_acquisition(name):
    sidecar = json.load(open(os.path.join(VENDOR, name)))
    reading = read_protocol(sidecar, name)
    assert reading.slice_thickness_mm == pytest.approx(float(sidecar["SliceThickness"]))
    assert reading.acquisition == sidecar["MRAcquisitionType"]
    row = reading.row()
    assert row["slice_thickness_mm"] == reading.slice_thickness_mm
    assert row["mr_acquisition_type"] == reading.acquisition
    assert {"slice_thickness_mm", "mr_acquisition_type"} <= set(EXTRA_COLUMNS)


def test_the_2d_sagittal_siemens_flash_reads_as_4_mm_2d():
    sidecar = json.load(open(os.path.join(VENDOR, "Siemens_VE11_t1_fl2d_sag.json")))
    reading = read_protocol(sidecar, "fl2d")
    assert (reading.slice_thickness_mm, reading.acquisition) == (4.0, "2D")


@pytest.mark.parametrize("bad", [0.004, 0.0, -5.0, 55.0, "thick", None, True, [5.0]])
def test_an_implausible_thickness_is_a_note_and_stays_unknown(bad):
    sidecar = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 0.02,
               "EchoTime": 0.004, "FlipAngle": 20, "MagneticFieldStrength": 3,
               "SliceThickness": bad}
    reading = read_protocol(sidecar, "x.json")
    assert reading.slice_thickness_mm is None
    assert "SliceThickness" in reading.message
    assert reading.status == "ok"     # geometry, not signal: the scan is not blocked


def test_no_thickness_no_note():
    reading = read_protocol({"ScanningSequence": "SE", "RepetitionTime": 0.5,
                             "EchoTime": 0.01, "MagneticFieldStrength": 1.5}, "x.json")
    assert reading.slice_thickness_mm is None and "SliceThickness" not in reading.message


def _volume(thickness, affine, axis=2):
    shape = (4, 4, 4)
    return Volume("01", "a", None, np.ones(shape, np.float32), np.ones(shape, bool), "x.nii.gz",
                  affine=np.asarray(affine, float), slice_thickness_mm=thickness,
                  slice_axis=axis)


@pytest.mark.parametrize("thickness, expected", [(5.0, 2.5), (3.0, 1.5), (2.0, 0.0),
                                                 (1.0, 0.0), (None, None)])
def test_volume_slice_fwhm_is_the_thickness_in_voxels_beyond_the_voxel(thickness, expected):
    fwhm = _volume(thickness, np.diag([1.0, 1.0, 2.0, 1.0])).slice_fwhm()
    assert fwhm == (None if expected is None else pytest.approx(expected))


def test_slice_fwhm_uses_the_voxel_along_the_slice_axis():
    affine = np.diag([1.5, 1.0, 1.0, 1.0])          # 1.5 mm along x, the sagittal slice axis
    assert _volume(6.0, affine, axis=0).slice_fwhm() == pytest.approx(4.0)
    assert _volume(6.0, affine, axis=2).slice_fwhm() == pytest.approx(6.0)


def test_slice_axis_follows_the_third_voxel_axis():
    axial = np.diag([1.0, 1.0, 5.0, 1.0])
    sagittal = np.array([[0, 0, -4.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert [slice_axis(a) for a in (axial, sagittal, coronal)] == [2, 0, 1]


def test_an_oblique_slice_axis_is_the_one_the_grid_assigns_it():
    """Axial slices tilted 50 degrees toward R-L: the third voxel axis points more along R-L
    than S-I, but R-L belongs to the first voxel axis, so the slices stay axial (2) -- as
    geometry.world_zooms sizes the working grid."""
    from phyjax.data import geometry

    t = np.deg2rad(50.0)
    oblique = np.eye(4)
    oblique[:3, 2] = [5.0 * np.sin(t), 0.0, 5.0 * np.cos(t)]
    assert np.argmax(np.abs(oblique[:3, 2])) == 0
    assert slice_axis(oblique) == 2
    assert geometry.world_zooms(oblique)[slice_axis(oblique)] == pytest.approx(5.0)


def _default_sites():
    import conftest

    return conftest.load_config("phycharm", "").data.sites


@pytest.mark.parametrize("voxel", [1.0, 2.0, 4.0])
def test_every_default_site_writes_a_thickness_that_reads_back_as_its_slice_profile(voxel):
    affine = np.diag([voxel, voxel, voxel, 1.0])
    for site, cfg in _default_sites().items():
        fwhm = float(cfg.get("slice_fwhm", 0.0))
        thickness = synthetic.slice_thickness_mm(fwhm, affine)
        back = _volume(thickness, affine).slice_fwhm()
        # a profile narrower than a voxel is the voxel itself (none of the default sites has one)
        assert back == pytest.approx(fwhm if fwhm > 1 else 0.0), site


@pytest.fixture(scope="module")
def debug_cache(tmp_path_factory):
    """One debug dataset cache for this file's tests (generated once)."""
    return str(tmp_path_factory.mktemp("cache"))


def test_the_default_dataset_sidecars_carry_the_thickness(debug_cache):
    """The debug dataset as generated: each site's sidecar says SliceThickness = its slice
    profile in mm (4 mm voxels: the 2.5-voxel spin echo 10 mm, the 1.5-voxel 1.5 T MPRAGE 6 mm,
    the 3-D sites 4 mm), and the loaded volumes give the profile back."""
    import conftest
    from phyjax.data.dataset import load_dataset

    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.data.cache_dir = debug_cache
    data = load_dataset(cfg.data, progress=False)
    seen = set()
    for scans in data.volumes.values():
        for site, v in scans.items():
            fwhm = float(cfg.data.sites[site].get("slice_fwhm", 0.0))
            side = json.load(open(v.path.replace(".nii.gz", ".json")))
            assert side["SliceThickness"] == pytest.approx(4.0 * max(1.0, fwhm)), site
            assert v.slice_thickness_mm == side["SliceThickness"] and v.slice_axis == 2
            assert v.slice_fwhm() == pytest.approx(fwhm if fwhm > 1 else 0.0)
            seen.add(site)
    assert {"se1p5T2D", "mprage1p5T"} <= seen


class _Scan:
    def __init__(self, protocol, thickness, voxel=2.0, axis=2):
        self.protocol, self.slice_thickness_mm, self.slice_axis = protocol, thickness, axis
        self._fwhm = None if thickness is None else (thickness / voxel if thickness > voxel
                                                     else 0.0)

    def slice_fwhm(self):
        return self._fwhm


SE = Protocol.from_degrees("se", tr=0.55, te=0.014, flip_angle_deg=90, field_strength=1.5)
SPGR = Protocol.from_degrees("spgr", tr=0.02, te=0.0045, flip_angle_deg=25)
MPRAGE = Protocol.from_degrees("mprage", tr=2.3, te=0.003, ti=0.9, flip_angle_deg=9)


def test_slice_profiles_per_protocol_in_anatomy_voxels():
    scans = [_Scan(SE, 5.0), _Scan(SE, 6.0), _Scan(SE, 5.0, axis=0), _Scan(SPGR, 2.0),
             _Scan(MPRAGE, None)]
    other = Protocol.from_degrees("spgr", tr=0.03, te=0.0045, flip_angle_deg=25)
    got = simulated.slice_profiles([SE, SPGR, MPRAGE, other], scans, voxel_mm=2.0)
    assert got[0] == (pytest.approx(2.5), 2)     # median 5 mm on 2 mm heads, most common axis
    assert got[1] == (0.0, 2)                    # as thin as its voxel: no extra profile
    assert got[2] is None and got[3] is None     # no thickness / no scan of that protocol
    # on 1 mm heads the same 5 mm is 5 voxels
    assert simulated.slice_profiles([SE], scans, voxel_mm=1.0)[0][0] == pytest.approx(5.0)


def test_source_effects_replace_only_the_slice_profile():
    import jax

    key = jax.random.key(3)
    drawn, axis = simulated.source_effects(key)
    fixed, axis2 = simulated.source_effects(key, (2.5, 0))
    assert axis == -1 and axis2 == 0
    assert fixed.slice_fwhm == 2.5 and drawn.slice_fwhm != 2.5
    assert fixed.replace(slice_fwhm=drawn.slice_fwhm) == drawn
    assert drawn == scanner.sample_scanner_effects(key, **simulated.EFFECT_RANGES)


def test_a_simulated_source_with_a_profile_is_acquired_with_it(tmp_path):
    """The stored source image is the head acquired (synthetic.acquire, the default dataset's
    imaging) with the drawn effects but the given slice profile and axis."""
    import jax

    from phyjax.data.slices import to_slices
    from phyjax.data.volumes import normalize

    heads = simulated.anatomies(1, 0, 4, 2.0, 0.05, 0.0)
    pairs = simulated.SimulatedPairs([SE], [MPRAGE], heads, 3, 0.0, 1, seed=0,
                                     directory=str(tmp_path), slice_profiles=[(2.5, 0)])
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(simulated.ANATOMY_SEED), 0), 0)
    k_fx, k_acq = jax.random.split(key)
    effects, axis = simulated.source_effects(k_fx, (2.5, 0))
    head = heads[0]
    expected = normalize(synthetic.acquire(head.maps(1.5), head.mask, SE, effects, k_acq,
                                           slice_axis=axis), head.mask)
    unblurred = normalize(synthetic.acquire(head.maps(1.5), head.mask, SE,
                                            effects.replace(slice_fwhm=0.0), k_acq), head.mask)
    n = pairs.store.shapes["0/source0"][0]
    stored = pairs.store.read("0/source0", np.arange(n))[..., 0]
    np.testing.assert_allclose(stored, to_slices(np.asarray(expected), pairs.pads), atol=1e-6)
    assert np.abs(expected - unblurred).max() > 0.01     # the profile changed the image


def test_bad_setting_names_the_key():
    with pytest.raises(InputError, match=r"config\.train\.slice_profile"):
        simulated.check_slice_profile("thick")
    assert simulated.check_slice_profile("sidecar") == "sidecar"


def _profiles_used(monkeypatch, tmp_path, cache, **train):
    """The slice profiles PhyCHarm's fit on the debug data gives its physics-made pairs (no
    training), with the protocols they belong to."""
    import conftest
    from phyjax import methods
    from phyjax.data.dataset import load_dataset
    from phyjax.methods import phycharm

    cfg = conftest.load_config("phycharm", "debug")
    with cfg.unlocked():
        cfg.data.cache_dir = cache
        cfg.model.calibrate = "none"
        cfg.train.random_sources = 1      # one drawn protocol per family: fewer scans to simulate
        for k, v in train.items():
            setattr(cfg.train, k, v)
    data = load_dataset(cfg.data, progress=False)
    train_set = data.training_set(data.split(cfg.data.n_test, cfg.data.seed))
    seen = {}
    original = simulated.SimulatedPairs

    def spy(sources, *args, **kwargs):
        pairs = original(sources, *args, **kwargs)
        seen["sources"], seen["profiles"] = pairs.sources, pairs.slice_profiles
        return pairs

    monkeypatch.setattr(simulated, "SimulatedPairs", spy)
    monkeypatch.setattr(phycharm, "fit_loop", lambda state, *a, **k: state)
    methods.fit("phycharm", cfg, train_set, workdir=str(tmp_path / "run"), progress=False,
                has_maps=data.has_maps)
    return seen, cfg, train_set


def test_sidecar_profiles_reach_the_physics_made_pairs(monkeypatch, tmp_path, debug_cache):
    """Debug data (4 mm voxels), heads at 2 mm: the 1.5 T spin echo's 10 mm slices are 5 head
    voxels, the 1.5 T MPRAGE's 6 mm 3; the 3-D sites at their voxel get none; the drawn extra
    protocols and the target keep the drawn profile (None)."""
    seen, cfg, train_set = _profiles_used(monkeypatch, tmp_path, debug_cache, simulated_every=2,
                                          slice_profile="sidecar")
    from phyjax.data.split import protocols_match

    expected = {"se1p5T2D": 5.0, "mprage1p5T": 3.0}
    site_protocols = {site: v.protocol for scans in train_set.volumes.values()
                      for site, v in scans.items() if site != train_set.target_site}
    matched = set()
    for p, prof in zip(seen["sources"], seen["profiles"]):
        sites = [s for s, q in site_protocols.items() if protocols_match(p, q)]
        if not sites:
            assert prof is None               # a drawn protocol or the target
            continue
        matched.add(sites[0])
        assert prof == (pytest.approx(expected.get(sites[0], 0.0)), 2), sites[0]
    assert set(expected) <= matched


def test_drawn_is_the_default_and_passes_no_profiles(monkeypatch, tmp_path, debug_cache):
    seen, _, _ = _profiles_used(monkeypatch, tmp_path, debug_cache, simulated_every=2)
    assert seen["profiles"] == [None] * len(seen["sources"])


def test_sidecar_without_any_thickness_is_refused(monkeypatch, tmp_path, debug_cache):
    from phyjax.data import volumes

    original = volumes.Volume.__init__

    def no_thickness(self, *a, **k):
        original(self, *a, **k)
        self.slice_thickness_mm = None

    monkeypatch.setattr(volumes.Volume, "__init__", no_thickness)
    with pytest.raises(InputError, match="SliceThickness"):
        _profiles_used(monkeypatch, tmp_path, debug_cache, simulated_every=2,
                       slice_profile="sidecar")


def test_load_scans_keeps_a_sagittal_2d_scans_thickness_and_slice_axis(tmp_path):
    """One head as an axial 1 mm 3-D scan and a sagittal 2-D scan with 4 mm slices (its third
    voxel axis along R-L, as dcm2niix stores slices): both are resampled onto one RAS grid
    (voxel 1.5 mm, the median of their mean voxel sizes), where the sagittal scan's profile
    lies along axis 0 and is 4 / 1.5 voxels wide, and the axial scan has none."""
    import nibabel as nib

    from phyjax.data.bids import Scan
    from phyjax.data.volumes import load_scans

    base = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 0.02,
            "EchoTime": 0.004, "FlipAngle": 25, "MagneticFieldStrength": 3}
    axial = np.diag([1.0, 1.0, 1.0, 1.0])
    sagittal = np.array([[0, 0, 4.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    scans = []
    for site, affine, shape, thickness, kind in (("ax", axial, (40, 40, 40), 1.0, "3D"),
                                                 ("sag", sagittal, (40, 40, 10), 4.0, "2D")):
        affine = affine.copy()
        affine[:3, 3] = -20.0
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        x, y, z = np.moveaxis(ijk @ affine[:3, :3].T + affine[:3, 3], -1, 0)
        brain = (x ** 2 / 14 ** 2 + y ** 2 / 16 ** 2 + z ** 2 / 12 ** 2) < 1
        path, mask_path = str(tmp_path / f"{site}.nii.gz"), str(tmp_path / f"{site}_mask.nii.gz")
        nib.save(nib.Nifti1Image((100 * brain + 10).astype(np.float32), affine), path)
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), mask_path)
        sidecar = dict(base, SliceThickness=thickness, MRAcquisitionType=kind)
        scans.append(Scan(subject="01", site=site, path=path, mask_path=mask_path,
                          reading=read_protocol(sidecar, f"{site}.json")))
    vols = load_scans(scans)["01"]
    assert vols["sag"].resampled and vols["ax"].resampled
    assert (vols["sag"].slice_axis, vols["ax"].slice_axis) == (0, 2)
    assert vols["sag"].slice_thickness_mm == 4.0
    assert vols["sag"].slice_fwhm() == pytest.approx(4.0 / 1.5)
    assert vols["ax"].slice_fwhm() == 0.0
