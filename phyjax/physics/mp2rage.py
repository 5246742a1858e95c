"""MPRAGE and MP2RAGE with their gradient-echo readout trains; UNI, T1 and M0 from MP2RAGE.

The static MPRAGE equation (:func:`phyjax.physics.signal.mprage`) ignores the
readout.  Here every readout pulse is kept: after an inversion of efficiency
eta (Mz -> -eta Mz) the magnetization recovers freely, then a train of RF
pulses of flip ``b1 * alpha`` spaced by the readout TR (echo spacing) ``tau``
samples it; each pulse leaves ``Mz cos(alpha)`` and each interval relaxes Mz
towards M0.  The k-space centre is sampled ``n_before`` pulses into each train
and the train goes on for ``n_after`` pulses (centre included).  MP2RAGE has two
trains per inversion; the cycle repeats every TR (MP2RAGE TR), and the signal is
that of the periodic steady state.  Source: Deichmann et al., NeuroImage
12:112 (2000); Marques et al., NeuroImage 49:1271 (2010), appendix, and their
MATLAB ``MPRAGEfunc`` (github.com/JosePMarques/MP2RAGE-related-scripts), whose
conventions are followed:

* TI is the time from the inversion to the excitation that samples the k-space
  centre (the ``n_before + 1``-th pulse of its train);
* ``n_readouts`` is the number of encoding steps of the full k-space along the
  train (Siemens "slices per slab"; the inner loop of Siemens ``tfl``); with
  partial Fourier ``pf`` along that axis, ``n_before = n_readouts (pf - 1/2)``
  and ``n_after = n_readouts / 2``, so each train has ``n_readouts * pf`` pulses.
  Like ``MPRAGEfunc`` the closed form accepts non-integer counts (an odd
  ``n_readouts`` with ``pf = 1`` gives half a pulse on each side), a 0.5 ``tau``
  shift of the centre that is far below the model's accuracy.

All functions are single-voxel and broadcast (or ``jax.vmap``) over maps; SI
units throughout (s, rad, T); ``m0`` in arbitrary units, ``b1`` a dimensionless
flip-angle scale.  The signals are the real, signed transverse magnetization at
the echo (phase 0 or pi); :func:`mp2rage_uni` also accepts complex images.

Closed form of one train (``Mz`` just before its first pulse, ``c = cos(alpha)
E1``, ``E1 = exp(-tau/T1)``)::

    Mz_k = Mz_0 c^k + M0 (1 - E1) (1 - c^k) / (1 - c)     (Mz before pulse k + 1)

Every segment of the cycle is thus an affine map ``Mz -> a Mz + b``; the steady
state is the fixed point ``B / (1 - A)`` of their composition ``(A, B)`` over
one TR, which is the ``MZsteadystate`` expression of Marques et al. (2010).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct

from phyjax.physics import units
from phyjax.physics.tracing import concrete

#: Inversion efficiency of the adiabatic inversion measured by Marques et al. (2010),
#: and the default of ``MPRAGEfunc``.
DEFAULT_INVERSION_EFFICIENCY = 0.96

#: Readout TR (echo spacing) assumed when a sidecar does not give it (s).  This is an
#: ASSUMPTION for the Siemens Prisma ``t1_mp2rage_sag_p3_32`` protocol of
#: ``tests/data/bids_sidecars_siemens_prisma``: dcm2niix writes no echo spacing for
#: ``tfl`` sequences (no ``RepetitionTimeExcitation``).  Estimate: TE 3.1 ms to the echo
#: centre, plus the second half of the 1/PixelBandwidth = 1/(240 Hz) = 4.2 ms readout
#: window, plus ~1.5-2 ms of spoiler/rewinder gradients gives 6.8-7.3 ms; published
#: MP2RAGE readout TRs are 6.4-9 ms (e.g. 6.7 ms in the MP2RAGE-related-scripts demo).
DEFAULT_READOUT_TR = 7.0e-3

#: Default T1 grid of the UNI -> T1 lookup table: 1000 log-spaced values, 0.05-5 s.
T1_GRID_RANGE = (0.05, 5.0)
T1_GRID_SIZE = 1000

#: Siemens stores UNI as integers 0..4095: round(4095 (UNI + 1/2)).
SIEMENS_UNI_SCALE = 4095.0


# ---------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------

def _check_common(name, values: Mapping[str, Any], delays: Mapping[str, Any], n_readouts):
    """Raise ValueError for non-physical concrete protocol values (see ``validate``)."""
    if int(n_readouts) != n_readouts or n_readouts < 1:
        raise ValueError(f"{name}: n_readouts must be a positive integer, got {n_readouts!r}.")
    if concrete(*values.values(), *delays.values()) is None:
        return
    v = {k: np.asarray(x, np.float64) for k, x in values.items()}
    for key, x in v.items():
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: {key} must be finite, got {x}.")
    for key in ("tr", "tr_mp2rage", "ti", "ti1", "ti2", "readout_tr"):
        if key in v and np.any(v[key] <= 0):
            raise ValueError(f"{name}: {key} must be > 0 s, got {v[key]}.")
    for key in ("flip_angle", "flip1", "flip2"):
        # a readout train multiplies Mz by cos(flip) per pulse (ln cos in _train): 90 degrees
        # or more is no MPRAGE/MP2RAGE protocol (they use 4-15 degrees) and gives NaN
        if key in v and np.any((v[key] < 0) | (v[key] >= np.pi / 2)):
            raise ValueError(f"{name}: {key} must be in [0, pi/2) rad (a readout-train flip "
                             f"angle, below 90 degrees), got {v[key]}.")
    if np.any((v["partial_fourier"] < 0.5) | (v["partial_fourier"] > 1.0)):
        raise ValueError(f"{name}: partial_fourier must be in [0.5, 1], "
                         f"got {v['partial_fourier']}.")
    if np.any((v["inversion_efficiency"] < 0) | (v["inversion_efficiency"] > 1)):
        raise ValueError(f"{name}: inversion_efficiency must be in [0, 1], got "
                         f"{v['inversion_efficiency']}.")
    if np.any(v["te"] < 0):
        raise ValueError(f"{name}: te must be >= 0, got {v['te']}.")
    for key, d in delays.items():
        d = np.asarray(d, np.float64)
        if np.any(d < -1e-12):
            raise ValueError(
                f"{name}: the readout trains do not fit in the timing ({key} = {d} s < 0); "
                f"check TI, TR, readout_tr and n_readouts * partial_fourier.")


@struct.dataclass
class MPRAGEProtocol:
    """Single-inversion MPRAGE with its readout train (parameter pytree).

    Attributes:
      tr: time between two inversions (s) (BIDS ``RepetitionTimePreparation``).
      ti: inversion -> k-space-centre excitation (s).
      flip_angle: nominal readout flip angle (rad).
      readout_tr: time between readout pulses, the echo spacing (s)
        (BIDS ``RepetitionTimeExcitation``).
      n_readouts: encoding steps of the full k-space along the train (static int).
      partial_fourier: partial-Fourier fraction along the train, in [0.5, 1].
      inversion_efficiency: eta, inversion maps Mz -> -eta Mz.
      te: echo time (s), for the optional exp(-TE/T2*) factor.
      field_strength: B0 (T).
    """

    tr: Any
    ti: Any
    flip_angle: Any
    readout_tr: Any
    n_readouts: int = struct.field(pytree_node=False)
    partial_fourier: Any = 1.0
    inversion_efficiency: Any = DEFAULT_INVERSION_EFFICIENCY
    te: Any = 0.0
    field_strength: Any = 3.0

    def delays(self):
        """Free-recovery intervals ``(TD1, TD2)`` (s): inversion -> first pulse, last
        interval of the train -> next inversion."""
        n_before, n_after = _split(self.n_readouts, self.partial_fourier)
        return (self.ti - n_before * self.readout_tr,
                self.tr - self.ti - n_after * self.readout_tr)

    def validate(self) -> "MPRAGEProtocol":
        """Return ``self``; raise ValueError if concrete values are non-physical
        (non-positive times, flip outside [0, pi/2), pf outside [0.5, 1], eta outside
        [0, 1]) or the train does not fit (a negative delay).  Traced values are not
        checked."""
        values = dict(tr=self.tr, ti=self.ti, flip_angle=self.flip_angle,
                      readout_tr=self.readout_tr, partial_fourier=self.partial_fourier,
                      inversion_efficiency=self.inversion_efficiency, te=self.te)
        td1, td2 = self.delays()
        _check_common("MPRAGEProtocol", values, {"TD1": td1, "TD2": td2}, self.n_readouts)
        return self


@struct.dataclass
class MP2RAGEProtocol:
    """MP2RAGE: one inversion, two readout trains per TR (parameter pytree).

    Attributes:
      tr_mp2rage: time between two inversions (s) (Siemens ``RepetitionTime``).
      ti1, ti2: inversion -> k-space-centre excitation of train 1 and 2 (s).
      flip1, flip2: nominal flip angles of train 1 and 2 (rad).
      readout_tr: time between readout pulses, the echo spacing (s).
      n_readouts: encoding steps of the full k-space along each train (static int;
        Siemens "slices per slab").
      partial_fourier: partial-Fourier fraction along the train, in [0.5, 1].
      inversion_efficiency: eta, inversion maps Mz -> -eta Mz.
      te: echo time (s), for the optional exp(-TE/T2*) factor.
      field_strength: B0 (T).
    """

    tr_mp2rage: Any
    ti1: Any
    ti2: Any
    flip1: Any
    flip2: Any
    readout_tr: Any
    n_readouts: int = struct.field(pytree_node=False)
    partial_fourier: Any = 1.0
    inversion_efficiency: Any = DEFAULT_INVERSION_EFFICIENCY
    te: Any = 0.0
    field_strength: Any = 3.0

    @classmethod
    def from_degrees(cls, tr_mp2rage: float, ti1: float, ti2: float, flip1_deg: float,
                     flip2_deg: float, readout_tr: float, n_readouts: int,
                     partial_fourier: float = 1.0,
                     inversion_efficiency: float = DEFAULT_INVERSION_EFFICIENCY,
                     te: float = 0.0, field_strength: float = 3.0) -> "MP2RAGEProtocol":
        """Config-style constructor (times in s, flip angles in degrees); validated."""
        return cls(tr_mp2rage=float(tr_mp2rage), ti1=float(ti1), ti2=float(ti2),
                   flip1=float(units.deg2rad(flip1_deg)), flip2=float(units.deg2rad(flip2_deg)),
                   readout_tr=float(readout_tr), n_readouts=int(n_readouts),
                   partial_fourier=float(partial_fourier),
                   inversion_efficiency=float(inversion_efficiency), te=float(te),
                   field_strength=float(field_strength)).validate()

    def delays(self):
        """Free-recovery intervals ``(TD1, TD2, TD3)`` (s): inversion -> first pulse of
        train 1; end of train 1 -> first pulse of train 2; end of train 2 -> next
        inversion (``TD`` of Marques et al. 2010)."""
        n_before, n_after = _split(self.n_readouts, self.partial_fourier)
        tau = self.readout_tr
        return (self.ti1 - n_before * tau,
                self.ti2 - self.ti1 - (n_after + n_before) * tau,
                self.tr_mp2rage - self.ti2 - n_after * tau)

    def validate(self) -> "MP2RAGEProtocol":
        """Return ``self``; raise ValueError if concrete values are non-physical or the
        trains do not fit between the inversions (a negative delay, which includes
        TI2 <= TI1).  Traced values are not checked."""
        values = dict(tr_mp2rage=self.tr_mp2rage, ti1=self.ti1, ti2=self.ti2,
                      flip1=self.flip1, flip2=self.flip2, readout_tr=self.readout_tr,
                      partial_fourier=self.partial_fourier,
                      inversion_efficiency=self.inversion_efficiency, te=self.te)
        td1, td2, td3 = self.delays()
        _check_common("MP2RAGEProtocol", values, {"TD1": td1, "TD2": td2, "TD3": td3},
                      self.n_readouts)
        return self


# ---------------------------------------------------------------------------------------
# Signal equations
# ---------------------------------------------------------------------------------------

def _split(n_readouts, partial_fourier):
    """Pulses before and from the k-space centre: n (pf - 1/2) and n / 2 (``MPRAGEfunc``)."""
    return n_readouts * (partial_fourier - 0.5), n_readouts * 0.5


def _relax(t1, dt):
    """Free T1 recovery over ``dt`` as the affine map (E, 1 - E), Mz in units of M0."""
    return jnp.exp(-dt / t1), -jnp.expm1(-dt / t1)


def _train(t1, alpha, tau, count):
    """``count`` x (pulse alpha, then recovery over tau) as an affine map (a, b).

    a = c^count, b = (1 - E1)(1 - c^count) / (1 - c), c = cos(alpha) E1; written with
    expm1/log1p so that it stays accurate for small alpha and tau << T1.
    """
    one_minus_e1 = -jnp.expm1(-tau / t1)
    e1 = 1.0 - one_minus_e1
    half_sin_sq = 2.0 * jnp.sin(alpha / 2.0) ** 2                 # 1 - cos(alpha)
    log_c = jnp.log1p(-half_sin_sq) - tau / t1
    one_minus_c = one_minus_e1 + e1 * half_sin_sq
    one_minus_cn = -jnp.expm1(count * log_c)
    return 1.0 - one_minus_cn, one_minus_e1 * one_minus_cn / one_minus_c


def _compose(f, g):
    """Affine maps as (a, b): returns f after g, x -> f_a (g_a x + g_b) + f_b."""
    return f[0] * g[0], f[0] * g[1] + f[1]


def _prepared_centre_mz(t1, tr, tis, alphas, tau, n_before, n_after, eta):
    """Steady-state Mz / M0 just before each train's k-space-centre pulse.

    ``tis`` and ``alphas`` are equal-length sequences (one entry per train); the flip
    angles are the actual ones (B1 applied).  Implements Marques et al. (2010),
    appendix, by composing affine maps (see the module docstring).
    """
    n_total = n_before + n_after
    k = len(tis)
    delays = [tis[0] - n_before * tau]
    delays += [tis[i] - tis[i - 1] - n_total * tau for i in range(1, k)]
    delays += [tr - tis[-1] - n_after * tau]
    relax = [_relax(t1, d) for d in delays]
    before = [_train(t1, a, tau, n_before) for a in alphas]
    after = [_train(t1, a, tau, n_after) for a in alphas]

    inversion = (-eta, 0.0)
    cycle = inversion
    for i in range(k):
        cycle = _compose(relax[i], cycle)
        cycle = _compose(before[i], cycle)
        cycle = _compose(after[i], cycle)
    cycle = _compose(relax[k], cycle)
    mz_ss = cycle[1] / (1.0 - cycle[0])          # Mz just before the inversion

    out = []
    mz = -eta * mz_ss
    for i in range(k):
        mz = relax[i][0] * mz + relax[i][1]
        mz = before[i][0] * mz + before[i][1]
        out.append(mz)
        mz = after[i][0] * mz + after[i][1]
    return out


def mprage_full(t1, m0, protocol: MPRAGEProtocol, b1=1.0, t2star=jnp.inf):
    """MPRAGE steady-state signal with the full readout train (Deichmann et al. 2000).

    S = M0 sin(b1 alpha) Mz_c exp(-TE/T2*), Mz_c the steady-state Mz / M0 just before
    the k-space-centre pulse (module docstring; Marques et al. 2010 appendix with one
    train).  For alpha -> 0, eta = 1, ``S / sin(alpha)`` tends to the static
    :func:`phyjax.physics.signal.mprage` (tested).

    Args (broadcastable): t1 (s, > 0), m0 (a.u.), b1 (flip scale), t2star (s; default
      inf: no T2* weighting); ``protocol`` an :class:`MPRAGEProtocol` (its numeric
      fields may be arrays too).
    Returns: signed signal, broadcast shape of the inputs.
    """
    p = protocol
    n_before, n_after = _split(p.n_readouts, p.partial_fourier)
    alpha = b1 * p.flip_angle
    (mz,) = _prepared_centre_mz(t1, p.tr, (p.ti,), (alpha,), p.readout_tr, n_before, n_after,
                                p.inversion_efficiency)
    return m0 * jnp.sin(alpha) * mz * jnp.exp(-p.te / t2star)


def mp2rage_signals(t1, m0, protocol: MP2RAGEProtocol, b1=1.0, t2star=jnp.inf):
    """MP2RAGE INV1 and INV2 steady-state signals (Marques et al. 2010, appendix).

    INVi = M0 sin(b1 alpha_i) Mz_i exp(-TE/T2*), Mz_i the steady-state Mz / M0 just
    before the k-space-centre pulse of train i, for an inversion of efficiency eta every
    ``tr_mp2rage`` followed by two trains of ``n_readouts * partial_fourier`` pulses
    (flips b1 alpha_1, b1 alpha_2) spaced by ``readout_tr``, centred at TI1 and TI2.

    Args (broadcastable): t1 (s, > 0), m0 (a.u.), b1 (flip scale), t2star (s; default
      inf).  Returns: ``(inv1, inv2)``, real and signed, broadcast shape of the inputs.
    """
    p = protocol
    n_before, n_after = _split(p.n_readouts, p.partial_fourier)
    a1, a2 = b1 * p.flip1, b1 * p.flip2
    mz1, mz2 = _prepared_centre_mz(t1, p.tr_mp2rage, (p.ti1, p.ti2), (a1, a2), p.readout_tr,
                                   n_before, n_after, p.inversion_efficiency)
    decay = m0 * jnp.exp(-p.te / t2star)
    return decay * jnp.sin(a1) * mz1, decay * jnp.sin(a2) * mz2


# ---------------------------------------------------------------------------------------
# UNI
# ---------------------------------------------------------------------------------------

def mp2rage_uni(inv1, inv2):
    """MP2RAGE uniform image: UNI = Re(INV1* INV2) / (|INV1|^2 + |INV2|^2), in [-1/2, 1/2].

    M0, receive bias and T2* cancel.  Source: Marques et al. (2010).  Real (signed) or
    complex inputs of any broadcastable shape; both zero gives NaN (0/0), as on the
    scanner before its integer conversion.  Pass the *signed* or complex INV1: its
    magnitude alone loses the sign that encodes long T1 (see :func:`signed_inv1`).
    """
    num = jnp.real(jnp.conj(inv1) * inv2)
    return num / (jnp.abs(inv1) ** 2 + jnp.abs(inv2) ** 2)


def robust_uni(inv1, inv2, beta):
    """Regularised UNI of O'Brien et al. (PLoS ONE 9:e99676, 2014):

        (Re(INV1* INV2) - beta) / (|INV1|^2 + |INV2|^2 + 2 beta),   beta >= 0,

    which equals :func:`mp2rage_uni` for beta = 0, stays in [-1/2, 1/2], and sends
    voxels with signal small against sqrt(beta) (background noise) to -1/2.  beta is
    in signal units squared (O'Brien et al. take a multiple of the noise power).
    """
    num = jnp.real(jnp.conj(inv1) * inv2) - beta
    return num / (jnp.abs(inv1) ** 2 + jnp.abs(inv2) ** 2 + 2.0 * beta)


def uni_to_siemens(uni):
    """UNI in [-1/2, 1/2] -> Siemens integer scale 4095 (UNI + 1/2) in [0, 4095].

    Returned unrounded (differentiable); the scanner stores ``round`` of it (as in
    ``RobustCombination.m`` of MP2RAGE-related-scripts).
    """
    return SIEMENS_UNI_SCALE * (uni + 0.5)


def uni_from_siemens(value):
    """Siemens UNI integers in [0, 4095] -> UNI = value / 4095 - 1/2 in [-1/2, 1/2]."""
    return value / SIEMENS_UNI_SCALE - 0.5


def _check_uni_range(uni, name: str) -> None:
    """ValueError when concrete ``uni`` lies outside [-1/2, 1/2]: the scanner's integers
    (Siemens 0-4095) not yet converted with :func:`uni_from_siemens`, whose signs would all be
    +1 and whose T1 would clamp to the lookup's end.  Traced values are not checked."""
    if concrete(uni) is None:
        return
    values = np.asarray(uni, np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and np.abs(finite).max() > 0.5 + 1e-6:
        raise ValueError(f"{name}: UNI must lie in [-1/2, 1/2], got values up to "
                         f"{finite.max():g}; convert the scanner's integers first "
                         f"(uni_from_siemens: value / {SIEMENS_UNI_SCALE:g} - 1/2).")


def signed_inv1(uni, inv1_magnitude):
    """Signed INV1 from the scanner's magnitude INV1 and its (phase-sensitive) UNI:
    sign(UNI) |INV1| (INV2 > 0 in practice; first step of O'Brien's robust combination
    in ``RobustCombination.m``).  Broadcastable arrays; ``uni`` in [-1/2, 1/2] (convert
    Siemens integers with :func:`uni_from_siemens`).

    Raises:
      ValueError: for concrete ``uni`` outside [-1/2, 1/2].
    """
    _check_uni_range(uni, "signed_inv1")
    return jnp.sign(uni) * jnp.abs(inv1_magnitude)


# ---------------------------------------------------------------------------------------
# UNI -> T1, M0
# ---------------------------------------------------------------------------------------

def default_t1_grid():
    """The default lookup grid: ``T1_GRID_SIZE`` log-spaced T1 values over ``T1_GRID_RANGE`` (s)."""
    return jnp.geomspace(T1_GRID_RANGE[0], T1_GRID_RANGE[1], T1_GRID_SIZE)


def mp2rage_lookup_table(protocol: MP2RAGEProtocol, b1=1.0, t1_grid=None):
    """UNI(T1) over a T1 grid, restricted to its monotonic branch, ready for ``jnp.interp``.

    The branch is the part between the maximum and the minimum of UNI over the grid
    (``MP2RAGE_lookuptable.m`` of Marques et al.).  Grid points outside it are clamped to
    its end points, so the returned arrays keep the grid's static shape (jit-friendly)
    and repeat their end values.

    Args:
      protocol: the MP2RAGE protocol; b1: scalar flip scale (``vmap`` for maps);
      t1_grid: increasing T1 values (s), shape (G,); default :func:`default_t1_grid`.
    Returns:
      ``(uni_values, t1_values)``, each shape (G,), ``uni_values`` non-decreasing.
    """
    t1 = default_t1_grid() if t1_grid is None else jnp.asarray(t1_grid)
    inv1, inv2 = mp2rage_signals(t1, 1.0, protocol, b1)
    u = mp2rage_uni(inv1, inv2)
    i_max, i_min = jnp.argmax(u), jnp.argmin(u)
    index = jnp.clip(jnp.arange(u.shape[0]), jnp.minimum(i_max, i_min), jnp.maximum(i_max, i_min))
    u_branch, t1_branch = u[index], t1[index]
    decreasing = i_max < i_min                   # the usual case: UNI falls as T1 grows
    return (jnp.where(decreasing, u_branch[::-1], u_branch),
            jnp.where(decreasing, t1_branch[::-1], t1_branch))


def t1_from_uni(uni, protocol: MP2RAGEProtocol, b1=1.0, t1_grid=None):
    """T1 (s) from UNI by linear interpolation in :func:`mp2rage_lookup_table`.

    Differentiable w.r.t. ``uni`` (piecewise-linear slope) and the protocol.  UNI beyond
    the branch's range returns the T1 at the branch end (clamped, like the padding in
    ``MP2RAGE_lookuptable.m``); convert Siemens integers first (:func:`uni_from_siemens`).

    Args: uni any shape, in [-1/2, 1/2]; b1 scalar (``vmap`` over voxels for a B1 map).
    Returns: T1 of ``uni``'s shape.
    Raises:
      ValueError: for concrete ``uni`` outside [-1/2, 1/2] (scanner integers not converted).
    """
    _check_uni_range(uni, "t1_from_uni")
    uni_values, t1_values = mp2rage_lookup_table(protocol, b1, t1_grid)
    return jnp.interp(uni, uni_values, t1_values)


def m0_from_inv2(inv2, t1, protocol: MP2RAGEProtocol, b1=1.0, t2star=jnp.inf):
    """M0 = |INV2_measured| / |INV2_simulated(T1, M0 = 1)| (Marques et al. 2010;
    ``T1M0estimateMP2RAGE.m``).

    The result includes receive bias and, unless ``t2star`` is given, exp(-TE/T2*).
    Broadcastable arrays; returns their broadcast shape.
    """
    _, sim = mp2rage_signals(t1, 1.0, protocol, b1, t2star)
    return jnp.abs(inv2) / jnp.abs(sim)


def t1_m0_from_mp2rage(inv1, inv2, protocol: MP2RAGEProtocol, b1=1.0, t1_grid=None):
    """``(T1, M0)`` from signed/complex INV1 and INV2: UNI -> lookup -> INV2 ratio."""
    t1 = t1_from_uni(mp2rage_uni(inv1, inv2), protocol, b1, t1_grid)
    return t1, m0_from_inv2(inv2, t1, protocol, b1)
