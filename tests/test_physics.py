"""Tests of ``phyjax.physics``: signal equations, protocols, scanner effects, tissue table.

Every signal equation is checked against an *independent* oracle: a NumPy simulation that
applies the RF pulses and the exact T1 recovery between them, cycle after cycle, until the
longitudinal magnetization reaches its steady state.  Nothing here copies a number out of
the code under test; expected protocol values come from the real Siemens Prisma sidecars in
``tests/data/bids_sidecars_siemens_prisma`` (BSD-2-Clause, see the ORIGIN.md there) and
their upstream README, tissue values from the sources cited in DESIGN.md Sec. 3.

Float64 is switched on only inside the tests that need it (the ``x64`` fixture), never
globally, so the rest of the suite keeps JAX's float32 default.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.optimize
import scipy.special

from phyjax.data.sidecar import infer_sequence, protocol_from_sidecar, protocol_to_sidecar
from phyjax.physics import scanner, tissues
from phyjax.physics.sequences import ENCODING_SIZE, SEQUENCES, Protocol, encode
from phyjax.physics.signal import (ernst_angle, inversion_recovery, ir_null_ti, mprage,
                                   signed_signal, spgr, spin_echo, synthesize)

SIDECARS = Path(__file__).parent / "data" / "bids_sidecars_siemens_prisma"
PRODUCT_MPRAGE = SIDECARS / "Si_6_T1_mprage_ns_sag_p2.json"
HCP_T1 = SIDECARS / "Si_5_HCP_T1.json"
MP2RAGE_INV1 = SIDECARS / "Si_2_t1_mp2rage_sag_p3_32_INV1.json"
MP2RAGE_INV2 = SIDECARS / "Si_3_t1_mp2rage_sag_p3_32_INV2.json"


# ---------------------------------------------------------------------------------------
# Fixtures and independent NumPy oracles
# ---------------------------------------------------------------------------------------

def _relax(mz, m0, dt, t1):
    """Exact free T1 recovery of Mz over ``dt``: Mz(dt) = M0 + (Mz(0) - M0) exp(-dt/T1)."""
    return m0 + (mz - m0) * np.exp(-dt / t1)


def oracle_spgr(t1, t2star, m0, tr, te, alpha):
    """Steady state of an ideally spoiled GRE by iterating the pulse/relaxation recursion.

    Each cycle: the RF pulse of flip ``alpha`` tips Mz- so that Mz+ = Mz- cos(alpha) and the
    transverse magnetization is Mz- sin(alpha); it decays with T2* until TE (signal) and is
    then spoiled; Mz recovers with T1 over TR.  Starts from full relaxation (Mz = M0) and runs
    enough cycles that the remaining transient |cos(alpha) E1|^n is below 1e-15.
    """
    t1, t2star, m0, tr, te, alpha = np.broadcast_arrays(
        *[np.asarray(v, np.float64) for v in (t1, t2star, m0, tr, te, alpha)])
    rate = np.max(np.abs(np.cos(alpha) * np.exp(-tr / t1)))
    n_cycles = int(np.ceil(np.log(1e-15) / np.log(rate))) + 10 if rate > 0 else 2
    mz = m0.copy()
    for _ in range(n_cycles):
        transverse = mz * np.sin(alpha)
        mz = _relax(mz * np.cos(alpha), m0, tr, t1)
    return transverse * np.exp(-te / t2star)


def oracle_mprage(t1, m0, tr, ti, n_cycles=400):
    """Static MPRAGE by iterating ideal inversions (Mz -> -Mz) every TR with free T1 recovery.

    Mz is read TI after each inversion (the readout train is neglected, as in the static
    equation: it does not disturb Mz).  Starts at Mz = M0.
    """
    t1, m0, tr, ti = np.broadcast_arrays(*[np.asarray(v, np.float64) for v in (t1, m0, tr, ti)])
    mz = m0.copy()
    for _ in range(n_cycles):
        mz = -mz                                  # inversion
        mz = _relax(mz, m0, ti, t1)               # recover until the readout
        at_ti = mz.copy()
        mz = _relax(mz, m0, tr - ti, t1)          # recover until the next inversion
    return at_ti


def oracle_inversion_recovery(t1, t2, m0, tr, ti, te, eta=1.0, refocus=False, n_cycles=5):
    """Inversion recovery with a spin-echo readout, by iterating its pulses.

    Each cycle of length TR: inversion with efficiency eta (Mz -> -eta Mz); recovery over TI;
    the 90 deg excitation puts all of Mz(TI) into the transverse plane (signal Mz(TI) e^{-TE/T2})
    and leaves Mz = 0; recovery until the next inversion.  With ``refocus=True`` the 180 deg
    refocusing pulse TE/2 after the excitation is also applied to the regrown Mz.
    """
    t1, t2, m0, tr, ti, te, eta = np.broadcast_arrays(
        *[np.asarray(v, np.float64) for v in (t1, t2, m0, tr, ti, te, eta)])
    mz = m0.copy()
    for _ in range(n_cycles):
        mz = -eta * mz
        mz = _relax(mz, m0, ti, t1)
        sig = mz * np.exp(-te / t2)
        mz = np.zeros_like(mz)                    # 90 deg pulse saturates Mz
        if refocus:
            mz = _relax(mz, m0, te / 2.0, t1)
            mz = -mz                              # ideal 180 deg refocusing pulse
            mz = _relax(mz, m0, tr - ti - te / 2.0, t1)
        else:
            mz = _relax(mz, m0, tr - ti, t1)
    return sig


def oracle_spin_echo(t1, t2, m0, tr, te, n_cycles=5):
    """Spin echo (90-180) by iterating: 90 deg (signal = Mz, Mz -> 0), recover TE/2,
    180 deg (Mz -> -Mz), recover TR - TE/2."""
    t1, t2, m0, tr, te = np.broadcast_arrays(
        *[np.asarray(v, np.float64) for v in (t1, t2, m0, tr, te)])
    mz = m0.copy()
    for _ in range(n_cycles):
        sig = mz * np.exp(-te / t2)
        mz = np.zeros_like(mz)
        mz = _relax(mz, m0, te / 2.0, t1)
        mz = -mz
        mz = _relax(mz, m0, tr - te / 2.0, t1)
    return sig


def central_difference(f, x, rel_step=1e-6):
    h = rel_step * max(abs(x), 1e-3)
    return (f(x + h) - f(x - h)) / (2.0 * h)


def load_sidecar(path):
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------
# 1. SPGR
# ---------------------------------------------------------------------------------------

def test_spgr_zero_flip_gives_zero_signal():
    s = spgr(t1=jnp.array([0.5, 1.0, 4.0]), t2star=0.05, m0=1.0, tr=0.02, te=0.004,
             flip_angle=0.0)
    np.testing.assert_array_equal(np.asarray(s), 0.0)


def test_spgr_te_zero_has_no_t2star_weighting(x64):
    kw = dict(t1=0.9, m0=0.8, tr=0.025, te=0.0, flip_angle=math.radians(12.0))
    a = spgr(t2star=0.03, **kw)
    b = spgr(t2star=jnp.inf, **kw)
    assert float(a) == pytest.approx(float(b), rel=1e-15)
    # And the T2* factor is exactly exp(-TE/T2*) at finite TE.
    kw["te"] = 0.01
    ratio = spgr(t2star=0.03, **kw) / spgr(t2star=jnp.inf, **kw)
    assert float(ratio) == pytest.approx(math.exp(-0.01 / 0.03), rel=1e-13)


@pytest.mark.parametrize("flip_deg", [5.0, 30.0, 90.0, 140.0])
def test_spgr_long_tr_limit(x64, flip_deg):
    """TR >> T1: full recovery between pulses, S = M0 sin(a) exp(-TE/T2*)."""
    a = math.radians(flip_deg)
    s = spgr(t1=1.0, t2star=0.04, m0=0.7, tr=100.0, te=0.005, flip_angle=a)
    assert float(s) == pytest.approx(0.7 * math.sin(a) * math.exp(-0.005 / 0.04), rel=1e-12)


def test_spgr_matches_rf_relaxation_recursion(x64):
    """Closed form == steady state of the discrete pulse/relaxation recursion (float64, 1e-10)."""
    t1 = np.array([0.5, 0.81, 1.35, 4.2])[:, None, None, None]
    tr = np.array([0.005, 0.02, 0.1, 2.0])[None, :, None, None]
    alpha = np.radians([2.0, 9.0, 30.0, 90.0, 150.0])[None, None, :, None]
    b1 = np.array([0.8, 1.0, 1.2])[None, None, None, :]
    t2star, m0, te = 0.05, 0.9, 0.004
    expected = oracle_spgr(t1, t2star, m0, tr, te, b1 * alpha)
    got = spgr(jnp.asarray(t1), t2star, m0, jnp.asarray(tr), te, jnp.asarray(alpha),
               jnp.asarray(b1))
    assert got.dtype == jnp.float64
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t1,tr", [(0.81, 0.02), (1.35, 0.0081), (4.2, 0.5), (0.5, 0.3)])
def test_ernst_angle_is_the_maximum(x64, t1, tr):
    a_e = float(ernst_angle(t1, tr))
    dsda = jax.grad(lambda a: spgr(t1, 0.05, 1.0, tr, 0.003, a))
    s_e = float(spgr(t1, 0.05, 1.0, tr, 0.003, a_e))
    # Stationary point: derivative vanishes relative to the signal scale, and changes sign.
    assert abs(float(dsda(a_e))) < 1e-9 * s_e
    assert float(dsda(0.9 * a_e)) > 0.0
    assert float(dsda(min(1.1 * a_e, 0.5 * (a_e + math.pi / 2)))) < 0.0
    # Global maximum over a dense grid of flip angles in (0, pi).
    grid = np.linspace(1e-6, math.pi - 1e-6, 200_001)
    s = np.asarray(spgr(t1, 0.05, 1.0, tr, 0.003, jnp.asarray(grid)))
    step = grid[1] - grid[0]
    assert abs(grid[np.argmax(s)] - a_e) <= step
    assert s_e >= s.max() - 1e-12
    # Independent optimizer on the recursion oracle agrees.
    res = scipy.optimize.minimize_scalar(
        lambda a: -float(oracle_spgr(t1, 0.05, 1.0, tr, 0.003, a)),
        bounds=(1e-4, math.pi / 2), method="bounded", options={"xatol": 1e-10})
    assert res.x == pytest.approx(a_e, abs=1e-5)


# ---------------------------------------------------------------------------------------
# 2. MPRAGE (static form)
# ---------------------------------------------------------------------------------------

def test_mprage_matches_inversion_recovery_cycles(x64):
    """Closed form (TE = 0) == Mz at TI of the steady state of repeated ideal inversions."""
    t1 = np.array([0.3, 0.81, 1.35, 2.569, 4.2])[:, None]
    tr_ti = np.array([(2.25, 0.925), (2.4, 1.06), (2.0, 0.88), (5.0, 0.822), (5.0, 2.5),
                      (1.0, 0.05)])
    tr, ti = tr_ti[None, :, 0], tr_ti[None, :, 1]
    expected = oracle_mprage(t1, 1.3, tr, ti)
    got = mprage(jnp.asarray(t1), 0.05, 1.3, jnp.asarray(tr), jnp.asarray(ti), 0.0)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)
    # The T2* factor at TE > 0 is exp(-TE/T2*).
    ratio = (mprage(1.0, 0.04, 1.0, 2.3, 0.9, 0.003) / mprage(1.0, 0.04, 1.0, 2.3, 0.9, 0.0))
    assert float(ratio) == pytest.approx(math.exp(-0.003 / 0.04), rel=1e-13)


def test_mprage_fully_inverted_at_ti_zero(x64):
    """TI -> 0 with TR >> T1: right after a perfect inversion of fully relaxed Mz, S = -M0."""
    s = mprage(t1=np.array([0.5, 1.0, 2.0]), t2star=0.05, m0=0.8, tr=200.0, ti=0.0, te=0.0)
    np.testing.assert_allclose(np.asarray(s), -0.8, rtol=1e-12)
    # TI >> T1 (and TR >> TI): full recovery, S = +M0.
    s = mprage(t1=0.5, t2star=0.05, m0=0.8, tr=400.0, ti=200.0, te=0.0)
    assert float(s) == pytest.approx(0.8, rel=1e-12)


# ---------------------------------------------------------------------------------------
# 3. Inversion recovery
# ---------------------------------------------------------------------------------------

def test_ir_null_ti_nulls_csf_for_flair(x64):
    """FLAIR at 3 T: TR 9 s, TE 0.1 s; TI = ir_null_ti(T1_csf) nulls CSF but not GM/WM."""
    table = tissues.tissue_parameters(3.0)
    csf = table["csf"]
    tr, te = 9.0, 0.1
    ti = float(ir_null_ti(csf.t1, tr))
    assert 0.0 < ti < tr
    s_csf = inversion_recovery(csf.t1, csf.t2, csf.pd, tr, ti, te)
    assert abs(float(s_csf)) < 1e-12
    # The signal changes sign across the null (it is a genuine zero crossing).
    below = inversion_recovery(csf.t1, csf.t2, csf.pd, tr, 0.95 * ti, te)
    above = inversion_recovery(csf.t1, csf.t2, csf.pd, tr, 1.05 * ti, te)
    assert float(below) < 0.0 < float(above)
    # Independent root of the iterated-pulse oracle agrees.
    root = scipy.optimize.brentq(
        lambda t: float(oracle_inversion_recovery(csf.t1, csf.t2, 1.0, tr, t, te)),
        1e-3, tr - 1e-3, xtol=1e-14)
    assert root == pytest.approx(ti, rel=1e-10)
    # Brain tissue is not nulled.
    for name in ("gm", "wm"):
        p = table[name]
        assert abs(float(inversion_recovery(p.t1, p.t2, p.pd, tr, ti, te))) > 0.1


def test_inversion_recovery_limits(x64):
    t1, t2, m0, te = 0.9, 0.08, 0.7, 0.02
    # TI -> 0, TR >> T1: freshly inverted equilibrium magnetization, S = -eta M0 e^{-TE/T2}.
    for eta in (1.0, 0.96):
        s = inversion_recovery(t1, t2, m0, 300.0, 0.0, te, eta)
        assert float(s) == pytest.approx(-eta * m0 * math.exp(-te / t2), rel=1e-12)
    # TI -> infinity-like (TI >> T1, TR >> TI): fully recovered, S = M0 e^{-TE/T2}.
    s = inversion_recovery(t1, t2, m0, 600.0, 300.0, te, 0.96)
    assert float(s) == pytest.approx(m0 * math.exp(-te / t2), rel=1e-12)
    # TI -> TR: the next inversion acts on the Mz = 0 left by the 90 deg pulse, so Mz simply
    # recovers from 0 over TR: S = M0 (1 - e^{-TR/T1}) e^{-TE/T2}, whatever eta is.
    tr = 2.0
    s = inversion_recovery(t1, t2, m0, tr, tr, te, 0.9)
    assert float(s) == pytest.approx(m0 * (1 - math.exp(-tr / t1)) * math.exp(-te / t2),
                                     rel=1e-12)


@pytest.mark.parametrize("eta", [1.0, 0.96, 0.8])
def test_inversion_recovery_matches_pulse_recursion(x64, eta):
    """Closed form == iterated inversion (efficiency eta) / 90 deg saturation / recovery.

    The oracle neglects what the 180 deg refocusing pulse of the spin-echo readout does to
    the longitudinal magnetization regrown during TE/2; the documented closed form makes the
    same approximation, i.e. it is exact for TE << TR (see the next test).
    """
    t1 = np.array([0.5, 0.833, 1.35, 2.569, 4.2])[:, None]
    tr_ti_te = np.array([(9.0, 2.5, 0.1), (2.0, 0.4, 0.015), (5.0, 0.1, 0.08),
                         (6.0, 2.0, 0.01)])
    tr, ti, te = (tr_ti_te[None, :, k] for k in range(3))
    expected = oracle_inversion_recovery(t1, 0.09, 0.85, tr, ti, te, eta)
    got = inversion_recovery(jnp.asarray(t1), 0.09, 0.85, jnp.asarray(tr), jnp.asarray(ti),
                             jnp.asarray(te), eta)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)


def test_inversion_recovery_refocusing_pulse_is_a_small_te_correction(x64):
    """With the refocusing pulse applied to regrown Mz, the closed form is the TE << TR limit.

    The difference is first order in TE/T1, damped by e^{-(TR - TE)/T1}, and vanishes as TE -> 0.
    """
    t1, t2, m0, tr, ti = 1.35, 0.11, 1.0, 3.0, 0.8
    diffs = []
    for te in (0.1, 0.05, 0.025):
        exact = oracle_inversion_recovery(t1, t2, m0, tr, ti, te, refocus=True)
        closed = float(inversion_recovery(t1, t2, m0, tr, ti, te))
        diff = abs(float(exact) - closed)
        assert diff <= m0 * (te / t1) * math.exp(-(tr - te) / t1)
        diffs.append(diff / math.exp(-te / t2))
    # First order in TE: halving TE about halves the (T2-decay-normalised) discrepancy.
    assert diffs[0] / diffs[1] == pytest.approx(2.0, rel=0.05)
    assert diffs[1] / diffs[2] == pytest.approx(2.0, rel=0.05)


# ---------------------------------------------------------------------------------------
# 4. Spin echo
# ---------------------------------------------------------------------------------------

def test_spin_echo_limits(x64):
    t1, t2, m0 = np.array([0.5, 1.35, 4.2]), 0.08, 0.9
    # TR >> T1: S = M0 e^{-TE/T2}.
    s = spin_echo(t1, t2, m0, 500.0, 0.03)
    np.testing.assert_allclose(np.asarray(s), m0 * np.exp(-0.03 / t2), rtol=1e-12)
    # TE -> 0: saturation recovery, S = M0 (1 - e^{-TR/T1}).
    tr = 1.2
    s = spin_echo(t1, t2, m0, tr, 0.0)
    np.testing.assert_allclose(np.asarray(s), m0 * (1 - np.exp(-tr / t1)), rtol=1e-12)


def test_spin_echo_matches_pulse_recursion(x64):
    """Closed form (refocusing pulse included) == iterated 90/180 pulses with T1 recovery."""
    t1 = np.array([0.5, 0.81, 1.35, 4.2])[:, None]
    tr = np.array([0.4, 0.6, 2.5, 5.0])[None, :]
    te = np.array([0.012, 0.03, 0.1, 0.12])[None, :]
    expected = oracle_spin_echo(t1, 0.1, 0.95, tr, te)
    got = spin_echo(jnp.asarray(t1), 0.1, 0.95, jnp.asarray(tr), jnp.asarray(te))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# 5. Gradients against central finite differences (float64)
# ---------------------------------------------------------------------------------------

GRADIENT_CASES = {
    "spgr": (spgr, dict(t1=0.9, t2star=0.05, m0=0.8, tr=0.02, te=0.004, flip_angle=0.3,
                        b1=1.1)),
    "mprage": (mprage, dict(t1=0.9, t2star=0.05, m0=0.8, tr=2.3, ti=0.9, te=0.003)),
    "inversion_recovery": (inversion_recovery, dict(t1=1.3, t2=0.09, m0=0.8, tr=9.0, ti=2.5,
                                                    te=0.1, inversion_efficiency=0.95)),
    "spin_echo": (spin_echo, dict(t1=0.9, t2=0.08, m0=0.8, tr=0.5, te=0.02)),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradients_match_finite_differences(x64, name):
    fn, point = GRADIENT_CASES[name]
    keys = list(point)
    # Every argument, including t1, m0 and the protocol timing (tr, ti, te, flip angle).
    grads = jax.grad(lambda *args: fn(**dict(zip(keys, args))), argnums=tuple(range(len(keys))))(
        *[jnp.float64(point[k]) for k in keys])
    for key, g in zip(keys, grads):
        def f(x, key=key):
            return float(fn(**{**point, key: x}))
        fd = central_difference(f, point[key])
        assert np.isfinite(float(g)), key
        assert float(g) == pytest.approx(fd, rel=1e-6, abs=1e-9), f"{name}: d/d{key}"
    # Signals are linear in M0.
    m0_index = keys.index("m0")
    assert float(grads[m0_index]) == pytest.approx(float(fn(**point)) / point["m0"], rel=1e-12)


def test_gradient_wrt_protocol_pytree(x64):
    """jax.grad w.r.t. a Protocol pytree gives the per-field derivatives (finite differences)."""
    proto = Protocol(tr=2.3, te=0.003, ti=0.9, flip_angle=0.15, field_strength=3.0,
                     sequence="mprage")
    g = jax.grad(lambda p: signed_signal(p, 1.0, 0.08, 0.05, 0.9))(proto)
    assert g.sequence == "mprage"
    for field in ("tr", "ti", "te"):
        def f(x, field=field):
            return float(signed_signal(proto.replace(**{field: x}), 1.0, 0.08, 0.05, 0.9))
        assert float(getattr(g, field)) == pytest.approx(
            central_difference(f, getattr(proto, field)), rel=1e-6)
    # The static MPRAGE form does not depend on the flip angle or B0.
    assert float(g.flip_angle) == 0.0 and float(g.field_strength) == 0.0


# ---------------------------------------------------------------------------------------
# 6. vmap / jit / synthesize
# ---------------------------------------------------------------------------------------

def test_vmap_over_voxels_equals_loop():
    t1 = jnp.linspace(0.4, 4.5, 17)
    m0 = jnp.linspace(0.5, 1.0, 17)
    batched = jax.vmap(lambda a, b: spgr(a, 0.05, b, 0.02, 0.004, 0.3))(t1, m0)
    looped = np.array([float(spgr(float(a), 0.05, float(b), 0.02, 0.004, 0.3))
                       for a, b in zip(t1, m0)])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-6)
    batched = jax.vmap(lambda a, b: mprage(a, 0.05, b, 2.3, 0.9, 0.003))(t1, m0)
    looped = np.array([float(mprage(float(a), 0.05, float(b), 2.3, 0.9, 0.003))
                       for a, b in zip(t1, m0)])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_vmap_over_protocols_equals_loop(sequence):
    n = 6
    trs = np.linspace(2.0, 9.0, n) if sequence in ("mprage", "ir") else np.linspace(0.01, 0.6, n)
    tis = 0.3 * trs if sequence in ("mprage", "ir") else np.zeros(n)
    tes = np.linspace(0.002, 0.008, n)
    flips = np.radians(np.linspace(5.0, 40.0, n))
    protocols = [Protocol(tr=float(a), te=float(b), ti=float(c), flip_angle=float(d),
                          field_strength=3.0, sequence=sequence)
                 for a, b, c, d in zip(trs, tes, tis, flips)]
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *protocols)
    assert stacked.sequence == sequence and stacked.tr.shape == (n,)
    maps = dict(t1=jnp.array([0.8, 1.35, 4.2]), t2=jnp.array([0.08, 0.11, 1.0]),
                t2star=jnp.array([0.05, 0.066, 0.2]), m0=jnp.array([0.77, 0.86, 1.0]))
    batched = jax.vmap(lambda p: synthesize(p, **maps))(stacked)
    looped = np.stack([np.asarray(synthesize(p, **maps)) for p in protocols])
    assert batched.shape == (n, 3)
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-5, atol=1e-7)
    # Encodings of stacked protocols stack too.
    assert encode(stacked).shape == (n, ENCODING_SIZE)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_synthesize_shape_sign_and_jit(sequence):
    rng = np.random.default_rng(0)
    shape = (4, 5, 6)
    t1 = jnp.asarray(rng.uniform(0.4, 4.5, shape), jnp.float32)
    t2 = jnp.asarray(rng.uniform(0.05, 1.0, shape), jnp.float32)
    t2star = jnp.asarray(rng.uniform(0.03, 0.2, shape), jnp.float32)
    m0 = jnp.asarray(rng.uniform(0.5, 1.0, shape), jnp.float32)
    b1 = jnp.asarray(rng.uniform(0.8, 1.2, shape), jnp.float32)
    proto = {"spgr": Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=20.0),
             "mprage": Protocol.from_degrees("mprage", tr=2.3, te=0.003, ti=0.9,
                                             flip_angle_deg=9.0),
             "ir": Protocol.from_degrees("ir", tr=9.0, te=0.1, ti=2.5),
             "se": Protocol.from_degrees("se", tr=0.5, te=0.02),
             "bssfp": Protocol.from_degrees("bssfp", tr=0.005, te=0.0025,
                                            flip_angle_deg=40.0)}[sequence]
    img = synthesize(proto, t1, t2, t2star, m0, b1)
    assert img.shape == shape
    assert img.dtype == jnp.float32      # x64 fixtures elsewhere did not leak
    assert bool(jnp.all(jnp.isfinite(img))) and bool(jnp.all(img >= 0))
    signed = signed_signal(proto, t1, t2, t2star, m0, b1)
    np.testing.assert_array_equal(np.asarray(img), np.abs(np.asarray(signed)))
    jitted = jax.jit(synthesize)(proto, t1, t2, t2star, m0, b1)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(img), rtol=1e-5, atol=1e-7)
    if sequence in ("mprage", "ir"):
        # The T1 range spans the inversion null, so the magnitude really folds negatives.
        assert bool(jnp.any(signed < 0)) and bool(jnp.any(signed > 0))


def test_signed_signal_dispatches_to_the_right_equation(x64):
    """Each family's dispatch equals its independent oracle (B1 scales only SPGR's flip)."""
    t1, t2, t2star, m0, b1 = 1.1, 0.09, 0.05, 0.8, 1.15
    p = Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=15.0)
    assert float(signed_signal(p, t1, t2, t2star, m0, b1)) == pytest.approx(
        float(oracle_spgr(t1, t2star, m0, 0.02, 0.004, b1 * math.radians(15.0))), rel=1e-10)
    p = Protocol.from_degrees("mprage", tr=2.3, te=0.0, ti=0.9, flip_angle_deg=9.0)
    assert float(signed_signal(p, t1, t2, t2star, m0, b1)) == pytest.approx(
        float(oracle_mprage(t1, m0, 2.3, 0.9)), rel=1e-10)
    p = Protocol.from_degrees("ir", tr=9.0, te=0.1, ti=2.5)
    assert float(signed_signal(p, t1, t2, t2star, m0, b1)) == pytest.approx(
        float(oracle_inversion_recovery(t1, t2, m0, 9.0, 2.5, 0.1)), rel=1e-10)
    p = Protocol.from_degrees("se", tr=0.5, te=0.02)
    assert float(signed_signal(p, t1, t2, t2star, m0, b1)) == pytest.approx(
        float(oracle_spin_echo(t1, t2, m0, 0.5, 0.02)), rel=1e-10)


# ---------------------------------------------------------------------------------------
# 7. Protocols and BIDS sidecars
# ---------------------------------------------------------------------------------------

# Expected values: the upstream README of neurolabusc/dcm_qa_mprage (times in ms there) and
# the sidecar files themselves; see tests/data/bids_sidecars_siemens_prisma/ORIGIN.md.
REAL_SIDECARS = [
    # file, TR (s), TI (s), TE (s), flip (deg)
    (PRODUCT_MPRAGE, 2.25, 0.925, 0.00411, 9.0),
    (HCP_T1, 2.4, 1.06, 0.00224, 8.0),
]  # MP2RAGE INV1/INV2 are their own family: tests/test_sidecar.py


@pytest.mark.parametrize("path,tr,ti,te,flip_deg", REAL_SIDECARS,
                         ids=[row[0].stem for row in REAL_SIDECARS])
def test_real_siemens_sidecars(path, tr, ti, te, flip_deg):
    sidecar = load_sidecar(path)
    assert infer_sequence(sidecar) == "mprage"      # ScanningSequence GR\IR
    p = protocol_from_sidecar(sidecar, source=str(path))
    assert p.sequence == "mprage"
    assert p.tr == pytest.approx(tr, rel=1e-12)
    assert p.ti == pytest.approx(ti, rel=1e-12)
    assert p.te == pytest.approx(te, rel=1e-12)
    assert p.flip_angle == pytest.approx(flip_deg * math.pi / 180.0, rel=1e-12)
    assert p.field_strength == pytest.approx(3.0)


def test_product_mprage_sidecar():
    p = protocol_from_sidecar(load_sidecar(PRODUCT_MPRAGE), source=str(PRODUCT_MPRAGE))
    assert (p.sequence, p.tr, p.ti, p.te) == ("mprage", 2.25, 0.925, 0.00411)
    assert p.flip_angle == pytest.approx(math.radians(9.0), rel=1e-15)


def test_flip_angle_converted_exactly_once():
    sidecar = load_sidecar(PRODUCT_MPRAGE)
    p = protocol_from_sidecar(sidecar)
    once = 9.0 * math.pi / 180.0
    assert p.flip_angle == pytest.approx(once, rel=1e-15)
    assert p.flip_angle != pytest.approx(9.0)                      # not left in degrees
    assert p.flip_angle != pytest.approx(once * math.pi / 180.0)   # not converted twice
    # Round trip through the sidecar form (degrees) and back.
    back = protocol_to_sidecar(p)
    assert back["FlipAngle"] == pytest.approx(9.0, rel=1e-14)
    q = protocol_from_sidecar(back)
    assert q.sequence == p.sequence
    for field in ("tr", "te", "ti", "flip_angle", "field_strength"):
        assert getattr(q, field) == pytest.approx(getattr(p, field), rel=1e-14)
    assert Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=90.0).flip_angle \
        == pytest.approx(math.pi / 2, rel=1e-15)
    assert Protocol.from_degrees("spgr", tr=0.02, te=0.004, flip_angle_deg=30.0).flip_angle \
        == pytest.approx(math.pi / 6, rel=1e-15)


def test_missing_inversion_time_names_the_file():
    sidecar = load_sidecar(PRODUCT_MPRAGE)
    del sidecar["InversionTime"]
    with pytest.raises(ValueError, match=re.escape(PRODUCT_MPRAGE.name)) as info:
        protocol_from_sidecar(sidecar, source=str(PRODUCT_MPRAGE))
    assert "InversionTime" in str(info.value)


@pytest.mark.parametrize("key,value", [("EchoTime", "4.1 ms"), ("InversionTime", [0.9, 2.5]),
                                       ("FlipAngle", "nine"),
                                       ("RepetitionTime", float("nan")),
                                       ("InversionTime", -0.9)])
def test_bad_values_raise(key, value):
    sidecar = load_sidecar(HCP_T1)
    sidecar[key] = value
    with pytest.raises(ValueError, match=re.escape(HCP_T1.name)) as info:
        protocol_from_sidecar(sidecar, source=str(HCP_T1))
    assert key in str(info.value)


def test_flip_angle_not_required_for_static_mprage_but_checked_for_spgr():
    sidecar = load_sidecar(PRODUCT_MPRAGE)
    del sidecar["FlipAngle"]
    assert protocol_from_sidecar(sidecar).flip_angle == 0.0
    with pytest.raises(ValueError, match="FlipAngle"):
        protocol_from_sidecar({"RepetitionTime": 0.02, "EchoTime": 0.004, "MagneticFieldStrength": 3},
                     sequence="spgr")


@pytest.mark.parametrize("ti", [2.25, 3.0])
def test_ti_not_shorter_than_tr_raises(ti):
    sidecar = load_sidecar(PRODUCT_MPRAGE)
    sidecar["InversionTime"] = ti
    with pytest.raises(ValueError, match="InversionTime"):
        protocol_from_sidecar(sidecar, source=str(PRODUCT_MPRAGE))


def test_other_contradictions_and_missing_fields_raise():
    spgr_sidecar = {"RepetitionTime": 0.01, "EchoTime": 0.01, "FlipAngle": 20,
                    "MagneticFieldStrength": 3, "PulseSequenceType": "SPGR"}
    with pytest.raises(ValueError, match="EchoTime"):
        protocol_from_sidecar(spgr_sidecar)
    sidecar = load_sidecar(PRODUCT_MPRAGE)
    del sidecar["MagneticFieldStrength"]
    with pytest.raises(ValueError, match="MagneticFieldStrength"):
        protocol_from_sidecar(sidecar)
    with pytest.raises(ValueError, match="x.json"):
        protocol_from_sidecar({"RepetitionTime": 2.0, "EchoTime": 0.003}, source="x.json")  # no family
    with pytest.raises(ValueError):
        protocol_from_sidecar(load_sidecar(PRODUCT_MPRAGE), sequence="epi")
    with pytest.raises(ValueError):
        Protocol(tr=1.0, te=0.01, sequence="epi")


def test_overrides_replace_fields_without_mutating_the_sidecar():
    sidecar = load_sidecar(PRODUCT_MPRAGE)
    original = copy.deepcopy(sidecar)
    p = protocol_from_sidecar(sidecar, overrides={"InversionTime": 1.1, "FlipAngle": 7.0,
                                         "RepetitionTime": 2.5, "EchoTime": None})
    assert (p.tr, p.ti, p.te) == (2.5, 1.1, 0.00411)          # None leaves EchoTime alone
    assert p.flip_angle == pytest.approx(math.radians(7.0), rel=1e-15)
    assert sidecar == original
    # An override can also supply a missing field.
    del sidecar["InversionTime"]
    assert protocol_from_sidecar(sidecar, overrides={"InversionTime": 0.9}).ti == 0.9
    # ... and is validated like a sidecar value.
    with pytest.raises(ValueError, match="InversionTime"):
        protocol_from_sidecar(original, overrides={"InversionTime": 2.25})


def test_repetition_time_preparation_preferred_for_mprage():
    """GE/Philips-style sidecar: RepetitionTime is the readout TR, the inversion TR is in
    RepetitionTimePreparation (BIDS)."""
    sidecar = {"ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
               "RepetitionTime": 0.0071, "RepetitionTimePreparation": 2.3,
               "InversionTime": 0.9, "EchoTime": 0.003, "FlipAngle": 8,
               "MagneticFieldStrength": 3}
    p = protocol_from_sidecar(sidecar)
    assert p.sequence == "mprage" and p.tr == 2.3
    del sidecar["RepetitionTimePreparation"]
    # Without it, the readout TR (7.1 ms) is not mistaken for the inversion TR: a missing value.
    with pytest.raises(ValueError, match="missing tr_prep_s"):
        protocol_from_sidecar(sidecar)


@pytest.mark.parametrize("sidecar,expected", [
    ({"PulseSequenceType": "MPRAGE"}, "mprage"),
    ({"PulseSequenceType": "IR-SPGR"}, "mprage"),
    ({"PulseSequenceType": "flair"}, "ir"),
    ({"PulseSequenceType": "FSE"}, "se"),
    ({"ScanningSequence": "GR", "SequenceVariant": "SP"}, "spgr"),
    ({"ScanningSequence": "SE\\IR", "SequenceVariant": "SK\\SP\\MP"}, "ir"),
    ({"ScanningSequence": "SE", "SequenceVariant": "SK\\SP"}, "se"),
    ({"ScanningSequence": "EP"}, None),
    ({}, None),
])
def test_infer_sequence(sidecar, expected):
    assert infer_sequence(sidecar) == expected


def test_encode_layout():
    for seq in SEQUENCES:
        p = Protocol.from_degrees(seq, tr=2.4, te=0.003, ti=1.0 if seq in ("mprage", "ir") else 0.0,
                                  flip_angle_deg=8.0, field_strength=1.5)
        e = np.asarray(encode(p))
        assert e.shape == (ENCODING_SIZE,)
        assert np.all(np.isfinite(e))
        onehot = e[-len(SEQUENCES):]
        np.testing.assert_array_equal(onehot, np.eye(len(SEQUENCES))[SEQUENCES.index(seq)])
        # Documented layout: [tr, ti, 10 te, flip (rad), B0 / 3 T, one-hot].
        np.testing.assert_allclose(e[:-len(SEQUENCES)],
                                   [2.4, p.ti, 0.03, math.radians(8.0), 0.5], rtol=1e-6)
    encodings = {seq: np.asarray(encode(Protocol(tr=2.0, te=0.003, sequence=seq)))
                 for seq in SEQUENCES}
    assert len({e.tobytes() for e in encodings.values()}) == len(SEQUENCES)


# ---------------------------------------------------------------------------------------
# 8. Scanner effects
# ---------------------------------------------------------------------------------------

def rician_mean(a, s):
    """E|A + n|, n complex Gaussian of std s per channel: s sqrt(pi/2) L_{1/2}(-A^2 / 2 s^2).

    L_{1/2}(-v) = e^{-v/2} [(1 + v) I0(v/2) + v I1(v/2)] = (1 + v) i0e(v/2) + v i1e(v/2).
    """
    v = a * a / (2.0 * s * s)
    lag = (1.0 + v) * scipy.special.i0e(v / 2.0) + v * scipy.special.i1e(v / 2.0)
    return s * math.sqrt(math.pi / 2.0) * lag


def test_rician_noise_sigma_zero_is_identity():
    img = jax.random.uniform(jax.random.key(1), (6, 7, 8), minval=0.0, maxval=2.0)
    out = scanner.rician_noise(img, 0.0, jax.random.key(2))
    np.testing.assert_allclose(np.asarray(out), np.asarray(img), rtol=1e-7, atol=0)


@pytest.mark.parametrize("amplitude,sigma", [(0.0, 1.0), (1.0, 1.0), (2.5, 0.7), (20.0, 1.0)])
def test_rician_noise_moments(amplitude, sigma):
    n = 2 ** 18
    img = jnp.full((64, 64, 64), amplitude, jnp.float32)
    out = np.asarray(scanner.rician_noise(img, sigma, jax.random.key(7)), np.float64)
    assert out.shape == (64, 64, 64) and out.size == n and np.all(out >= 0)
    second = amplitude ** 2 + 2 * sigma ** 2                 # E M^2 (exact for Rician)
    mean = rician_mean(amplitude, sigma)
    std_err = math.sqrt((second - mean ** 2) / n)
    assert abs(out.mean() - mean) < 4 * std_err
    # E M^2 = A^2 + 2 s^2; Var(M^2) = 4 s^2 A^2 + 4 s^4.
    m2_err = math.sqrt((4 * sigma ** 2 * amplitude ** 2 + 4 * sigma ** 4) / n)
    assert abs((out ** 2).mean() - second) < 4 * m2_err
    if amplitude / sigma >= 10:
        # High SNR: mean ~ sqrt(A^2 + s^2), measurably above A itself.
        assert abs(out.mean() - math.sqrt(amplitude ** 2 + sigma ** 2)) < 4 * std_err
        assert out.mean() - amplitude > 8 * std_err


def test_rician_noise_is_reproducible_from_its_key():
    img = jnp.ones((5, 5, 5))
    a = scanner.rician_noise(img, 0.1, jax.random.key(3))
    b = scanner.rician_noise(img, 0.1, jax.random.key(3))
    c = scanner.rician_noise(img, 0.1, jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_bias_field_zero_coefficients_is_flat():
    np.testing.assert_array_equal(np.asarray(scanner.bias_field((7, 8, 9), jnp.zeros(9))), 1.0)


def test_bias_field_basis_order():
    """Coefficients are for x, y, z, x^2, y^2, z^2, xy, xz, yz on [-1, 1]^3 (axis order X, Y, Z)."""
    shape = (5, 7, 9)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    monomials = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    for k, mono in enumerate(monomials):
        c = np.zeros(9)
        c[k] = 0.3
        np.testing.assert_allclose(np.asarray(scanner.bias_field(shape, c)), np.exp(0.3 * mono),
                                   rtol=1e-6)


@pytest.mark.parametrize("amplitude", [0.05, 0.2, 0.4])
def test_sampled_bias_field_spans_the_amplitude(amplitude):
    for seed in range(5):
        c = scanner.sample_bias_coefficients(jax.random.key(seed), amplitude)
        assert c.shape == (9,)
        field = np.asarray(scanner.bias_field((9, 9, 9), c), np.float64)
        assert np.all(field > 0)
        assert field.max() / field.min() == pytest.approx(1 + amplitude, rel=1e-5)
        # A finer grid contains the 9^3 one (linspace(-1, 1, 33) includes its nodes).
        fine = np.asarray(scanner.bias_field((33, 33, 33), c), np.float64)
        assert fine.max() / fine.min() >= (1 + amplitude) * (1 - 1e-5)
    same = scanner.sample_bias_coefficients(jax.random.key(11), amplitude)
    again = scanner.sample_bias_coefficients(jax.random.key(11), amplitude)
    other = scanner.sample_bias_coefficients(jax.random.key(12), amplitude)
    np.testing.assert_array_equal(np.asarray(scanner.bias_field((9, 9, 9), same)),
                                  np.asarray(scanner.bias_field((9, 9, 9), again)))
    assert not np.allclose(np.asarray(same), np.asarray(other))


def test_sampled_bias_field_with_zero_amplitude_is_flat():
    c = scanner.sample_bias_coefficients(jax.random.key(0), 0.0)
    np.testing.assert_allclose(np.asarray(scanner.bias_field((9, 9, 9), c)), 1.0, atol=1e-7)


def test_b1_field_centre_and_corners():
    shape = (7, 9, 11)
    field = np.asarray(scanner.b1_field(shape, 1.1, 0.2))
    assert field.shape == shape
    assert field[3, 4, 5] == pytest.approx(1.1, rel=1e-6)
    assert field.max() == pytest.approx(1.1, rel=1e-6)
    for corner in [(0, 0, 0), (6, 8, 10), (0, 8, 0), (6, 0, 10)]:
        assert field[corner] == pytest.approx(1.1 * (1 - 0.2), rel=1e-6)
    # Flat when there is no curvature.
    np.testing.assert_allclose(np.asarray(scanner.b1_field(shape, 0.9, 0.0)), 0.9, rtol=1e-7)


def test_slice_profile_identity_and_constant():
    vol = jax.random.uniform(jax.random.key(0), (6, 7, 20))
    np.testing.assert_array_equal(np.asarray(scanner.slice_profile(vol, 0.0)), np.asarray(vol))
    const = jnp.full((4, 5, 12), 3.5)
    np.testing.assert_allclose(np.asarray(scanner.slice_profile(const, 2.5)), 3.5, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("fwhm", [1.0, 2.5, 4.0])
def test_slice_profile_matches_scipy_and_preserves_mean(axis, fwhm):
    vol = np.asarray(jax.random.uniform(jax.random.key(5), (16, 17, 18)), np.float64)
    out = np.asarray(scanner.slice_profile(jnp.asarray(vol, jnp.float32), fwhm, axis=axis))
    assert out.shape == vol.shape
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    # scipy 'reflect' = (d c b a | a b c d | d c b a), NumPy's 'symmetric'.
    ref = scipy.ndimage.gaussian_filter1d(vol, sigma, axis=axis, mode="reflect",
                                          radius=int(math.ceil(3 * sigma)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # Symmetric kernel + symmetric padding preserves every line's mean along the axis.
    np.testing.assert_allclose(out.mean(axis=axis), vol.mean(axis=axis), rtol=1e-5)


@pytest.mark.parametrize("fwhm", [3.0, 6.0])
def test_slice_profile_of_a_delta_has_the_requested_fwhm(fwhm):
    n = 41
    vol = np.zeros((3, 3, n), np.float32)
    vol[:, :, n // 2] = 1.0
    out = np.asarray(scanner.slice_profile(jnp.asarray(vol), fwhm), np.float64)
    profile = out[1, 1]
    np.testing.assert_allclose(out, np.broadcast_to(profile, out.shape))   # only along Z
    assert profile.sum() == pytest.approx(1.0, rel=1e-6)
    # Exact: log of a sampled Gaussian is a parabola, whose curvature gives sigma.
    taps = np.nonzero(profile > 1e-6)[0]
    a = np.polyfit(taps - n // 2, np.log(profile[taps]), 2)[0]
    measured = 2 * math.sqrt(2 * math.log(2)) * math.sqrt(-1 / (2 * a))
    assert measured == pytest.approx(fwhm, rel=1e-3)
    # Direct: width at half maximum by linear interpolation between samples.
    half = profile.max() / 2
    right = n // 2 + np.argmax(profile[n // 2:] < half)
    x_right = right - 1 + (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    assert 2 * (x_right - n // 2) == pytest.approx(fwhm, rel=0.08)


# ---------------------------------------------------------------------------------------
# 9. Tissues
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("b0", [1.5, 3.0])
def test_tissue_ordering(b0):
    t = tissues.tissue_parameters(b0)
    assert set(t) == {"csf", "gm", "wm"}
    assert t["csf"].t1 > t["gm"].t1 > t["wm"].t1
    assert t["csf"].t2 > t["gm"].t2 > t["wm"].t2
    assert t["csf"].pd > t["gm"].pd > t["wm"].pd
    for p in t.values():
        assert 0 < p.t2star <= p.t2 < p.t1              # T2* <= T2 < T1 always
        assert 0 < p.pd <= 1
    arr = tissues.tissue_array(b0)
    assert arr.shape == (3, 4)
    np.testing.assert_array_equal(arr[:, 0], [t[name].t1 for name in tissues.TISSUES])


def test_tissue_values_against_literature():
    """1.5 T: BrainWeb (Aubert-Broche 2006); 3 T: ranges quoted in DESIGN.md Sec. 3."""
    lo = tissues.tissue_parameters(1.5)
    brainweb = {"csf": (2.569, 0.329, 0.058, 1.0), "gm": (0.833, 0.083, 0.069, 0.86),
                "wm": (0.500, 0.070, 0.061, 0.77)}
    for name, values in brainweb.items():
        np.testing.assert_allclose(tuple(lo[name]), values, rtol=1e-12)
    hi = tissues.tissue_parameters(3.0)
    assert 0.81 <= hi["wm"].t1 <= 1.084
    assert 1.35 <= hi["gm"].t1 <= 1.82
    assert 4.0 <= hi["csf"].t1 <= 4.5
    for name in tissues.TISSUES:
        assert hi[name].t1 > lo[name].t1            # T1 lengthens with B0


@pytest.mark.parametrize("b0", [9.4, 0.0])
def test_unknown_field_strength_raises(b0):
    with pytest.raises(ValueError, match=str(b0)):
        tissues.tissue_parameters(b0)


def test_bssfp_sidecar_maps_to_the_bssfp_equation(x64):
    """A TrueFISP sidecar (times in s, FlipAngle in degrees) dispatches to the bSSFP closed form."""
    from phyjax.physics.signal import bssfp
    sidecar = {"PulseSequenceType": "TrueFISP", "RepetitionTime": 0.0048, "EchoTime": 0.0024,
               "FlipAngle": 50, "MagneticFieldStrength": 3}
    p = protocol_from_sidecar(sidecar, source="trufi.json")
    assert p.sequence == "bssfp"
    assert p.flip_angle == pytest.approx(math.radians(50))
    t1, t2, m0 = 1.35, 0.11, 0.86
    e1, e2, a = math.exp(-0.0048 / t1), math.exp(-0.0048 / t2), math.radians(50)
    expected = m0 * math.sin(a) * (1 - e1) / (1 - (e1 - e2) * math.cos(a) - e1 * e2) * math.exp(
        -0.0048 / (2 * t2))
    assert float(signed_signal(p, t1, t2, 0.05, m0)) == pytest.approx(expected, rel=1e-10)
    assert float(signed_signal(p, t1, t2, 0.05, m0)) == pytest.approx(
        float(bssfp(t1, t2, m0, 0.0048, a)), rel=1e-12)
    with pytest.raises(ValueError, match="trufi.json"):
        protocol_from_sidecar({**sidecar, "EchoTime": 0.01}, source="trufi.json")


def test_sample_scanner_effects_is_deterministic_and_within_ranges():
    from phyjax.physics.scanner import sample_scanner_effects
    a = sample_scanner_effects(jax.random.key(3))
    b = sample_scanner_effects(jax.random.key(3))
    c = sample_scanner_effects(jax.random.key(4))
    assert a == b and a != c
    draws = [sample_scanner_effects(jax.random.key(i)) for i in range(200)]
    b1 = np.array([d.b1_scale for d in draws])
    gain = np.array([d.gain for d in draws])
    assert b1.min() >= 0.8 and b1.max() <= 1.2 and b1.max() - b1.min() > 0.3
    assert all(0 <= d.noise_fraction <= 0.09 and 0 <= d.bias_amplitude <= 0.4 for d in draws)
    # log-uniform gain on [0.5, 2]: median near 1.
    assert 0.8 < np.median(gain) < 1.25 and gain.min() >= 0.5 and gain.max() <= 2.0


MEMPRAGE = [f"Si_7_T1_memprage_5_e{i}.json" for i in range(1, 6)]


def test_multi_echo_mprage_sidecars_parse_and_their_echo_ratio_gives_t2star(x64):
    """Real 5-echo ME-MPRAGE sidecars: one protocol per echo; echo ratios follow exp(-dTE/T2*)."""
    folder = Path(__file__).parent / "data" / "bids_sidecars_siemens_prisma"
    protocols = []
    for name in MEMPRAGE:
        with open(folder / name) as f:
            protocols.append(protocol_from_sidecar(json.load(f), source=name))
    assert {p.sequence for p in protocols} == {"mprage"}
    assert {(p.tr, p.ti, p.flip_angle) for p in protocols} == {(2.53, 1.1, math.radians(7))}
    tes = np.array([p.te for p in protocols])
    assert np.all(np.diff(tes) > 0) and tes[0] == pytest.approx(0.00144)
    # The T2* of a voxel is recovered from the log-linear echo decay of the synthesized signals.
    t2star = 0.053
    s = np.array([float(synthesize(p, 0.81, 0.08, t2star, 0.77)) for p in protocols])
    slope = np.polyfit(tes, np.log(s), 1)[0]
    assert -1.0 / slope == pytest.approx(t2star, rel=1e-9)
