"""Closed-form MR signal equations: pure, single-voxel, differentiable, vmappable.

Every function takes scalars (or arrays that broadcast together) in SI units:
times in seconds, angles in radians, ``m0`` in arbitrary units, ``b1`` a
dimensionless flip-angle scale.  They return the *signed* steady-state
transverse signal; :func:`synthesize` takes the magnitude, as a scanner's
magnitude reconstruction does.  Use ``jax.vmap`` or broadcasting for maps.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from phyjax.physics.sequences import Protocol
from phyjax.physics.tracing import concrete


def spgr(t1, t2star, m0, tr, te, flip_angle, b1=1.0):
    """Spoiled gradient echo (SPGR/FLASH) steady state, ideal spoiling.

    S = M0 sin(b1 a) (1 - E1) / (1 - cos(b1 a) E1) exp(-TE/T2*),  E1 = exp(-TR/T1).

    Source: Ernst & Anderson, Rev. Sci. Instrum. 37:93 (1966); Bernstein, King &
    Zhou, *Handbook of MRI Pulse Sequences* (2004), Sec. 14.1 (RF-spoiled GRE).

    Args (broadcastable arrays): t1, t2star, tr, te in s; m0 a.u.; flip_angle in
      rad; b1 dimensionless.
    Returns: signal, broadcast shape of the inputs.
    """
    alpha = b1 * flip_angle
    e1 = jnp.exp(-tr / t1)
    return m0 * jnp.sin(alpha) * (1.0 - e1) / (1.0 - jnp.cos(alpha) * e1) * jnp.exp(-te / t2star)


def ernst_angle(t1, tr):
    """Flip angle (rad) that maximizes :func:`spgr`: arccos(exp(-TR/T1)) (Ernst 1966)."""
    return jnp.arccos(jnp.exp(-tr / t1))


def mprage(t1, t2star, m0, tr, ti, te):
    """MPRAGE, static-equation form (readout train neglected).

    S = M0 (1 - 2 exp(-TI/T1) / (1 + exp(-TR/T1))) exp(-TE/T2*)

    where TR is the time between inversions (TI + TD + tau in the source).
    Source: Jog et al., "MR image synthesis by contrast learning on neighborhood
    ensembles", Med. Image Anal. 24:63 (2015), MPRAGE imaging equation (Sec. 2);
    used by Borges et al. (2019).  The readout-train form (Deichmann et al. 2000)
    refines it.  Derivation checked in tests by iterating inversion/recovery
    cycles to steady state.

    Args: t1, t2star, tr, ti, te in s; m0 a.u.  Returns the signed signal.
    """
    return (m0 * (1.0 - 2.0 * jnp.exp(-ti / t1) / (1.0 + jnp.exp(-tr / t1)))
            * jnp.exp(-te / t2star))


def mprage_readout(t1, t2star, m0, tr, ti, te, flip_angle, tr_readout, n_readouts, b1=1.0,
                   inversion_efficiency=None):
    """MPRAGE / IR-prepared fast GRE (BRAVO, TFE) with its full readout train.

    S = M0 sin(b1 a) Mz_c exp(-TE/T2*), Mz_c the periodic steady-state Mz / M0 just before
    the k-space-centre pulse of a train of ``n_readouts`` pulses (full Fourier, centre in the
    middle) spaced by ``tr_readout``, TI from the inversion to that pulse, TR between
    inversions.  The same function as :func:`phyjax.physics.mp2rage.mprage_full` (Deichmann et
    al., NeuroImage 12:112 (2000); Marques et al., NeuroImage 49:1271 (2010), appendix), with
    every argument an array (``n_readouts`` too), so that protocols of one family share one
    compiled training step.  ``inversion_efficiency`` defaults to the measured 0.96
    (:data:`phyjax.physics.mp2rage.DEFAULT_INVERSION_EFFICIENCY`).

    Args (broadcastable): times in s, flip_angle in rad, m0 a.u., b1 a flip scale.
    Returns: the signed signal.
    """
    from phyjax.physics import mp2rage  # mp2rage does not import this module

    eta = (mp2rage.DEFAULT_INVERSION_EFFICIENCY if inversion_efficiency is None
           else inversion_efficiency)
    n_before, n_after = mp2rage._split(n_readouts, 1.0)
    alpha = b1 * flip_angle
    (mz,) = mp2rage._prepared_centre_mz(t1, tr, (ti,), (alpha,), tr_readout, n_before, n_after,
                                        eta)
    return m0 * jnp.sin(alpha) * mz * jnp.exp(-te / t2star)


def has_readout(protocol: Protocol):
    """Whether an ``mprage`` protocol carries its readout train (readout TR, readouts per shot
    and flip angle all > 0): then :func:`signed_signal` uses :func:`mprage_readout`, else the
    static :func:`mprage`.  A bool array (traced fields give a traced bool)."""
    p = protocol
    return ((jnp.asarray(p.tr_readout) > 0) & (jnp.asarray(p.n_readouts) > 0)
            & (jnp.asarray(p.flip_angle) > 0))


def train_fits(n_readouts: float, tr_readout: float, ti: float, tr: float) -> bool:
    """Whether a readout train of ``n_readouts`` pulses spaced ``tr_readout`` (s), its k-space
    centre in the middle (the convention of :func:`mprage_readout`), fits between the
    inversions: half of it, ``n_readouts tr_readout / 2``, within both TI (before the centre)
    and TR - TI (after it).  Concrete scalars; times in s."""
    half = 0.5 * n_readouts * tr_readout
    return half <= ti + 1e-9 and half <= tr - ti + 1e-9


def readout_problem(protocol: Protocol) -> str:
    """Why an ``mprage`` protocol's readout train cannot be imaged ("" when it can, or when the
    protocol has no train, :func:`has_readout`); concrete fields.

    The train must fit between the inversions (:func:`train_fits`), and the readout flip
    angle must be below
    90 degrees (the train's recursion multiplies Mz by cos(flip) per pulse, and an inversion-
    prepared gradient-echo train uses 5-15 degrees).
    """
    p = protocol
    if p.sequence != "mprage" or not bool(has_readout(p)):
        return ""
    problems = []
    if not train_fits(float(p.n_readouts), float(p.tr_readout), float(p.ti), float(p.tr)):
        half = 0.5 * float(p.n_readouts) * float(p.tr_readout)
        problems.append(f"readout train of {float(p.n_readouts):g} x "
                        f"{1e3 * float(p.tr_readout):g} ms (half {half:g} s around the k-space "
                        f"centre) does not fit TI {float(p.ti):g} s and TR - TI "
                        f"{float(p.tr) - float(p.ti):g} s")
    if float(p.flip_angle) >= 0.5 * np.pi:
        problems.append(f"readout flip angle {np.degrees(float(p.flip_angle)):g} degrees is not "
                        "below 90 (an MPRAGE / IR-SPGR / TFE train uses 5-15 degrees)")
    return "; ".join(problems)


def _mprage_signal(p: Protocol, t1, t2star, m0, b1):
    """:func:`mprage_readout` where the protocol has its readout train, else :func:`mprage`.

    Raises ValueError when concrete readout values cannot be imaged (:func:`readout_problem`:
    TI shorter than the first half of the train, TR - TI shorter than the second half, or a
    readout flip of 90 degrees or more)."""
    static = mprage(t1, t2star, m0, p.tr, p.ti, p.te)
    known = has_readout(p)
    given = concrete(known)   # None when traced
    if given is not None and given[0].size == 1:
        if not given[0]:
            return static
        problem = readout_problem(p)
        if problem:
            raise ValueError(f"MPRAGE: {problem}.")
        return mprage_readout(t1, t2star, m0, p.tr, p.ti, p.te, p.flip_angle, p.tr_readout,
                              p.n_readouts, b1)
    # Traced, or protocols of both kinds: both forms, decided per element by jnp.where, with
    # safe stand-ins where unused (no NaN in either's gradient).
    safe = lambda v, d: jnp.where(known, v, d)  # noqa: E731
    full = mprage_readout(t1, t2star, m0, p.tr, p.ti, p.te, safe(p.flip_angle, 0.1),
                          safe(p.tr_readout, 1e-3), safe(p.n_readouts, 2.0), b1)
    return jnp.where(known, full, static)


def inversion_recovery(t1, t2, m0, tr, ti, te, inversion_efficiency=1.0):
    """Inversion recovery (spin-echo readout), signed.

    S = M0 (1 - (1 + eta) exp(-TI/T1) + eta exp(-TR/T1)) exp(-TE/T2)

    with eta the inversion efficiency (the inversion maps Mz -> -eta Mz; 1 = perfect
    180 deg).  Steady state of: inversion, recovery over TI, 90 deg excitation leaving
    Mz = 0, recovery over TR - TI; the effect of the 180 deg refocusing pulse on the Mz
    regrown during TE/2 is neglected, so this is the TE << TR form.  For eta = 1 it is
    the textbook 1 - 2 exp(-TI/T1) + exp(-TR/T1).  The magnitude has its
    null at TI = T1 ln(2 / (1 + exp(-TR/T1))) for eta = 1 (:func:`ir_null_ti`).
    Source: Bydder & Young, J. Comput. Assist. Tomogr. 9:659 (1985); Bernstein
    et al. (2004), Sec. 14.2 (inversion recovery).

    Args: t1, t2, tr, ti, te in s; m0 a.u.; eta dimensionless.
    """
    eta = inversion_efficiency
    return (m0 * (1.0 - (1.0 + eta) * jnp.exp(-ti / t1) + eta * jnp.exp(-tr / t1))
            * jnp.exp(-te / t2))


def ir_null_ti(t1, tr):
    """Inversion time (s) that nulls a tissue of ``t1`` in :func:`inversion_recovery` (eta = 1)."""
    return t1 * jnp.log(2.0 / (1.0 + jnp.exp(-tr / t1)))


def spin_echo(t1, t2, m0, tr, te):
    """Spin echo with a 90-180 pair, finite TR.

    S = M0 (1 - 2 exp(-(TR - TE/2)/T1) + exp(-TR/T1)) exp(-TE/T2)

    Source: Bernstein et al. (2004), Sec. 14.3 (spin echo, refocusing-pulse term
    included); ../DESIGN.md Sec. 3.
    Args: t1, t2, tr, te in s; m0 a.u.
    """
    return (m0 * (1.0 - 2.0 * jnp.exp(-(tr - te / 2.0) / t1) + jnp.exp(-tr / t1))
            * jnp.exp(-te / t2))


def bssfp(t1, t2, m0, tr, flip_angle, b1=1.0):
    """Balanced SSFP (TrueFISP/FIESTA/balanced FFE) steady state, on resonance, TE = TR/2.

    S = M0 sin(a) (1 - E1) / (1 - (E1 - E2) cos(a) - E1 E2) exp(-TR / (2 T2)),
    a = b1 * flip_angle,  E1 = exp(-TR/T1),  E2 = exp(-TR/T2).

    This is the steady state of an RF train with alternating phase (+a, -a, ...)
    and fully balanced gradients, for an isochromat exactly on resonance (the
    centre of the pass band); the transverse magnetization just after each pulse
    decays by exp(-TR/(2 T2)) until the echo at TE = TR/2 (no T2' refocusing
    term: it is a single isochromat).  Limits: TR << T1, T2 gives
    S -> M0 sin(a) / ((T1/T2 + 1) - (T1/T2 - 1) cos(a)), maximal
    (M0/2) sqrt(T2/T1) at cos(a) = (T1/T2 - 1)/(T1/T2 + 1).  Off resonance
    (banding) is modelled by :mod:`phyjax.physics.bloch`.
    Source: Freeman & Hill, J. Magn. Reson. 4:366 (1971); Scheffler & Lehnhardt,
    Eur. Radiol. 13:2409 (2003) (review; signal at TE = TR/2); checked in tests
    against the Bloch simulator's periodic steady state.

    Args (broadcastable arrays): t1, t2, tr in s; m0 a.u.; flip_angle in rad;
      b1 dimensionless.
    Returns: the signed signal, broadcast shape of the inputs (positive for
      0 < a < pi).
    """
    alpha = b1 * flip_angle
    # In terms of x_i = E_i - 1 = expm1(-TR/T_i): 1 - E1 = -x1, E1 - E2 = x1 - x2 and
    # 1 - E1 E2 = -(x1 + x2 + x1 x2).  Same formula, but no cancellation when TR << T1, T2
    # (float32 bSSFP at TR = 5 ms keeps ~1e-6 relative accuracy), and only two
    # transcendentals per voxel: exp(-TR/(2 T2)) = sqrt(E2) = sqrt(1 + x2).
    x1 = jnp.expm1(-tr / t1)
    x2 = jnp.expm1(-tr / t2)
    denominator = -(x1 + x2 + x1 * x2) - (x1 - x2) * jnp.cos(alpha)
    return m0 * jnp.sin(alpha) * (-x1) / denominator * jnp.sqrt(1.0 + x2)


def turbo_spin_echo(t1, t2, m0, tr, te_effective, echo_train_duration=0.0):
    """Turbo (fast) spin echo / RARE, effective-TE approximation.

    S = M0 (1 - exp(-(TR - T_train)/T1)) exp(-TE_eff/T2)

    The image contrast of a TSE acquisition is set by the echo that fills the
    k-space centre, at TE_eff; with ideal 180 deg refocusing pulses (CPMG) that
    echo has decayed by exactly exp(-TE_eff/T2) (see :func:`phyjax.physics.epg.cpmg`).
    The 90 deg excitation leaves Mz = 0 and the train of ideal 180 deg pulses keeps
    it near 0 (what regrows between two of them is inverted by the next: the
    residue at the end of a long train tends to (1 - E)^2 / (1 + E^2) M0 with
    E = exp(-ESP/(2 T1)), second order in ESP/T1); Mz then recovers freely for
    TR - T_train.  ``echo_train_duration = 0`` gives the long-TR / short-train
    form M0 (1 - exp(-TR/T1)) exp(-TE_eff/T2).  Refocusing angles below 180 deg
    (stimulated-echo pathways) and the k-space-filter effect of the T2 decay
    across the train are not modelled here: use the EPG module for them.
    Source: Hennig, Nauerth & Friedburg, Magn. Reson. Med. 3:823 (1986) (RARE);
    Bernstein et al. (2004), Ch. 16 (echo-train sequences: RARE, effective
    echo time).

    Args (broadcastable arrays): t1, t2, tr, te_effective, echo_train_duration
      (time from the excitation to the last refocused echo) in s; m0 a.u.
    Returns: the signal, broadcast shape of the inputs.
    """
    return (m0 * (1.0 - jnp.exp(-(tr - echo_train_duration) / t1))
            * jnp.exp(-te_effective / t2))


def signed_signal(protocol: Protocol, t1, t2, t2star, m0, b1=1.0):
    """Signed signal of ``protocol`` for tissue maps (any broadcastable shapes).

    Dispatches on ``protocol.sequence`` (static).  ``mprage`` uses its full readout-train form
    (:func:`mprage_readout`) when the protocol carries the readout TR, readouts per shot and
    flip angle (:func:`has_readout`), else the static equation.  ``b1`` scales the flip angle
    of SPGR, bSSFP (whose TE is taken as TR / 2) and the MPRAGE readout train; the static
    MPRAGE, IR and SE forms assume ideal pulses.
    Raises ValueError for an unknown family.
    """
    p = protocol
    if p.sequence == "spgr":
        return spgr(t1, t2star, m0, p.tr, p.te, p.flip_angle, b1)
    if p.sequence == "mprage":
        return _mprage_signal(p, t1, t2star, m0, b1)
    if p.sequence == "ir":
        return inversion_recovery(t1, t2, m0, p.tr, p.ti, p.te)
    if p.sequence == "se":
        return spin_echo(t1, t2, m0, p.tr, p.te)
    if p.sequence == "bssfp":
        return bssfp(t1, t2, m0, p.tr, p.flip_angle, b1)
    raise ValueError(f"No signal model for sequence {p.sequence!r}.")


def synthesize(protocol: Protocol, t1, t2, t2star, m0, b1=1.0):
    """Magnitude image of ``protocol`` from quantitative maps: ``|signed_signal(...)|``.

    Shapes: all maps broadcast together; output has their broadcast shape.
    Pass ``t2 = t2star = jnp.inf`` to model an image whose T2/T2* weighting is
    folded into ``m0`` (as PhyCHarm's generator does).
    """
    return jnp.abs(signed_signal(protocol, t1, t2, t2star, m0, b1))
