"""Extended phase graphs (EPG): configuration-state simulation of one voxel.

The magnetization of a voxel dephased by gradients is expanded in Fourier
configurations along the dephasing direction, Mxy(z) = sum_k F_k exp(i 2 pi k z),
Mz(z) = Re sum_k Z_k exp(i 2 pi k z).  The state is the matrix

    Omega = [[F+_0, F+_1, ..., F+_{K-1}],
             [F-_0, F-_1, ..., F-_{K-1}],
             [Z_0,  Z_1,  ..., Z_{K-1}]]      complex, shape (3, K),  F-_0 = conj(F+_0),

with a fixed number K of states (``n_states``; higher orders are dropped, which is exact
while fewer than K gradient shifts have been played or T2 decay has removed them).
Operators (Weigel, "Extended phase graphs: dephasing, RF pulses, and echoes - pure and
simple", J. Magn. Reson. Imaging 41:266, 2015: RF rotation T, relaxation E, shift S):

* RF pulse of flip a, phase phi: Omega <- T(a, phi) Omega,
  T = [[cos^2(a/2),                e^{2i phi} sin^2(a/2),    -i e^{i phi} sin a],
       [e^{-2i phi} sin^2(a/2),    cos^2(a/2),               i e^{-i phi} sin a],
       [-(i/2) e^{-i phi} sin a,   (i/2) e^{i phi} sin a,    cos a]];
* relaxation over dt: F *= E2, Z *= E1, Z_0 += M0 (1 - E1);
* a gradient of one cycle across the voxel: F+_k -> F+_{k+1}, F-_k -> F-_{k-1},
  F+_0 <- conj(F-_0) (and the reverse for -1);
* off-resonance df over dt: F+ *= e^{i 2 pi df dt}, F- *= e^{-i 2 pi df dt}.

It is driven by the same :class:`phyjax.physics.bloch.Events` list as the Bloch
simulator (same order inside an event, same right-handed sign convention, same
demodulated signal s = i exp(-i rx_phase) F+_0), so the two are directly comparable:
the voxel average of the Bloch isochromats equals F+_0 here.  Event ``gradient`` values
must be -1, 0 or +1 (one state shift).  Units: SI (s, rad, Hz).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from phyjax.physics import bloch
from phyjax.physics.bloch import Events

__all__ = ["rf_operator", "relax", "shift", "initial_state", "simulate", "rf_spoiled_gre",
           "cpmg", "cpmg_events"]


def rf_operator(flip, phase):
    """EPG rotation matrix T(flip, phase) of Weigel (2015), complex (3, 3).

    Acts on the (F+, F-, Z) rows of the state; phase 0 takes Z_0 = M0 to
    F+_0 = -i M0 sin(flip) (M along -y), the same right-handed rotation as
    :func:`phyjax.physics.bloch.rf_rotation`.

    Args: flip, phase: scalars (rad).  Returns: complex (3, 3).
    """
    c2 = jnp.cos(flip / 2.0) ** 2
    s2 = jnp.sin(flip / 2.0) ** 2
    sa = jnp.sin(flip)
    ca = jnp.cos(flip)
    e1 = jnp.exp(1j * phase)
    e2 = e1 * e1
    return jnp.stack([
        jnp.stack([c2 + 0j, e2 * s2, -1j * e1 * sa]),
        jnp.stack([jnp.conj(e2) * s2, c2 + 0j, 1j * jnp.conj(e1) * sa]),
        jnp.stack([-0.5j * jnp.conj(e1) * sa, 0.5j * e1 * sa, ca + 0j]),
    ])


def relax(state, dt, t1, t2, m0=1.0):
    """Relaxation over ``dt`` (s): F *= exp(-dt/T2), Z *= exp(-dt/T1), Z_0 += M0 (1 - E1).

    Args: state complex (3, K); t1, t2 (s), m0 scalars.  Returns: complex (3, K).
    """
    e1 = jnp.exp(-dt / t1)
    e2 = jnp.exp(-dt / t2)
    scale = jnp.stack([e2, e2, e1]).astype(state.dtype)[:, None]
    state = state * scale
    return state.at[2, 0].add(m0 * (1.0 - e1))


def shift(state, direction=1):
    """Gradient dephasing by one state, ``direction`` = +1 or -1 (may be traced; 0 = none).

    +1: F+_k -> F+_{k+1}, F-_{k+1} -> F-_k, then F+_0 = conj(F-_0); the highest F+ state
    is dropped and F-_{K-1} becomes 0.  -1 is the mirror image.  Z is unchanged.

    Args: state complex (3, K), K >= 2.  Returns: complex (3, K).
    """
    fp, fm, z = state[0], state[1], state[2]
    zero = jnp.zeros((1,), state.dtype)
    # direction +1
    fm_up = jnp.concatenate([fm[1:], zero])
    fp_up = jnp.concatenate([jnp.conj(fm_up[:1]), fp[:-1]])
    # direction -1
    fp_dn = jnp.concatenate([fp[1:], zero])
    fm_dn = jnp.concatenate([jnp.conj(fp_dn[:1]), fm[:-1]])
    direction = jnp.asarray(direction)
    fp_new = jnp.where(direction > 0.5, fp_up, jnp.where(direction < -0.5, fp_dn, fp))
    fm_new = jnp.where(direction > 0.5, fm_up, jnp.where(direction < -0.5, fm_dn, fm))
    return jnp.stack([fp_new, fm_new, z])


def initial_state(n_states: int, m0=1.0, dtype=None):
    """Equilibrium state: Z_0 = M0, everything else 0.  Complex (3, n_states)."""
    n = bloch._positive_int(n_states, "n_states")
    if n < 2:
        raise ValueError(f"n_states must be >= 2, got {n}.")
    cdtype = jnp.result_type(dtype or jnp.result_type(float), 1j)
    return jnp.zeros((3, n), cdtype).at[2, 0].set(m0)


def _check_gradient(events: Events) -> None:
    try:
        g = np.asarray(events.gradient)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.all(np.isin(g, (-1.0, 0.0, 1.0))):
        raise ValueError("EPG events need gradient in {-1, 0, +1} (one state shift); got "
                         f"{np.unique(g)[:5]}.")


def simulate(events: Events, t1, t2, m0=1.0, df=0.0, b1=1.0, n_states: int = 64,
             state_init=None):
    """EPG simulation through ``events`` (``jax.lax.scan``), same semantics as Bloch.

    Per event: Omega <- T(b1 flip, phase) Omega; relaxation and off-resonance over dt;
    shift by ``gradient``; s = i exp(-i rx_phase) F+_0 if readout; F <- 0 if spoil.
    (The shift is applied before the sample: the gradient is played during the interval.)

    Args:
      events: :class:`phyjax.physics.bloch.Events` of shape ``(n,)``; ``gradient`` in
        {-1, 0, +1}.
      t1, t2 (s), m0 (a.u.), df (Hz), b1: scalars.
      n_states: number K of configuration states kept (Python int >= 2).
      state_init: complex (3, K) initial state; default equilibrium.
    Returns:
      ``(signal, state_final)``: complex ``(n,)`` (0 where readout is False) and the
      complex ``(3, K)`` final state.
    Raises:
      ValueError: malformed events, a gradient outside {-1, 0, 1}, n_states < 2, or a
        ``state_init`` of the wrong shape.
    """
    bloch._check_events(events)
    _check_gradient(events)
    dtype = jnp.result_type(events.flip, t1, t2, m0, df, b1, float)
    t1, t2, m0, df, b1 = (jnp.asarray(v, dtype) for v in (t1, t2, m0, df, b1))
    if state_init is None:
        state = initial_state(n_states, m0, dtype)
    else:
        state = jnp.asarray(state_init, jnp.result_type(dtype, 1j))
        if state.shape != (3, n_states):
            raise ValueError(f"state_init must have shape (3, {n_states}), got {state.shape}.")
    two_pi = 2.0 * jnp.pi

    def step(state, ev):
        flip, phase, dt, readout, rx_phase, gradient, spoil = ev
        state = rf_operator(b1 * flip, phase).astype(state.dtype) @ state
        state = relax(state, dt, t1, t2, m0)
        rot = jnp.exp(1j * two_pi * df * dt).astype(state.dtype)
        state = state * jnp.stack([rot, jnp.conj(rot), jnp.ones_like(rot)])[:, None]
        state = shift(state, gradient)
        sig = 1j * jnp.exp(-1j * rx_phase).astype(state.dtype) * state[0, 0]
        sig = jnp.where(readout, sig, jnp.zeros_like(sig))
        keep = jnp.where(spoil, 0.0, 1.0).astype(state.dtype)
        state = state * jnp.stack([keep, keep, jnp.ones_like(keep)])[:, None]
        return state, sig

    ev = Events(*[jnp.asarray(f, dtype) if k not in (3, 6) else jnp.asarray(f, bool)
                  for k, f in enumerate(events)])
    state, signal = jax.lax.scan(step, state, ev)
    return signal, state


def rf_spoiled_gre(t1, t2, m0, tr, flip_angle, n_pulses: int, te=0.0, b1=1.0,
                   rf_spoiling_increment=bloch.RF_SPOILING_INCREMENT, n_states: int | None = None):
    """RF- and gradient-spoiled gradient-echo train: echo signals, complex ``(n_pulses,)``.

    Event list :func:`phyjax.physics.bloch.spgr_events` (one cycle of spoiler per TR,
    quadratic RF phase, receiver following the RF phase), simulated by :func:`simulate`.
    ``n_states`` defaults to ``n_pulses + 1``: no truncation.  The magnitude converges to
    the ideal-spoiling closed form :func:`phyjax.physics.signal.spgr` (T2* -> T2) when
    T2 << TR; for T2 comparable to or longer than TR the residual coherences of
    117 deg RF spoiling bias it by up to a few per cent, depending on flip angle and T2
    (Zur et al., Magn. Reson. Med. 21:251, 1991; Preibisch & Deichmann, Magn. Reson.
    Med. 61:125, 2009) and a small phase remains.

    Args: t1, t2, tr, te (s), m0 (a.u.), flip_angle (rad), b1: scalars; n_pulses int.
    Returns: complex (n_pulses,) demodulated echo signals at TE after each pulse.
    Raises: ValueError if n_pulses < 1 or n_states < 2.
    """
    events = bloch.spgr_events(tr, te, flip_angle, n_pulses, rf_spoiling_increment, 1.0)
    k = n_pulses + 1 if n_states is None else n_states
    signal, _ = simulate(events, t1, t2, m0, 0.0, b1, max(k, 2))
    return signal[0::2]


def cpmg_events(esp, refocusing_angle, n_echoes: int, excitation_angle=math.pi / 2) -> Events:
    """CPMG multi-echo spin-echo train as events: ``(2 n_echoes + 1,)``.

    [excitation (phase pi/2), ESP/2 with crusher +1], then per echo
    [refocusing (phase 0), ESP/2 with crusher +1, sample at rx pi/2],
    [no pulse, ESP/2 with crusher +1] (the last of these is still present).
    Echo n is sampled at n ESP; readouts are ``signal[1::2]``.
    Raises: ValueError if n_echoes < 1.
    """
    n = bloch._positive_int(n_echoes, "n_echoes")
    half = 0.5 * jnp.asarray(esp)
    b = lambda v: jnp.broadcast_to(jnp.asarray(v), (n,))  # noqa: E731
    zeros = jnp.zeros(n)
    exc = bloch.make_events(flip=excitation_angle, phase=math.pi / 2, dt=half, gradient=1.0)
    refocus = bloch.make_events(flip=b(refocusing_angle), phase=zeros, dt=b(half), gradient=1.0,
                                readout=True, rx_phase=math.pi / 2)
    wait = bloch.make_events(flip=zeros, phase=zeros, dt=b(half), gradient=1.0)
    exc, refocus, wait = bloch._common_dtype(exc, refocus, wait)
    return bloch.concat_events(exc, bloch._interleave(refocus, wait))


def cpmg(t1, t2, m0, esp, refocusing_angle, n_echoes: int, b1=1.0,
         excitation_angle=math.pi / 2, n_states: int | None = None):
    """CPMG echo amplitudes, complex ``(n_echoes,)`` (real for the CPMG phase condition).

    90_y - [ESP/2 - a_x - ESP/2 - echo]^n with symmetric crushers (one state shift in each
    half echo spacing).  With a = 180 deg the echoes are exactly
    M0 sin(excitation) exp(-n ESP/T2); with a < 180 deg stimulated-echo pathways give the
    characteristic first-echo dip and pseudo steady state (Hennig, J. Magn. Reson.
    78:397, 1988; Weigel 2015).  ``n_states`` defaults to 2 n_echoes + 2 (no truncation).

    Args: t1, t2, esp (s), m0 (a.u.), refocusing_angle, excitation_angle (rad), b1
      (scales every pulse): scalars; n_echoes: int >= 1.
    Returns: complex (n_echoes,) echo signals, echo n at time n ESP.
    Raises: ValueError if n_echoes < 1 or n_states < 2.
    """
    events = cpmg_events(esp, refocusing_angle, n_echoes, excitation_angle)
    k = 2 * n_echoes + 2 if n_states is None else n_states
    signal, _ = simulate(events, t1, t2, m0, 0.0, b1, k)
    return signal[1::2]
