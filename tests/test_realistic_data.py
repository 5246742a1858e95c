"""The default dataset's realism (issue 14): signal-level partial volume, thick-slice 2-D spin
echo written as Siemens' dcm2niix writes it, and atrophy as anatomical variety.

Oracles: the closed-form spin-echo and inversion-recovery equations transcribed here in NumPy
(Bernstein et al. 2004, Sec. 14.2-14.3), conservation of tissue per voxel, and the real-sidecar
reading rules of :mod:`phyjax.data.sidecar`."""

import os

import conftest
import jax
import numpy as np
import pytest

from phyjax.data import synthetic
from phyjax.data.sidecar import read_protocol
from phyjax.physics import scanner, tissues
from phyjax.physics.sequences import Protocol



def _two_tissue_voxels(a: str, b: str, b0: float = 1.5):
    """Fractions ``(3, 3, 1, 1)``: pure ``a``, 50/50 ``a``/``b``, pure ``b``."""
    idx = {name: i for i, name in enumerate(tissues.TISSUES)}
    probs = np.zeros((3, 3, 1, 1), np.float32)
    probs[idx[a], 0], probs[idx[b], 2] = 1.0, 1.0
    probs[idx[a], 1] = probs[idx[b], 1] = 0.5
    texture = np.ones((3, 1, 1), np.float32)
    factors = np.ones((3, 4))
    return probs, factors, texture, tissues.tissue_parameters(b0)


def _spin_echo(t, tr, te):
    """Spin echo with its refocusing-pulse term (Bernstein et al. 2004, Sec. 14.3)."""
    return (t.pd * (1.0 - 2.0 * np.exp(-(tr - te / 2) / t.t1) + np.exp(-tr / t.t1))
            * np.exp(-te / t.t2))


def test_signal_level_partial_volume_is_the_fraction_weighted_signal():
    probs, factors, texture, table = _two_tissue_voxels("gm", "csf")
    p = Protocol.from_degrees("se", tr=0.55, te=0.014, flip_angle_deg=90, field_strength=1.5)
    mixed = synthetic.quantitative_maps(probs, factors, texture, 1.5, partial_volume="signal")
    got = np.asarray(synthetic.signed_image(mixed, p)).ravel()
    gm, csf = _spin_echo(table["gm"], 0.55, 0.014), _spin_echo(table["csf"], 0.55, 0.014)
    np.testing.assert_allclose(got, [gm, 0.5 * gm + 0.5 * csf, csf], rtol=1e-5)
    # The effective-parameter voxel (mean T1/T2, summed PD) is a different signal: the
    # equation is not linear in T1.
    param = synthetic.quantitative_maps(probs, factors, texture, 1.5)
    assert "fractions" not in param
    mean = np.asarray(synthetic.signed_image(param, p)).ravel()
    np.testing.assert_allclose(mean[[0, 2]], got[[0, 2]], rtol=1e-5)
    assert abs(mean[1] - got[1]) > 0.02 * got[1]
    # The ground-truth maps are the same in both modes.
    for k in ("t1", "t2", "t2star", "pd"):
        np.testing.assert_array_equal(mixed[k], param[k])


def test_magnitude_is_taken_after_mixing_and_after_the_slice_profile():
    # Short-TI inversion recovery: CSF is negative, WM positive, so |mean| != mean of |.|.
    probs, factors, texture, table = _two_tissue_voxels("wm", "csf")
    tr, ti, te = 2.0, 0.35, 0.01
    p = Protocol(tr=tr, te=te, ti=ti, sequence="ir", field_strength=1.5)

    def ir(t):
        return t.pd * (1 - 2 * np.exp(-ti / t.t1) + np.exp(-tr / t.t1)) * np.exp(-te / t.t2)

    wm, csf = ir(table["wm"]), ir(table["csf"])
    assert wm > 0 > csf
    maps = synthetic.quantitative_maps(probs, factors, texture, 1.5, partial_volume="signal")
    mask = np.ones((3, 1, 1), bool)
    image = synthetic.acquire(maps, mask, p, scanner.ScannerEffects(), jax.random.key(0))
    np.testing.assert_allclose(image.ravel(), np.abs([wm, 0.5 * (wm + csf), csf]), rtol=1e-5)
    # A slice profile integrates the signed signal: a WM slab next to a CSF slab along z.
    probs_z = np.zeros((3, 1, 1, 9), np.float32)
    probs_z[2, ..., :4], probs_z[0, ..., 4:] = 1.0, 1.0
    maps = synthetic.quantitative_maps(probs_z, factors, np.ones((1, 1, 9), np.float32), 1.5,
                                       partial_volume="signal")
    blurred = synthetic.acquire(maps, np.ones((1, 1, 9), bool), p,
                                scanner.ScannerEffects(slice_fwhm=2.5), jax.random.key(0))
    signed = np.where(np.arange(9) < 4, wm, csf).astype(np.float32)
    want = np.abs(np.asarray(scanner.slice_profile(signed, 2.5))).ravel()
    np.testing.assert_allclose(blurred.ravel(), want, rtol=1e-5)
    assert not np.allclose(want, np.asarray(scanner.slice_profile(np.abs(signed), 2.5)),
                           rtol=0.05)


