"""Bloch simulation of one isochromat from hard-pulse rotations and free precession.

The Bloch equation dM/dt = gamma M x B - (Mx/T2, My/T2, (Mz - M0)/T1) is integrated
exactly for piecewise-constant events: an instantaneous ("hard") RF pulse is a rotation,
and between pulses the solution is a rotation about z (off resonance, gradients) times
exponential relaxation.  An acquisition is an :class:`Events` list scanned with
``jax.lax.scan``; the simulator is a pure function of one isochromat, so it is batched
over isochromats or voxels with ``jax.vmap`` and differentiated with ``jax.grad``.

Conventions (shared with :mod:`phyjax.physics.epg`, so that one event list drives both):

* Rotations are right-handed, as in B. Hargreaves' Bloch-equation simulator (Stanford
  MRSRL teaching code) and in the EPG RF operator of Weigel (J. Magn. Reson. Imaging
  41:266, 2015): a pulse of flip ``a`` and phase ``phi`` rotates M by ``a`` about the
  transverse axis (cos phi, sin phi, 0), so a phase-0 pulse takes +z towards -y; free
  precession by an angle ``theta`` multiplies Mxy = Mx + i My by exp(i theta).  The
  physical evolution for gamma > 0 is left-handed; it is this one mirrored by My -> -My
  with RF and receiver phases negated, so magnitudes and every closed form are unchanged.
* The recorded signal is demodulated by the receiver phase ``rx_phase``:
  s = i exp(-i rx_phase) Mxy, so that a pulse of phase ``phi`` read at
  ``rx_phase = phi`` gives s = +M0 sin(a) for equilibrium magnetization (the sign
  convention of :mod:`phyjax.physics.signal`).
* An event is, in this order: (1) the hard pulse (flip scaled by ``b1``), (2) an interval
  ``dt`` of free precession at ``df`` Hz and relaxation, during which a gradient of net
  moment ``gradient`` (cycles across the voxel) is played, (3) the sample, if
  ``readout``, (4) ideal spoiling (transverse magnetization set to 0), if ``spoil``.
  Gradient dephasing, off-resonance and relaxation commute, so their order inside an
  interval does not matter.  An isochromat at fractional ``position`` z in [0, 1) across
  the voxel gains the phase 2 pi (df dt + gradient z) over the interval.

Gradient spoiling is modelled physically by averaging :func:`simulate` over isochromats
spread uniformly across the voxel (:func:`simulate_isochromats`): a spoiler of one cycle
per TR spreads their phases uniformly over 2 pi.  RF spoiling uses the quadratic phase
schedule of Zur, Wood & Neuringer (Magn. Reson. Med. 21:251, 1991), see
:func:`rf_spoiling_phases`.  Units: SI (s, rad, Hz).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Events", "make_events", "concat_events", "rf_rotation", "rf_spoiling_phases",
    "simulate", "simulate_isochromats", "steady_state", "spgr_events", "bssfp_events",
    "inversion_recovery_events", "readout_indices", "isochromat_positions",
]

#: RF-spoiling phase increment (rad) of Zur et al. (1991): 117 degrees.
RF_SPOILING_INCREMENT = math.radians(117.0)


class Events(NamedTuple):
    """An acquisition as a list of ``n`` events; every field has shape ``(n,)``.

    Attributes:
      flip: flip angle of the hard pulse at the start of the event (rad; 0 = no pulse).
      phase: RF phase of that pulse (rad).
      dt: duration of the free interval after the pulse (s, >= 0).
      readout: bool, sample the demodulated transverse magnetization at the end of ``dt``.
      rx_phase: receiver phase of that sample (rad).
      gradient: net gradient moment during the interval, in cycles across the voxel
        (EPG: the number of configuration-state shifts, must be -1, 0 or +1 there).
      spoil: bool, ideal spoiler: set the transverse magnetization to 0 at the end.

    A NamedTuple, hence a pytree: event lists can be stacked and vmapped over.
    """

    flip: Any
    phase: Any
    dt: Any
    readout: Any
    rx_phase: Any
    gradient: Any
    spoil: Any


def make_events(flip, phase=0.0, dt=0.0, readout=False, rx_phase=None, gradient=0.0,
                spoil=False) -> Events:
    """Build :class:`Events` from scalars or 1-D arrays, broadcast to a common length.

    ``rx_phase`` defaults to ``phase``.  Floats are kept as JAX arrays (traceable, so a
    protocol parameter can be differentiated through the event list); ``readout`` and
    ``spoil`` become bool arrays.

    Raises:
      ValueError: if the fields do not broadcast to one 1-D shape ``(n,)``, n >= 1.
    """
    rx_phase = phase if rx_phase is None else rx_phase
    floats = [jnp.asarray(v) for v in (flip, phase, dt, rx_phase, gradient)]
    flags = [jnp.asarray(v, bool) for v in (readout, spoil)]
    try:
        shape = jnp.broadcast_shapes(*[v.shape for v in floats + flags])
    except ValueError as err:
        raise ValueError(f"event fields do not broadcast together: {err}") from None
    if len(shape) == 0:
        shape = (1,)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"events must be 1-D with at least one event, got shape {shape}.")
    dtype = jnp.result_type(*floats, float)
    flip, phase, dt, rx_phase, gradient = (jnp.broadcast_to(v.astype(dtype), shape)
                                           for v in floats)
    readout, spoil = (jnp.broadcast_to(v, shape) for v in flags)
    return Events(flip, phase, dt, readout, rx_phase, gradient, spoil)


def concat_events(*events: Events) -> Events:
    """Concatenate event lists in time order (fields concatenated along axis 0)."""
    if not events:
        raise ValueError("concat_events needs at least one Events.")
    return Events(*[jnp.concatenate([jnp.atleast_1d(f) for f in fields])
                    for fields in zip(*events)])


def readout_indices(events: Events) -> np.ndarray:
    """Indices of the events that sample (needs concrete, non-traced ``readout``)."""
    return np.flatnonzero(np.asarray(events.readout))


def _check_events(events: Events) -> None:
    shapes = {np.shape(f) for f in events}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"all Events fields must share one 1-D shape (n,), got {shapes}; "
                         "build them with make_events.")


def rf_rotation(flip, phase):
    """Rotation matrix of a hard RF pulse: angle ``flip`` about (cos phase, sin phase, 0).

    R = cos(a) I + sin(a) [n]x + (1 - cos(a)) n n^T  (Rodrigues), right-handed, so
    phase 0 takes +z to (0, -sin a, cos a).  Equals Rz(phase) Rx(flip) Rz(-phase).

    Args: flip, phase: scalars (rad).  Returns: (3, 3) array.
    """
    c, s = jnp.cos(flip), jnp.sin(flip)
    nx, ny = jnp.cos(phase), jnp.sin(phase)
    one_c = 1.0 - c
    zero = jnp.zeros_like(c * nx)
    return jnp.stack([
        jnp.stack([c + one_c * nx * nx, one_c * nx * ny, s * ny]),
        jnp.stack([one_c * nx * ny, c + one_c * ny * ny, -s * nx]),
        jnp.stack([-s * ny, s * nx, c + zero]),
    ])


def rf_spoiling_phases(n_pulses: int, increment=RF_SPOILING_INCREMENT):
    """Quadratic RF-spoiling phase schedule phi_k = increment * k (k + 1) / 2 mod 2 pi.

    The phase increment grows linearly, phi_k - phi_{k-1} = k * increment (Zur, Wood &
    Neuringer, Magn. Reson. Med. 21:251, 1991; 117 deg there).  The receiver follows
    the RF phase.  Computed in float64 NumPy when ``increment`` is concrete (k^2 grows
    fast; float32 would lose the phase after a few hundred pulses).

    Args: n_pulses: int >= 1; increment: rad.  Returns: (n_pulses,) phases in [0, 2 pi).
    Raises: ValueError if n_pulses < 1.
    """
    n_pulses = _positive_int(n_pulses, "n_pulses")
    k = np.arange(n_pulses, dtype=np.int64)
    tri = k * (k + 1) // 2
    try:
        inc = float(increment)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return jnp.mod(increment * jnp.asarray(tri, jnp.result_type(float)), 2.0 * jnp.pi)
    return jnp.asarray(np.mod(inc * tri.astype(np.float64), 2.0 * np.pi))


def _positive_int(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a Python int >= 1, got {n!r}.")
    return int(n)


def _relax_precess(m, dt, t1, t2, m0, theta):
    """Free precession by ``theta`` (rad) and relaxation over ``dt`` of m = (Mx, My, Mz)."""
    e1 = jnp.exp(-dt / t1)
    e2 = jnp.exp(-dt / t2)
    c, s = jnp.cos(theta), jnp.sin(theta)
    mx, my, mz = m[0], m[1], m[2]
    return jnp.stack([e2 * (c * mx - s * my), e2 * (s * mx + c * my), m0 + (mz - m0) * e1])


def _demodulate(m, rx_phase):
    """s = i exp(-i rx) (Mx + i My), returned as (real, imag)."""
    c, s = jnp.cos(rx_phase), jnp.sin(rx_phase)
    return m[0] * s - m[1] * c, m[0] * c + m[1] * s


def simulate(events: Events, t1, t2, m0=1.0, df=0.0, b1=1.0, position=0.0, m_init=None):
    """Bloch simulation of one isochromat through ``events`` (``jax.lax.scan``).

    Per event (see the module docstring for the conventions):
      M <- R(b1 flip, phase) M;
      M <- Rz(2 pi (df dt + gradient position)) diag(E2, E2, E1) M + (0, 0, M0 (1 - E1)),
        E1 = exp(-dt/T1), E2 = exp(-dt/T2)   (exact solution of the Bloch equation);
      s = i exp(-i rx_phase) (Mx + i My) if readout else 0;
      (Mx, My) <- 0 if spoil.

    Args:
      events: :class:`Events`, fields of shape ``(n,)``.
      t1, t2: relaxation times (s), scalars (``jnp.inf`` allowed: no relaxation).
      m0: equilibrium magnetization (a.u.), scalar.
      df: off-resonance (Hz), scalar.
      b1: flip-angle scale (B1+ / nominal), scalar.
      position: fractional position across the voxel along the spoiler gradient, scalar.
      m_init: (3,) initial (Mx, My, Mz); default (0, 0, m0), equilibrium.
    Returns:
      ``(signal, m_final)``: ``signal`` complex, shape ``(n,)``, 0 where ``readout`` is
      False; ``m_final`` real, shape ``(3,)``, after the last event.
    Raises:
      ValueError: if the event fields do not share one 1-D shape.

    Batch over isochromats/voxels with ``jax.vmap`` (e.g. over ``position``, ``df``,
    ``t1``).  Differentiable w.r.t. every float argument and the event fields.
    """
    _check_events(events)
    dtype = jnp.result_type(events.flip, t1, t2, m0, df, b1, position, float)
    t1, t2, m0, df, b1, position = (jnp.asarray(v, dtype) for v in (t1, t2, m0, df, b1,
                                                                     position))
    if m_init is None:
        m = jnp.stack([jnp.zeros((), dtype), jnp.zeros((), dtype), m0])
    else:
        m = jnp.asarray(m_init, dtype)
        if m.shape != (3,):
            raise ValueError(f"m_init must have shape (3,), got {m.shape}.")
    two_pi = 2.0 * jnp.pi

    def step(m, ev):
        flip, phase, dt, readout, rx_phase, gradient, spoil = ev
        m = rf_rotation(b1 * flip, phase) @ m
        theta = two_pi * (df * dt + gradient * position)
        m = _relax_precess(m, dt, t1, t2, m0, theta)
        re, im = _demodulate(m, rx_phase)
        sig = jnp.where(readout, jax.lax.complex(re, im), jnp.zeros((), jnp.result_type(re, 1j)))
        keep = jnp.where(spoil, 0.0, 1.0).astype(dtype)
        m = m * jnp.stack([keep, keep, jnp.ones((), dtype)])
        return m, sig

    ev = Events(*[jnp.asarray(f, dtype) if k not in (3, 6) else jnp.asarray(f, bool)
                  for k, f in enumerate(events)])
    m_final, signal = jax.lax.scan(step, m, ev)
    return signal, m_final


def isochromat_positions(n_isochromats: int, dtype=None):
    """Fractional positions (j + 1/2) / N, j = 0..N-1, uniformly across the voxel: (N,)."""
    n = _positive_int(n_isochromats, "n_isochromats")
    return (jnp.arange(n, dtype=dtype or jnp.result_type(float)) + 0.5) / n


def simulate_isochromats(events: Events, t1, t2, m0=1.0, df=0.0, b1=1.0,
                         n_isochromats: int = 100, m_init=None):
    """Voxel signal: :func:`simulate` vmapped over ``n_isochromats`` positions, averaged.

    The isochromats sit at z_j = (j + 1/2)/N across the voxel, so a gradient of one
    cycle per TR spreads their phases uniformly over 2 pi (gradient spoiling).  The
    voxel average of Mxy is exactly the EPG state F+_0 as long as no configuration of
    order |k| >= N carries signal (aliasing), i.e. N > the number of net dephasing
    cycles that survive T2 decay.

    Args: as :func:`simulate` (scalars); ``n_isochromats``: Python int >= 1.
    Returns: ``(signal, m_final)``: complex ``(n,)`` mean signal and ``(3,)`` mean
      magnetization.
    Raises: ValueError for ``n_isochromats < 1`` or malformed events.
    """
    _check_events(events)
    z = isochromat_positions(n_isochromats, jnp.result_type(events.flip, t1, float))
    sig, m = jax.vmap(lambda p: simulate(events, t1, t2, m0, df, b1, p, m_init))(z)
    return sig.mean(axis=0), m.mean(axis=0)


def steady_state(events: Events, t1, t2, m0=1.0, df=0.0, b1=1.0, position=0.0):
    """Periodic steady state: the magnetization M* with ``events`` mapping M* to itself.

    One period of events is an affine map M -> A M + b (rotations, relaxation and ideal
    spoiling are all affine); A and b are read off by simulating the period from the
    origin and the three unit vectors, and M* = (I - A)^{-1} b.  Run
    ``simulate(events, ..., m_init=M*)`` to get the steady-state readouts.  Exact (no
    transient), differentiable.  Phase schedules that change from period to period (RF
    spoiling) have no such fixed point: simulate them in time.

    Args: as :func:`simulate` (scalars); ``events`` is one period.
    Returns: (3,) magnetization at the start of the period (before its first pulse).
    Raises: ValueError for malformed events.  Without relaxation (T1 = T2 = inf) I - A
      is singular and the result is not finite.
    """
    _check_events(events)
    dtype = jnp.result_type(events.flip, t1, t2, m0, float)
    starts = jnp.concatenate([jnp.zeros((1, 3), dtype), jnp.eye(3, dtype=dtype)])
    ends = jax.vmap(lambda m: simulate(events, t1, t2, m0, df, b1, position, m)[1])(starts)
    b = ends[0]
    a = (ends[1:] - b).T
    return jnp.linalg.solve(jnp.eye(3, dtype=dtype) - a, b)


# ---------------------------------------------------------------------------------------
# Event-list builders.  Times in s, angles in rad; ``n_*`` are Python ints (they fix the
# scan length); the float arguments may be traced (differentiable protocol parameters).
# ---------------------------------------------------------------------------------------

def _interleave(*event_lists: Events) -> Events:
    """Interleave equal-length event lists: a0, b0, a1, b1, ..."""
    return Events(*[jnp.stack(fields, axis=1).reshape(-1) for fields in zip(*event_lists)])


def spgr_events(tr, te, flip_angle, n_pulses: int, rf_spoiling_increment=RF_SPOILING_INCREMENT,
                gradient_cycles=1.0, ideal_spoiling: bool = False) -> Events:
    """RF-spoiled gradient-echo (SPGR/FLASH) train: 2 events per TR, ``(2 n_pulses,)``.

    Per TR k: [pulse (flip_angle, phi_k), TE, sample at rx phi_k],
    [no pulse, TR - TE with ``gradient_cycles`` of spoiler, ideal spoiling if asked].
    phi_k from :func:`rf_spoiling_phases` (``rf_spoiling_increment = 0`` turns RF
    spoiling off).  Readouts are the even events: ``signal[0::2]``.

    With ``ideal_spoiling=True`` a single isochromat reaches the closed form
    :func:`phyjax.physics.signal.spgr` (with T2* -> T2); with gradient + RF spoiling
    use :func:`simulate_isochromats` (or :func:`phyjax.physics.epg.simulate`).
    Raises: ValueError if n_pulses < 1 or (concrete) TE > TR.
    """
    n = _positive_int(n_pulses, "n_pulses")
    _check_order(te, tr, "te", "tr")
    phases = rf_spoiling_phases(n, rf_spoiling_increment)
    zeros = jnp.zeros(n)
    tr_, te_ = jnp.asarray(tr), jnp.asarray(te)
    excite = make_events(flip=jnp.broadcast_to(flip_angle, (n,)), phase=phases,
                         dt=jnp.broadcast_to(te_, (n,)), readout=True, rx_phase=phases)
    spoil = make_events(flip=zeros, phase=zeros, dt=jnp.broadcast_to(tr_ - te_, (n,)),
                        gradient=jnp.broadcast_to(gradient_cycles, (n,)),
                        spoil=jnp.full((n,), bool(ideal_spoiling)))
    return _interleave(*_common_dtype(excite, spoil))


def bssfp_events(tr, flip_angle, n_pulses: int, catalyst: bool = True, te=None) -> Events:
    """Balanced SSFP train with alternating RF phase (+a, -a, ...); TE defaults to TR/2.

    Optional alpha/2 catalyst (Deimling & Heid, Proc. SMR 1994; reviewed by Scheffler &
    Lehnhardt 2003): a pulse of flip a/2 and
    phase opposite to the first train pulse, TR/2 before it, which puts M near the
    steady-state direction and damps the on-resonance transient.  Then per TR k:
    [pulse (a, k pi), TE, sample at rx k pi], [no pulse, TR - TE].  Gradients are
    balanced (net 0).  Readouts: ``signal[1::2]`` with the catalyst, ``signal[0::2]``
    without (``readout_indices`` finds them).  Shape ``(2 n_pulses [+ 1],)``.
    Raises: ValueError if n_pulses < 1 or (concrete) TE > TR.
    """
    n = _positive_int(n_pulses, "n_pulses")
    te = 0.5 * jnp.asarray(tr) if te is None else te
    _check_order(te, tr, "te", "tr")
    phases = jnp.asarray(np.pi * (np.arange(n) % 2))
    zeros = jnp.zeros(n)
    tr_, te_ = jnp.asarray(tr), jnp.asarray(te)
    excite = make_events(flip=jnp.broadcast_to(flip_angle, (n,)), phase=phases,
                         dt=jnp.broadcast_to(te_, (n,)), readout=True, rx_phase=phases)
    wait = make_events(flip=zeros, phase=zeros, dt=jnp.broadcast_to(tr_ - te_, (n,)))
    train = _interleave(*_common_dtype(excite, wait))
    if not catalyst:
        return train
    prep = make_events(flip=0.5 * jnp.asarray(flip_angle), phase=np.pi, dt=0.5 * tr_)
    return concat_events(*_common_dtype(prep, train))


def inversion_recovery_events(tr, ti, te, n_repetitions: int, inversion_flip=math.pi,
                              excitation_flip=math.pi / 2, ideal_spoiling: bool = True,
                              gradient_cycles=1.0) -> Events:
    """Inversion recovery, 3 events per TR: [inversion, TI, spoil], [excitation, TE, sample],
    [no pulse, TR - TI - TE, spoil].

    The inversion pulse (``inversion_flip``, default pi; inversion efficiency
    eta = -cos(b1 inversion_flip)) is followed by TI with a spoiler before the
    excitation (phase 0, sampled at rx 0 after TE: a gradient-echo readout, so a single
    isochromat decays as exp(-TE/T2)); the rest of TR ends with another spoiler.
    ``ideal_spoiling`` nulls the transverse magnetization at both spoilers; otherwise
    ``gradient_cycles`` of gradient are played there (average over isochromats).
    Readouts: ``signal[1::3]``; shape ``(3 n_repetitions,)``.  The steady state equals
    :func:`phyjax.physics.signal.inversion_recovery` with that eta.
    Raises: ValueError if n_repetitions < 1 or (concrete) TI + TE > TR.
    """
    n = _positive_int(n_repetitions, "n_repetitions")
    _check_order(jnp.asarray(ti) + jnp.asarray(te), tr, "ti + te", "tr")
    zeros = jnp.zeros(n)
    b = lambda v: jnp.broadcast_to(jnp.asarray(v), (n,))  # noqa: E731
    g = b(gradient_cycles) * (0.0 if ideal_spoiling else 1.0)
    inv = make_events(flip=b(inversion_flip), phase=zeros, dt=b(ti), gradient=g,
                      spoil=jnp.full((n,), bool(ideal_spoiling)))
    exc = make_events(flip=b(excitation_flip), phase=zeros, dt=b(te), readout=True)
    rest = make_events(flip=zeros, phase=zeros, dt=b(jnp.asarray(tr) - ti - te), gradient=g,
                       spoil=jnp.full((n,), bool(ideal_spoiling)))
    return _interleave(*_common_dtype(inv, exc, rest))


def _common_dtype(*event_lists: Events) -> list[Events]:
    dtype = jnp.result_type(*[e.flip for e in event_lists], *[e.dt for e in event_lists])
    return [Events(*[f if k in (3, 6) else f.astype(dtype) for k, f in enumerate(e)])
            for e in event_lists]


def _check_order(short, long, short_name, long_name):
    """Raise ValueError if concrete ``short > long`` (skipped for traced values)."""
    try:
        s, lg = float(np.max(np.asarray(short))), float(np.min(np.asarray(long)))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    if s > lg:
        raise ValueError(f"{short_name} = {s} s must not exceed {long_name} = {lg} s.")
