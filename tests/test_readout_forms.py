"""MPRAGE / IR-prepared fast GRE with the readout train inside synthesis and the training loss
(issue 14): the Protocol that reaches the model carries the readout TR, readouts per shot and
flip angle, and ``signal.synthesize`` then uses the full form -- the same numbers as the
oracle-tested :func:`phyjax.physics.mp2rage.mprage_full`, also when jit-traced."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phyjax.data.sidecar import read_protocol
from phyjax.physics import mp2rage, signal
from phyjax.physics.sequences import Protocol

T1 = jnp.array([0.25, 0.8, 1.3, 2.0, 4.0])
HERE = os.path.dirname(os.path.abspath(__file__))


def _protocols():
    for tr, ti, deg, tau, n in [(2.3, 0.9, 9.0, 0.0071, 176), (2.0, 0.75, 12.0, 0.0078, 160),
                                (2.5, 1.1, 8.0, 0.0081, 200)]:
        p = Protocol(tr=tr, te=0.003, ti=ti, flip_angle=float(np.deg2rad(deg)),
                     tr_readout=tau, n_readouts=float(n), sequence="mprage")
        oracle = mp2rage.MPRAGEProtocol(tr=tr, ti=ti, flip_angle=float(np.deg2rad(deg)),
                                        readout_tr=tau, n_readouts=n, te=0.003)
        yield p, oracle


@pytest.mark.parametrize("b1", [1.0, 0.85])
def test_full_form_in_synthesis_is_the_oracle_tested_function(b1):
    for p, oracle in _protocols():
        got = signal.signed_signal(p, T1, jnp.inf, 0.05, 1.0, b1)
        want = mp2rage.mprage_full(T1, 1.0, oracle, b1=b1, t2star=0.05)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        # and it is not the static equation (the readout train changes the contrast)
        static = signal.mprage(T1, 0.05, 1.0, p.tr, p.ti, p.te)
        assert not np.allclose(got / got[-1], static / static[-1], rtol=0.02)


def test_traced_protocols_in_a_jitted_loss_use_the_same_forms():
    """As in training: float32 protocol fields are traced, one compilation serves protocols
    with and without a readout train, and the gradient stays finite for both."""
    f = jax.jit(lambda p, t1: signal.synthesize(p, t1, jnp.inf, jnp.inf, 1.0))
    for p, oracle in _protocols():
        traced = jax.tree.map(np.float32, p)
        np.testing.assert_allclose(f(traced, T1), jnp.abs(mp2rage.mprage_full(T1, 1.0, oracle)),
                                   rtol=2e-5)
        without = traced.replace(tr_readout=np.float32(0.0))
        np.testing.assert_allclose(f(without, T1),
                                   jnp.abs(signal.mprage(T1, jnp.inf, 1.0, p.tr, p.ti, 0.0)),
                                   rtol=2e-5)
        for q in (traced, without):
            grad = jax.grad(lambda t: f(q, t).sum())(T1)
            assert np.isfinite(np.asarray(grad)).all()
    assert f._cache_size() == 1


def test_a_sidecar_with_its_readout_train_changes_resynthesis_as_the_equation_says():
    """A real Siemens XA30 MPRAGE sidecar read as is gives the static form (no readout TR or
    readouts per shot in it); the same with the echo spacing and slices per slab given (as a
    site table would) gives the full form with those values."""
    path = os.path.join(HERE, "data", "vendor_t1_sidecars", "Siemens_XA30_mprage_classic.json")
    sidecar = json.load(open(path))
    bare = read_protocol(sidecar, path).protocol()
    assert not bool(signal.has_readout(bare))
    np.testing.assert_allclose(signal.synthesize(bare, T1, jnp.inf, jnp.inf, 1.0),
                               jnp.abs(signal.mprage(T1, jnp.inf, 1.0, bare.tr, bare.ti, 0.0)),
                               rtol=1e-6)
    full = read_protocol(sidecar, path, site_values={"tr_readout_s": 0.0072,
                                                     "n_readouts": 176}).protocol()
    assert bool(signal.has_readout(full))
    oracle = mp2rage.MPRAGEProtocol(tr=float(full.tr), ti=float(full.ti),
                                    flip_angle=float(full.flip_angle), readout_tr=0.0072,
                                    n_readouts=176, te=float(full.te))
    np.testing.assert_allclose(signal.synthesize(full, T1, jnp.inf, jnp.inf, 1.0),
                               jnp.abs(mp2rage.mprage_full(T1, 1.0, oracle)), rtol=1e-6)


def test_a_readout_train_that_does_not_fit_is_refused():
    p = Protocol(tr=2.3, te=0.003, ti=0.5, flip_angle=0.15, tr_readout=0.008, n_readouts=176.0)
    with pytest.raises(ValueError, match="does not fit"):
        signal.synthesize(p, T1, jnp.inf, jnp.inf, 1.0)


def test_a_readout_flip_of_90_degrees_or_more_is_refused_not_nan():
    # The train multiplies Mz by cos(flip) per pulse; above 90 degrees the closed form took
    # ln(cos) of a negative number (NaN).  Eager use and the oracle's own validation refuse it.
    p = Protocol(tr=2.3, te=0.003, ti=0.9, flip_angle=float(np.deg2rad(100.0)),
                 tr_readout=0.007, n_readouts=176.0)
    assert "below 90" in signal.readout_problem(p)
    with pytest.raises(ValueError, match="below 90"):
        signal.synthesize(p, T1, jnp.inf, jnp.inf, 1.0)
    with pytest.raises(ValueError, match="below 90"):
        mp2rage.MPRAGEProtocol(tr=2.3, ti=0.9, flip_angle=float(np.deg2rad(100.0)),
                               readout_tr=0.007, n_readouts=176).validate()
    assert signal.readout_problem(p.replace(flip_angle=float(np.deg2rad(9.0)))) == ""


def test_phycharm_refuses_protocols_it_cannot_model_naming_the_scan():
    """Inside the jitted loss neither the B0 nor the readout train can be checked (a traced
    train that does not fit gives a finite, wrong signal; a traced 1.0 T is snapped to the 1.5 T
    table), so PhyCHarm checks every protocol where it enters."""
    from phyjax.data.nifti import InputError
    from phyjax.methods import phycharm

    (p, _), *_ = _protocols()
    phycharm.check_protocol(p, "ok.nii.gz")                         # fits, 3 T
    phycharm.check_protocol(p.replace(field_strength=2.89362))      # a Siemens 3 T B0
    with pytest.raises(InputError, match=r"sub-01_T1w\.nii\.gz: No tissue relaxation table for "
                                         r"B0 = 1\.0 T"):
        phycharm.check_protocol(p.replace(field_strength=1.0), "sub-01_T1w.nii.gz")
    short = p.replace(ti=0.5)                 # half of 176 x 7.1 ms = 0.62 s > TI
    with pytest.raises(InputError, match="scan.nii.gz: readout train .* does not fit"):
        phycharm.check_protocol(short, "scan.nii.gz")
    with pytest.raises(InputError, match="does not fit"):
        phycharm.model_protocol(short, "sidecar")
    # the traced equation gives a finite number for it: why the check must come first
    jitted = jax.jit(lambda q: signal.signed_signal(q, jnp.float32(0.81), jnp.inf, jnp.inf, 1.0))
    assert np.isfinite(float(jitted(jax.tree.map(np.float32, short))))


REAL = {("Siemens", "mprage"): "Siemens_XA30_mprage_classic.json",
        ("GE", "mprage"): "GE_HD16_irspgr.json"}


@pytest.mark.parametrize("vendor", ["Siemens", "GE", "Philips"])
def test_default_dataset_sidecars_read_like_the_vendors_real_ones(vendor):
    """The default dataset's sidecars are written the way each vendor's dcm2niix writes them:
    read alone, each lacks exactly what the vendor's *real* sidecar of that sequence lacks
    (the physicist's reading of tests/data/vendor_t1_sidecars is the oracle); with the
    dataset's site-table row the reading gives back the protocol the images were made with,
    readout train included."""
    import conftest
    from phyjax.data import synthetic

    sites = {k: v for k, v in conftest.load_config("phycharm", None).data.sites.items()
             if v.manufacturer == vendor}
    assert sites
    for site, cfg in sites.items():
        p = synthetic.site_protocol(cfg)
        sidecar, row = synthetic.vendor_sidecar(cfg, p)
        alone = read_protocol(sidecar, f"{site}.json")
        real_name = REAL.get((vendor, p.sequence))
        if real_name:
            with open(os.path.join(HERE, "data", "vendor_t1_sidecars", real_name)) as f:
                real = read_protocol(json.load(f), real_name)
            assert real.family == alone.family == p.sequence
            assert sorted(alone.missing) == sorted(real.missing), (site, alone.missing)
            absent = {"tr_readout_s", "n_readouts"} - set(real.values)
            assert absent <= set(row)     # the site table gives what the real one also lacks
        filled = read_protocol(sidecar, f"{site}.json", site_values=row)
        assert filled.status == "ok", filled.message
        got = filled.protocol()
        for field in ("tr", "te", "ti", "flip_angle", "field_strength", "tr_readout",
                      "n_readouts"):
            assert float(getattr(got, field)) == pytest.approx(float(getattr(p, field)),
                                                               rel=1e-6), (site, field)
        if p.sequence == "mprage":
            assert signal.has_readout(got)


def test_model_readout_setting_selects_the_form_phycharm_resynthesizes_with():
    """``config.model.readout``: ``sidecar`` re-synthesizes the target with its readout train,
    ``static`` with the static MPRAGE equation (the ablation's pre-issue-14 model) -- the
    white-matter unit of each is the corresponding oracle-tested function's value."""
    from phyjax.data.nifti import InputError
    from phyjax.methods import phycharm
    from phyjax.physics.tissues import tissue_parameters

    (p, oracle), *_ = _protocols()
    wm = tissue_parameters(3.0)["wm"]
    full = phycharm.reference_level(phycharm.model_protocol(p, "sidecar"))
    static = phycharm.reference_level(phycharm.model_protocol(p, "static"))
    assert full == pytest.approx(float(abs(mp2rage.mprage_full(wm.t1, wm.pd, oracle))), rel=1e-5)
    assert static == pytest.approx(float(abs(signal.mprage(wm.t1, np.inf, wm.pd, p.tr, p.ti,
                                                           p.te))), rel=1e-6)
    assert abs(full - static) > 0.01 * static
    with pytest.raises(InputError, match="readout"):
        phycharm.model_protocol(p, "full")


def test_a_ge_site_without_readout_train_gets_a_generic_sidecar_that_reads_back():
    """GE writes the readout TR as RepetitionTime: a configured GE MPRAGE site without a
    readout train has none to write, so its sidecar is the generic BIDS one, which reads back
    the (static) protocol completely."""
    from phyjax.data import synthetic

    cfg = {"sequence": "mprage", "tr": 2.0, "te": 0.003, "ti": 0.75, "flip_angle": 12,
           "field_strength": 3.0, "manufacturer": "GE"}
    p = synthetic.site_protocol(cfg)
    sidecar, row = synthetic.vendor_sidecar(cfg, p)
    assert row == {} and sidecar["RepetitionTimePreparation"] == pytest.approx(2.0)
    got = read_protocol(sidecar, "ge.json").protocol()
    assert float(got.tr) == pytest.approx(2.0) and not signal.has_readout(got)