def test_unknown_partial_volume_mode_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="partial_volume"):
        synthetic.quantitative_maps(np.ones((3, 1, 1, 1)), np.ones((3, 4)), np.ones((1, 1, 1)),
                                    3.0, partial_volume="voxel")
    config = conftest.load_config("phycharm", "debug")
    config.unlock()
    config.data.partial_volume = "voxel"
    with pytest.raises(ValueError, match="data.partial_volume"):
        synthetic.build_default_dataset(config.data, str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []   # nothing half-built left behind


@pytest.fixture(scope="module")
def template():
    probs, _, _ = synthetic.load_anatomy(4)
    return probs


def test_atrophy_moves_tissue_to_csf_from_the_pial_side_and_around_the_ventricles(template):
    from scipy import ndimage
    csf, gm, wm = template
    assert synthetic.atrophy(template, 0.0, 4) is template
    mild, severe = synthetic.atrophy(template, 0.1, 4), synthetic.atrophy(template, 0.3, 4)
    for out in (mild, severe):
        np.testing.assert_allclose(out.sum(0), template.sum(0), atol=1e-5)  # tissue conserved
        assert (out[1] <= gm + 1e-6).all() and (out[2] <= wm + 1e-6).all()
        assert (out[0] >= csf - 1e-6).all()
    assert severe[1].sum() < mild[1].sum() < gm.sum()          # more atrophy, less GM
    assert 0.05 < 1 - severe[1].sum() / gm.sum() < 0.25
    # Cortical thinning from the pial side: GM beside CSF loses more than GM beside WM.
    loss = (gm - severe[1]) / np.maximum(gm, 1e-6)
    cortex = gm > 0.5
    pial = cortex & (ndimage.maximum_filter(csf, 3) > 0.5)
    white = cortex & (ndimage.maximum_filter(wm, 3) > 0.5) & ~pial
    assert loss[pial].mean() > 2 * loss[white].mean()
    # Ventricular enlargement: deep CSF (away from the brain's edge) grows.
    depth = ndimage.distance_transform_edt(template.sum(0) > 0.5) * 4
    deep = depth > 12
    assert (severe[0] > 0.5)[deep].sum() > 1.2 * (csf > 0.5)[deep].sum()


def test_atrophy_draw_leaves_the_other_subject_draws_unchanged(template):
    a = synthetic.make_subject(template, 5, 2.0, 4, 0.05, 0.03)
    b = synthetic.make_subject(template, 5, 2.0, 4, 0.05, 0.03, atrophy_max=0.3)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert b[0][1].sum() < a[0][1].sum()
    np.testing.assert_allclose(b[0].sum(0), a[0].sum(0), atol=1e-5)


def test_thick_slice_spin_echo_site_reads_back_as_a_2d_spin_echo():
    config = conftest.load_config("phycharm", "")
    site = config.data.sites.se1p5T2D
    protocol = synthetic.site_protocol(site)
    sidecar, missing = synthetic.vendor_sidecar(site, protocol)
    assert missing == {}          # a spin echo's sidecar says all its equation needs
    assert sidecar["MRAcquisitionType"] == "2D" and sidecar["ScanningSequence"] == "SE"
    reading = read_protocol(sidecar, "se.json")
    assert reading.status == "ok", reading.message
    got = reading.protocol()
    assert got.sequence == "se"
    np.testing.assert_allclose([got.tr, got.te, got.field_strength], [0.55, 0.014, 1.5])
    assert site.slice_fwhm * config.data.voxel_size == pytest.approx(5.0)   # 5 mm slices
