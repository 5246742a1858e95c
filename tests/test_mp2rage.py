"""Tests of ``phyjax.physics.mp2rage``: full-readout MPRAGE/MP2RAGE, UNI, T1/M0 lookup, sidecars.

The closed forms are checked against an *independent* NumPy oracle that steps the
longitudinal magnetization event by event: inversion (Mz -> -eta Mz), exact T1 recovery
to each readout pulse at its own time TI + (j - n_before) tau, the pulse (signal
Mz sin(alpha) at the k-space-centre pulse, then Mz -> Mz cos(alpha)), and recovery to
the next inversion, cycle after cycle until the steady state.  It shares no code and no
algebra (no affine maps, no geometric sums) with the module.  Protocol values come from
the real Siemens Prisma MP2RAGE sidecars in ``tests/data/bids_sidecars_siemens_prisma``
(BSD-2-Clause, see ORIGIN.md there); the number of readouts per train and the readout
TR are not in those sidecars and are stated assumptions here (see ``PRISMA_N_READOUTS``).

Float64 is switched on only inside the tests that need it (the ``x64`` fixture).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phyjax.data.sidecar import mp2rage_protocol_from_sidecars
from phyjax.physics import mp2rage, tissues
from phyjax.physics.mp2rage import (DEFAULT_READOUT_TR, MP2RAGEProtocol, MPRAGEProtocol,
                                    m0_from_inv2, mp2rage_lookup_table, mp2rage_signals,
                                    mp2rage_uni, mprage_full, robust_uni, signed_inv1, t1_from_uni,
                                    t1_m0_from_mp2rage, uni_from_siemens, uni_to_siemens)
from phyjax.physics.signal import mprage as static_mprage

SIDECARS = Path(__file__).parent / "data" / "bids_sidecars_siemens_prisma"
INV1 = SIDECARS / "Si_2_t1_mp2rage_sag_p3_32_INV1.json"
INV2 = SIDECARS / "Si_3_t1_mp2rage_sag_p3_32_INV2.json"
UNI = SIDECARS / "Si_4_t1_mp2rage_sag_p3_32_UNI_Images.json"

#: Slices per slab assumed for the 0.8 mm sagittal Prisma protocol (not in its sidecars):
#: 224 x 0.8 mm = 179 mm left-right; with the assumed 7 ms readout TR the 112 readouts
#: before the centre (784 ms) fit in TI1 = 822 ms.
PRISMA_N_READOUTS = 224

T1S = np.array([0.2, 0.5, 0.81, 1.35, 2.0, 3.0, 4.4])


# ---------------------------------------------------------------------------------------
# Fixtures and the independent oracle
# ---------------------------------------------------------------------------------------

def load(path):
    return json.loads(Path(path).read_text())


def oracle(t1, m0, tr, tis, alphas, tau, n_before, n_after, eta, tol=1e-14, max_cycles=5000):
    """Steady-state signal at each k-space centre by stepping every event of the cycle.

    Train k has pulses at TI_k + (j - n_before) tau, j = 0 .. n_before + n_after - 1; the
    centre is j = n_before.  Between events Mz relaxes exactly, M0 + (Mz - M0) e^{-dt/T1}.
    Starts from Mz = M0 and repeats cycles until Mz before the inversion changes by less
    than ``tol`` M0, then runs ten more (each shrinks the transient by >= 2 here).
    """
    t1 = np.asarray(t1, np.float64)
    m0 = np.broadcast_to(np.asarray(m0, np.float64), t1.shape)
    assert int(n_before) == n_before and int(n_after) == n_after
    events = []
    for k, (ti, a) in enumerate(zip(tis, alphas)):
        for j in range(int(n_before + n_after)):
            events.append((ti + (j - n_before) * tau, a, k if j == n_before else None))
    times = [e[0] for e in events]
    assert times[0] >= 0 and np.all(np.diff(times) > 0) and times[-1] + tau <= tr + 1e-12

    mz = m0.copy()
    signals = [None] * len(tis)
    extra = None
    for _ in range(max_cycles):
        start = mz.copy()
        mz = -eta * mz
        t = 0.0
        for time, a, k in events:
            mz = m0 + (mz - m0) * np.exp(-(time - t) / t1)
            t = time
            if k is not None:
                signals[k] = mz * np.sin(a)
            mz = mz * np.cos(a)
        mz = m0 + (mz - m0) * np.exp(-(tr - t) / t1)
        if extra is None and np.max(np.abs(mz - start)) < tol * np.max(m0):
            extra = 10
        if extra is not None:
            extra -= 1
            if extra == 0:
                return signals
    raise AssertionError("oracle did not converge")


def marques_appendix(t1, tr, tis, alphas, tau, n_before, n_after, eta):
    """Closed form of Marques et al. (2010), appendix, written out term by term for two
    trains (M0 = 1): steady state before the inversion, then Mz at each centre."""
    e1 = np.exp(-tau / t1)
    n = n_before + n_after
    td = [tis[0] - n_before * tau, tis[1] - tis[0] - n * tau, tr - tis[1] - n_after * tau]
    etd = [np.exp(-d / t1) for d in td]
    c = [np.cos(a) * e1 for a in alphas]

    def train(mz, ci, k):
        return mz * ci ** k + (1 - e1) * (1 - ci ** k) / (1 - ci)

    num = 1 - etd[0]
    for i in range(2):
        num = train(num, c[i], n)
        num = num * etd[i + 1] + (1 - etd[i + 1])
    mss = num / (1 + eta * (c[0] * c[1]) ** n * etd[0] * etd[1] * etd[2])
    mz1 = train(-eta * mss * etd[0] + (1 - etd[0]), c[0], n_before)
    mz2 = train(train(mz1, c[0], n_after) * etd[1] + (1 - etd[1]), c[1], n_before)
    return np.sin(alphas[0]) * mz1, np.sin(alphas[1]) * mz2


def prisma_protocol(**overrides):
    kw = dict(n_readouts=PRISMA_N_READOUTS)
    kw.update(overrides)
    return mp2rage_protocol_from_sidecars(INV1, INV2, **kw)


def central_difference(f, x, rel_step=1e-6):
    h = rel_step * abs(x)
    return (f(x + h) - f(x - h)) / (2.0 * h)


# ---------------------------------------------------------------------------------------
# 1. Closed forms vs the event-by-event oracle
# ---------------------------------------------------------------------------------------

MP2RAGE_CASES = [
    # Prisma sidecar timing, full k-space, eta 0.96.
    dict(tr=5.0, tis=(0.822, 2.5), flips=(4.0, 5.0), tau=7e-3, n=224, pf=1.0, eta=0.96, b1=1.0),
    # 3 T Marques-style with 6/8 slice partial Fourier and a B1 error.
    dict(tr=5.0, tis=(0.7, 2.5), flips=(4.0, 5.0), tau=7.2e-3, n=176, pf=0.75, eta=0.96, b1=0.8),
    # 7 T demo timing of MP2RAGE-related-scripts, strong flips to stress the train terms.
    dict(tr=6.0, tis=(0.8, 2.7), flips=(7.0, 12.0), tau=6.7e-3, n=144, pf=0.75, eta=1.0, b1=1.2),
    # Short train, large flips, perfect inversion.
    dict(tr=3.0, tis=(0.4, 1.6), flips=(20.0, 30.0), tau=10e-3, n=40, pf=1.0, eta=0.9, b1=1.0),
]


@pytest.mark.parametrize("case", MP2RAGE_CASES)
def test_mp2rage_matches_event_oracle(x64, case):
    p = MP2RAGEProtocol.from_degrees(case["tr"], *case["tis"], *case["flips"], case["tau"],
                                     case["n"], case["pf"], case["eta"], te=0.0)
    n_before, n_after = case["n"] * (case["pf"] - 0.5), case["n"] / 2
    alphas = [case["b1"] * math.radians(f) for f in case["flips"]]
    m0 = np.linspace(0.6, 1.3, T1S.size)
    want = oracle(T1S, m0, case["tr"], case["tis"], alphas, case["tau"], n_before, n_after,
                  case["eta"])
    got = mp2rage_signals(jnp.asarray(T1S), jnp.asarray(m0), p, case["b1"])
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("case", MP2RAGE_CASES)
def test_mp2rage_matches_the_published_closed_form(x64, case):
    """Same cases against the appendix formula of Marques et al. (2010) (non-integer
    pulse counts allowed there, as in MPRAGEfunc: an odd n gives n/2 on each side)."""
    for n in (case["n"], case["n"] - 1):
        p = MP2RAGEProtocol.from_degrees(case["tr"], *case["tis"], *case["flips"], case["tau"],
                                         n, case["pf"], case["eta"])
        alphas = [case["b1"] * math.radians(f) for f in case["flips"]]
        want = marques_appendix(T1S, case["tr"], case["tis"], alphas, case["tau"],
                                n * (case["pf"] - 0.5), n / 2, case["eta"])
        got = mp2rage_signals(jnp.asarray(T1S), 1.0, p, case["b1"])
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("n,pf,flip_deg,eta", [(176, 1.0, 9.0, 0.96), (176, 0.75, 9.0, 1.0),
                                               (60, 1.0, 15.0, 0.9)])
def test_mprage_full_matches_event_oracle(x64, n, pf, flip_deg, eta):
    """Timing of the Prisma product MPRAGE sidecar (Si_6: TR 2.25 s, TI 0.925 s, 9 deg)."""
    tau = 7.1e-3
    p = MPRAGEProtocol(tr=2.25, ti=0.925, flip_angle=math.radians(flip_deg), readout_tr=tau,
                       n_readouts=n, partial_fourier=pf, inversion_efficiency=eta).validate()
    (want,) = oracle(T1S, 1.0, 2.25, (0.925,), (math.radians(flip_deg),), tau, n * (pf - 0.5),
                     n / 2, eta)
    got = mprage_full(jnp.asarray(T1S), 1.0, p)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 64, 176])
def test_mprage_full_tends_to_static_form_for_tiny_flip(x64, n):
    """alpha -> 0, eta = 1: the readouts do not disturb Mz, S / sin(alpha) -> the static
    equation M0 (1 - 2 e^{-TI/T1} / (1 + e^{-TR/T1})) (signal.mprage with TE = 0)."""
    alpha = 1e-6
    p = MPRAGEProtocol(tr=2.3, ti=0.9, flip_angle=alpha, readout_tr=5e-3, n_readouts=n,
                       inversion_efficiency=1.0).validate()
    t1 = jnp.asarray(T1S)
    full = mprage_full(t1, 0.9, p) / math.sin(alpha)
    ref = static_mprage(t1, jnp.inf, 0.9, 2.3, 0.9, 0.0)
    np.testing.assert_allclose(np.asarray(full), np.asarray(ref), rtol=1e-9, atol=1e-12)


def test_mp2rage_with_silent_second_train_is_mprage(x64):
    """flip2 = 0: the second train only relaxes, so INV1 is the single-train MPRAGE and
    INV2 vanishes."""
    p = MP2RAGEProtocol.from_degrees(5.0, 0.8, 2.5, 6.0, 0.0, 7e-3, 160, 0.75, 0.96)
    q = MPRAGEProtocol(tr=5.0, ti=0.8, flip_angle=math.radians(6.0), readout_tr=7e-3,
                       n_readouts=160, partial_fourier=0.75, inversion_efficiency=0.96)
    inv1, inv2 = mp2rage_signals(jnp.asarray(T1S), 1.0, p)
    np.testing.assert_allclose(np.asarray(inv1), np.asarray(mprage_full(jnp.asarray(T1S), 1.0, q)),
                               rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(inv2), 0.0)


def test_special_values_and_scalings(x64):
    p = prisma_protocol()
    t1 = jnp.asarray(T1S)
    inv1, inv2 = mp2rage_signals(t1, 1.0, p)
    # Linear in M0.
    a, b = mp2rage_signals(t1, 2.5, p)
    np.testing.assert_allclose(np.asarray(a), 2.5 * np.asarray(inv1), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(b), 2.5 * np.asarray(inv2), rtol=1e-13)
    # b1 scales both flip angles.
    scaled = p.replace(flip1=1.1 * p.flip1, flip2=1.1 * p.flip2)
    for x, y in zip(mp2rage_signals(t1, 1.0, p, b1=1.1), mp2rage_signals(t1, 1.0, scaled)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12)
    # T2* only multiplies by exp(-TE/T2*), and cancels in UNI.
    d1, d2 = mp2rage_signals(t1, 1.0, p, t2star=0.05)
    np.testing.assert_allclose(np.asarray(d2), np.asarray(inv2) * math.exp(-0.0031 / 0.05),
                               rtol=1e-13)
    np.testing.assert_allclose(np.asarray(mp2rage_uni(d1, d2)), np.asarray(mp2rage_uni(inv1, inv2)),
                               rtol=1e-12)
    # Flip angle 0 gives no signal.
    zero = mp2rage_signals(t1, 1.0, p, b1=0.0)
    np.testing.assert_array_equal(np.asarray(zero[0]), 0.0)
    np.testing.assert_array_equal(np.asarray(zero[1]), 0.0)


def test_imperfect_inversion_reduces_the_inversion(x64):
    """INV1 of long-T1 tissue is negative (still inverted at TI1); a smaller eta makes it
    less negative, and eta = 0 (no inversion) leaves INV1 positive for every T1."""
    t1 = jnp.asarray([2.0, 3.0, 4.4])
    inv1 = {eta: np.asarray(mp2rage_signals(t1, 1.0, prisma_protocol(inversion_efficiency=eta))[0])
            for eta in (1.0, 0.96, 0.8, 0.0)}
    assert np.all(inv1[1.0] < 0)
    assert np.all(inv1[1.0] < inv1[0.96]) and np.all(inv1[0.96] < inv1[0.8])
    grid = mp2rage.default_t1_grid()
    no_inversion = prisma_protocol(inversion_efficiency=0.0)
    assert np.all(np.asarray(mp2rage_signals(grid, 1.0, no_inversion)[0]) > 0)


# ---------------------------------------------------------------------------------------
# 2. UNI
# ---------------------------------------------------------------------------------------

def test_uni_bounds_and_invariances(x64):
    rng = np.random.default_rng(0)
    a = rng.normal(size=1000) + 1j * rng.normal(size=1000)
    b = rng.normal(size=1000) + 1j * rng.normal(size=1000)
    u = np.asarray(mp2rage_uni(jnp.asarray(a), jnp.asarray(b)))
    assert np.all(u >= -0.5) and np.all(u <= 0.5)
    # Equality cases: INV1 = +-INV2.
    np.testing.assert_allclose(np.asarray(mp2rage_uni(jnp.asarray(b), jnp.asarray(b))), 0.5)
    np.testing.assert_allclose(np.asarray(mp2rage_uni(-jnp.asarray(b), jnp.asarray(b))), -0.5)
    # A common complex gain (receive field, M0, T2*) cancels.
    g = 0.3 * np.exp(1j * 1.1)
    np.testing.assert_allclose(np.asarray(mp2rage_uni(jnp.asarray(g * a), jnp.asarray(g * b))), u,
                               rtol=1e-12, atol=1e-15)
    # Over the simulated T1 grid the signed images give UNI within the bounds too.
    p = prisma_protocol()
    s = mp2rage_uni(*mp2rage_signals(mp2rage.default_t1_grid(), 1.0, p))
    assert np.all(np.abs(np.asarray(s)) <= 0.5)


def test_robust_uni(x64):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(size=500)
    np.testing.assert_allclose(np.asarray(robust_uni(a, b, 0.0)), np.asarray(mp2rage_uni(a, b)),
                               rtol=1e-14)
    for beta in (1e-3, 0.1, 10.0):
        r = np.asarray(robust_uni(a, b, beta))
        assert np.all(r >= -0.5) and np.all(r <= 0.5)
    # Large beta: noise-only (background) voxels go to -1/2; tissue with signal >> sqrt(beta)
    # keeps its UNI.
    np.testing.assert_allclose(np.asarray(robust_uni(a, b, 1e8)), -0.5, atol=1e-7)
    tissue = np.asarray(robust_uni(300.0 * 0.02, 300.0 * 0.06, 1e-2))
    assert tissue == pytest.approx(float(mp2rage_uni(0.02, 0.06)), abs=1e-4)


def test_siemens_integer_conversions(x64):
    assert float(uni_to_siemens(-0.5)) == 0.0 and float(uni_to_siemens(0.5)) == 4095.0
    assert float(uni_from_siemens(0.0)) == -0.5 and float(uni_from_siemens(4095.0)) == 0.5
    u = jnp.linspace(-0.5, 0.5, 101)
    np.testing.assert_allclose(np.asarray(uni_from_siemens(uni_to_siemens(u))), np.asarray(u),
                               atol=1e-15)
    ints = jnp.arange(0, 4096, 7.0)
    np.testing.assert_allclose(np.asarray(uni_to_siemens(uni_from_siemens(ints))), np.asarray(ints),
                               atol=1e-9)
    # Same convention as MP2RAGE-related-scripts: -0.5 + x / 4095.
    assert float(uni_from_siemens(3000.0)) == pytest.approx(-0.5 + 3000 / 4095, rel=1e-15)


def test_signed_inv1_restores_polarity(x64):
    p = prisma_protocol()
    inv1, inv2 = mp2rage_signals(jnp.asarray(T1S), 1.0, p)
    u = mp2rage_uni(inv1, inv2)
    np.testing.assert_allclose(np.asarray(signed_inv1(u, jnp.abs(inv1))), np.asarray(inv1),
                               rtol=1e-15)
    assert np.any(np.asarray(inv1) < 0)          # the test exercises both signs


def test_scanner_integers_are_refused_where_uni_is_expected(x64):
    # Siemens stores UNI as 0-4095: given unconverted, every sign would read +1 and every T1
    # clamp to the lookup's end.  Concrete values outside [-1/2, 1/2] are refused.
    p = prisma_protocol()
    inv1, inv2 = mp2rage_signals(jnp.asarray(T1S), 1.0, p)
    stored = jnp.round(uni_to_siemens(mp2rage_uni(inv1, inv2)))
    with pytest.raises(ValueError, match="uni_from_siemens"):
        signed_inv1(stored, jnp.abs(inv1))
    with pytest.raises(ValueError, match="uni_from_siemens"):
        t1_from_uni(stored, p)
    t1 = np.asarray(t1_from_uni(uni_from_siemens(stored), p))       # converted: fine
    np.testing.assert_allclose(t1[np.asarray(T1S) >= 0.25], np.asarray(T1S)[np.asarray(T1S) >= 0.25],
                               rtol=0.01)
    # traced values are not checked (jit): the same call compiles
    assert np.isfinite(np.asarray(jax.jit(lambda u: t1_from_uni(u, p))(stored / 4095.0 - 0.5))).all()


# ---------------------------------------------------------------------------------------
# 3. UNI -> T1, M0
# ---------------------------------------------------------------------------------------

def test_lookup_table_is_the_monotonic_branch(x64):
    p = prisma_protocol()
    u, t1 = (np.asarray(x) for x in mp2rage_lookup_table(p))
    assert u.shape == t1.shape == (mp2rage.T1_GRID_SIZE,)
    assert np.all(np.diff(u) >= 0)                 # ready for interp
    assert np.all(np.diff(t1) <= 0)                 # UNI falls as T1 grows
    # The branch spans the brain's T1 values at 3 T, and its ends are the extremes of UNI.
    assert t1.min() < 0.2 and t1.max() == pytest.approx(5.0)
    full = np.asarray(mp2rage_uni(*mp2rage_signals(mp2rage.default_t1_grid(), 1.0, p)))
    assert u.max() == full.max() and u.min() == full.min()


@pytest.mark.parametrize("b1", [1.0, 0.85])
def test_t1_round_trip_for_the_prisma_protocol(x64, b1):
    """T1 -> UNI -> T1 within 1 % over the monotonic range (0.15-4.9 s) of the real protocol."""
    p = prisma_protocol()
    assert (p.tr_mp2rage, p.ti1, p.ti2) == (5.0, 0.822, 2.5)
    t1 = jnp.linspace(0.15, 4.9, 300)
    u = mp2rage_uni(*mp2rage_signals(t1, 1.0, p, b1))
    est = np.asarray(t1_from_uni(u, p, b1))
    rel = np.abs(est / np.asarray(t1) - 1)
    assert rel.max() < 0.01
    assert np.median(rel) < 1e-3
    # Through the scanner's integer storage as well, for brain T1 (>= 0.25 s): below that
    # UNI flattens towards its maximum and one integer step (1/4095) exceeds 1 % of T1.
    stored = jnp.round(uni_to_siemens(u))
    est = np.asarray(t1_from_uni(uni_from_siemens(stored), p, b1))
    brain = np.asarray(t1) >= 0.25
    assert np.abs(est / np.asarray(t1) - 1)[brain].max() < 0.01
    # UNI outside the table's range is clamped to the branch ends.
    ends = np.asarray(t1_from_uni(jnp.asarray([0.5, -0.5]), p, b1))
    table_t1 = np.asarray(mp2rage_lookup_table(p, b1)[1])
    np.testing.assert_allclose(ends, [table_t1.min(), table_t1.max()])


def test_m0_estimate_recovers_m0(x64):
    p = prisma_protocol()
    rng = np.random.default_rng(3)
    t1 = jnp.asarray(rng.uniform(0.3, 4.5, size=64))
    m0 = jnp.asarray(rng.uniform(0.5, 1.5, size=64))
    b1 = jnp.asarray(rng.uniform(0.8, 1.2, size=64))
    inv1, inv2 = mp2rage_signals(t1, m0, p, b1)
    # Exact T1: exact M0.
    np.testing.assert_allclose(np.asarray(m0_from_inv2(inv2, t1, p, b1)), np.asarray(m0),
                               rtol=1e-12)
    # T1 from the lookup (one table per voxel's B1, by vmap), then M0.
    t1_est, m0_est = jax.vmap(lambda a, b, c: t1_m0_from_mp2rage(a, b, p, c))(inv1, inv2, b1)
    np.testing.assert_allclose(np.asarray(t1_est), np.asarray(t1), rtol=1e-2)
    np.testing.assert_allclose(np.asarray(m0_est), np.asarray(m0), rtol=1e-3)
    # Magnitude INV2 gives the same M0.
    np.testing.assert_allclose(np.asarray(m0_from_inv2(jnp.abs(inv2), t1, p, b1)), np.asarray(m0),
                               rtol=1e-12)


def test_uni_gradient_matches_finite_differences(x64):
    p = prisma_protocol()

    def uni_of_t1(t1):
        return mp2rage_uni(*mp2rage_signals(t1, 1.0, p))

    grad = jax.grad(uni_of_t1)
    for t1 in (0.5, 0.81, 1.35, 3.0, 4.4):
        fd = central_difference(lambda x: float(uni_of_t1(x)), t1)
        assert float(grad(t1)) == pytest.approx(fd, rel=1e-6)
        assert float(grad(t1)) < 0
    # Gradient w.r.t. a protocol field (TI1), as a physics loss needs.
    def uni_of_ti1(ti1):
        return mp2rage_uni(*mp2rage_signals(1.35, 1.0, p.replace(ti1=ti1)))
    fd = central_difference(lambda x: float(uni_of_ti1(x)), 0.822)
    assert float(jax.grad(uni_of_ti1)(0.822)) == pytest.approx(fd, rel=1e-6)
    # d T1 / d UNI of the lookup (piecewise-linear) ~ 1 / (d UNI / d T1).
    for t1 in (0.81, 1.35, 3.0):
        u = uni_of_t1(t1)
        slope = float(jax.grad(lambda x: t1_from_uni(x, p))(u))
        assert slope == pytest.approx(1.0 / float(grad(t1)), rel=2e-2)


def test_float32_default_round_trip():
    """Without x64 (the library default) the forward model and lookup stay accurate."""
    p = prisma_protocol()
    t1 = jnp.linspace(0.25, 4.5, 100)
    inv1, inv2 = mp2rage_signals(t1, 1.0, p)
    assert inv1.dtype == jnp.float32
    est = t1_from_uni(mp2rage_uni(inv1, inv2), p)
    assert est.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(est / t1 - 1))) < 1e-3


def test_jit_and_vmap_over_protocols(x64):
    p1 = prisma_protocol()
    p2 = p1.replace(ti1=0.7, flip2=math.radians(6.0))
    stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), p1, p2)
    t1 = jnp.asarray(T1S)
    f = jax.jit(lambda p: mp2rage_uni(*mp2rage_signals(t1, 1.0, p)))
    batched = jax.vmap(f)(stacked)
    assert batched.shape == (2, T1S.size)
    np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(f(p1)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(f(p2)), rtol=1e-12)
    est = jax.jit(lambda u: t1_from_uni(u, p1))(f(p1)[1:6])
    np.testing.assert_allclose(np.asarray(est), T1S[1:6], rtol=1e-2)


# ---------------------------------------------------------------------------------------
# 4. Literature sanity
# ---------------------------------------------------------------------------------------

def test_uni_tissue_ordering_3t(x64):
    """UNI is bright for WM, intermediate for GM, dark for CSF (Marques et al. 2010, Fig. 4);
    WM > 0 > CSF because INV1 of CSF is still inverted at TI1."""
    t = tissues.tissue_parameters(3.0)
    p = prisma_protocol()
    u = {name: float(mp2rage_uni(*mp2rage_signals(t[name].t1, t[name].pd, p)))
         for name in tissues.TISSUES}
    assert u["wm"] > u["gm"] > u["csf"]
    assert u["wm"] > 0 > u["csf"]
    for name in tissues.TISSUES:
        assert float(t1_from_uni(u[name], p)) == pytest.approx(t[name].t1, rel=1e-2)


def test_uni_tissue_ordering_7t(x64):
    """7 T protocol of the MP2RAGE-related-scripts demo (TR 6 s, TI 0.8/2.7 s, 4/5 deg,
    6.7 ms readout TR, 6/8 slice partial Fourier) with the 7 T tissue table."""
    p = MP2RAGEProtocol.from_degrees(6.0, 0.8, 2.7, 4.0, 5.0, 6.7e-3, 144, 0.75, 0.96,
                                     field_strength=7.0)
    t = tissues.tissue_parameters(p.field_strength)
    u = {name: float(mp2rage_uni(*mp2rage_signals(t[name].t1, t[name].pd, p)))
         for name in tissues.TISSUES}
    assert u["wm"] > u["gm"] > u["csf"]
    for name in ("wm", "gm"):
        assert float(t1_from_uni(u[name], p)) == pytest.approx(t[name].t1, rel=1e-2)
    # CSF (4.4 s) lies beyond this protocol's monotonic branch (its UNI minimum is near
    # 3.7 s), so its T1 is not recoverable: the lookup returns the branch end.
    branch_t1 = np.asarray(mp2rage_lookup_table(p)[1])
    assert 3.0 < branch_t1.max() < t["csf"].t1
    assert float(t1_from_uni(u["csf"], p)) <= branch_t1.max()


def test_7t_tissue_table():
    """Marques 2010 (WM 1.15 s, GM 1.92 s), Rooney 2007 (CSF 4.4 s), Cox & Gowland 2010
    (T2 47 ms), Peters 2007 (T2* GM 33.2 ms, WM 26.8 ms)."""
    t = tissues.tissue_parameters(7.0)
    assert (t["wm"].t1, t["gm"].t1, t["csf"].t1) == (1.15, 1.92, 4.4)
    assert (t["gm"].t2star, t["wm"].t2star) == (0.0332, 0.0268)
    assert t["gm"].t2 == t["wm"].t2 == 0.047
    three = tissues.tissue_parameters(3.0)
    for name in tissues.TISSUES:
        p = t[name]
        assert 0 < p.t2star <= p.t2 < p.t1
        assert p.t1 > three[name].t1                       # T1 lengthens with B0
        assert p.t2star <= three[name].t2star              # T2* shortens with B0
        assert p.pd == three[name].pd
    assert tissues.tissue_array(7.0).shape == (3, 4)
    assert 7.0 in tissues.FIELD_STRENGTHS


# ---------------------------------------------------------------------------------------
# 5. Sidecars
# ---------------------------------------------------------------------------------------

def test_protocol_from_the_real_prisma_sidecars(x64):
    p = mp2rage_protocol_from_sidecars(load(INV1), load(INV2), n_readouts=224)
    assert isinstance(p, MP2RAGEProtocol)
    assert p.tr_mp2rage == 5.0 and (p.ti1, p.ti2) == (0.822, 2.5)
    assert p.flip1 == pytest.approx(math.radians(4.0), rel=1e-15)
    assert p.flip2 == pytest.approx(math.radians(5.0), rel=1e-15)
    assert p.te == 0.0031 and p.field_strength == 3.0
    assert p.readout_tr == DEFAULT_READOUT_TR == 7.0e-3          # the documented assumption
    assert p.n_readouts == 224 and p.partial_fourier == 1.0
    assert p.inversion_efficiency == 0.96
    # Paths work too; explicit values win.
    q = mp2rage_protocol_from_sidecars(INV1, INV2, n_readouts=176, readout_tr=6.5e-3,
                                       partial_fourier=0.75, inversion_efficiency=0.9)
    assert (q.n_readouts, q.readout_tr, q.partial_fourier, q.inversion_efficiency) == (
        176, 6.5e-3, 0.75, 0.9)
    # BIDS RepetitionTimeExcitation is used when both sidecars have it.
    a, b = load(INV1), load(INV2)
    a["RepetitionTimeExcitation"] = b["RepetitionTimeExcitation"] = 0.0068
    assert mp2rage_protocol_from_sidecars(a, b, n_readouts=224).readout_tr == 0.0068
    # ... and RepetitionTimePreparation over RepetitionTime (GE/Philips style).
    a, b = load(INV1), load(INV2)
    for f in (a, b):
        f["RepetitionTime"], f["RepetitionTimePreparation"] = 0.0068, 5.0
    assert mp2rage_protocol_from_sidecars(a, b, n_readouts=224).tr_mp2rage == 5.0


@pytest.mark.parametrize("field", ["InversionTime", "FlipAngle", "RepetitionTime",
                                   "MagneticFieldStrength"])
@pytest.mark.parametrize("which", [0, 1])
def test_missing_sidecar_field_names_file_and_field(field, which):
    sidecars = [load(INV1), load(INV2)]
    del sidecars[which][field]
    names = ("sub-01_inv-1_MP2RAGE.json", "sub-01_inv-2_MP2RAGE.json")
    with pytest.raises(ValueError, match=rf"{names[which]}.*{field}"):
        mp2rage_protocol_from_sidecars(*sidecars, source=names, n_readouts=224)


def test_sidecar_errors():
    # The UNI sidecar (real file) has no InversionTime: named with its file.
    with pytest.raises(ValueError, match=r"Si_4_.*_UNI_Images\.json.*InversionTime"):
        mp2rage_protocol_from_sidecars(UNI, INV2, n_readouts=224)
    # Swapped files.
    with pytest.raises(ValueError, match="swapped"):
        mp2rage_protocol_from_sidecars(INV2, INV1, n_readouts=224)
    # n_readouts is not in the sidecar.
    with pytest.raises(ValueError, match=r"Si_2.*n_readouts"):
        mp2rage_protocol_from_sidecars(INV1, INV2)
    # Trains that do not fit: 300 readouts x 7 ms / 2 = 1.05 s > TI1 = 0.822 s.
    with pytest.raises(ValueError, match="TD1"):
        mp2rage_protocol_from_sidecars(INV1, INV2, n_readouts=300)
    # A readout TR in RepetitionTime is not an MP2RAGE TR.
    a, b = load(INV1), load(INV2)
    a["RepetitionTime"] = 0.007
    with pytest.raises(ValueError, match="RepetitionTime"):
        mp2rage_protocol_from_sidecars(a, b, n_readouts=224)
    # Disagreeing TR, non-numeric, negative.
    a, b = load(INV1), load(INV2)
    b["RepetitionTime"] = 6.0
    with pytest.raises(ValueError, match="differs"):
        mp2rage_protocol_from_sidecars(a, b, n_readouts=224)
    a, b = load(INV1), load(INV2)
    a["FlipAngle"] = "four"
    with pytest.raises(ValueError, match="FlipAngle"):
        mp2rage_protocol_from_sidecars(a, b, n_readouts=224)
    a["FlipAngle"] = -4
    with pytest.raises(ValueError, match="FlipAngle"):
        mp2rage_protocol_from_sidecars(a, b, n_readouts=224)
    with pytest.raises(ValueError, match="missing.json"):
        mp2rage_protocol_from_sidecars(SIDECARS / "missing.json", INV2, n_readouts=224)


def test_protocol_validation():
    with pytest.raises(ValueError, match="partial_fourier"):
        MP2RAGEProtocol.from_degrees(5.0, 0.7, 2.5, 4, 5, 7e-3, 160, partial_fourier=0.3)
    with pytest.raises(ValueError, match="inversion_efficiency"):
        MP2RAGEProtocol.from_degrees(5.0, 0.7, 2.5, 4, 5, 7e-3, 160, inversion_efficiency=1.2)
    with pytest.raises(ValueError, match="TD2"):              # TI2 too close to TI1
        MP2RAGEProtocol.from_degrees(5.0, 0.7, 1.5, 4, 5, 7e-3, 160)
    with pytest.raises(ValueError, match="TD3"):              # train 2 runs past TR
        MP2RAGEProtocol.from_degrees(5.0, 0.7, 4.8, 4, 5, 7e-3, 160)
    with pytest.raises(ValueError, match="n_readouts"):
        MP2RAGEProtocol.from_degrees(5.0, 0.7, 2.5, 4, 5, 7e-3, 0)
    with pytest.raises(ValueError, match="TD2"):
        MPRAGEProtocol(tr=2.3, ti=2.0, flip_angle=0.15, readout_tr=7e-3, n_readouts=176).validate()
    # Traced protocols are not checked (no error under jit).
    p = MP2RAGEProtocol.from_degrees(5.0, 0.7, 2.5, 4, 5, 7e-3, 160)
    jax.jit(lambda q: q.validate().ti1)(p)
