"""Acquisition protocols as typed pytrees (built from sidecars in :mod:`phyjax.data.sidecar`).

A :class:`Protocol` holds the sequence family (static, not traced) and its
timing in SI units.  It is a JAX pytree, so protocols can be stacked and
``vmap``-ed over, and signal equations are differentiable with respect to
every numeric field.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

from phyjax.physics import units

#: Sequence families with a closed-form signal model (see :mod:`phyjax.physics.signal`).
SEQUENCES = ("spgr", "mprage", "ir", "se", "bssfp")

#: Which numeric fields each family's signal equation needs.
REQUIRED = {
    "spgr": ("tr", "te", "flip_angle"),
    "mprage": ("tr", "ti", "te"),
    "ir": ("tr", "ti", "te"),
    "se": ("tr", "te"),
    "bssfp": ("tr", "te", "flip_angle"),  # on resonance, TE = TR / 2 assumed
}

#: Length of :func:`encode` vectors.
ENCODING_SIZE = 5 + len(SEQUENCES)


@struct.dataclass
class Protocol:
    """One acquisition protocol.

    Attributes:
      sequence: family, one of :data:`SEQUENCES` (static pytree metadata).
      tr: repetition time (s).  For ``mprage`` this is the time between two
        inversions (BIDS ``RepetitionTimePreparation``; dcm2niix writes it into
        ``RepetitionTime`` for Siemens MPRAGE).  For ``spgr`` the time between
        excitations.
      te: echo time (s).
      ti: inversion time (s); 0 where the family has no inversion.
      flip_angle: nominal excitation flip angle (rad).
      field_strength: B0 (T).
      tr_readout: for ``mprage``, the excitation TR inside the readout train (echo spacing, s;
        BIDS ``RepetitionTimeExcitation``); 0 = not known.  Carried for the full readout-train
        model (:func:`phyjax.physics.mp2rage.mprage_full`); the static equation ignores it.
      n_readouts: for ``mprage``, readouts per inversion (shot); 0 = not known.  Carried like
        ``tr_readout``.
    """

    tr: Any
    te: Any
    ti: Any = 0.0
    flip_angle: Any = 0.0
    field_strength: Any = 3.0
    tr_readout: Any = 0.0
    n_readouts: Any = 0.0
    sequence: str = struct.field(pytree_node=False, default="mprage")

    def __post_init__(self):
        if self.sequence not in SEQUENCES:
            raise ValueError(f"Unknown sequence {self.sequence!r}; expected one of {SEQUENCES}.")

    @classmethod
    def from_degrees(cls, sequence: str, tr: float, te: float, ti: float = 0.0,
                     flip_angle_deg: float = 0.0, field_strength: float = 3.0) -> "Protocol":
        """Build a protocol from config-style values (times in s, flip angle in degrees)."""
        return cls(tr=float(tr), te=float(te), ti=float(ti),
                   flip_angle=float(units.deg2rad(flip_angle_deg)),
                   field_strength=float(field_strength), sequence=sequence)


def encode(protocol: Protocol) -> jnp.ndarray:
    """Fixed-length, roughly unit-scaled vector describing a protocol, for network conditioning.

    Returns an array of shape ``(ENCODING_SIZE,)``: ``[tr, ti, 10 te, flip_angle,
    B0 / 3 T, one-hot(sequence)]`` with times in s and the angle in rad.  Works on
    stacked protocols too (leading batch axes are broadcast).
    """
    onehot = np.zeros(len(SEQUENCES), np.float32)
    onehot[SEQUENCES.index(protocol.sequence)] = 1.0
    numeric = [protocol.tr, protocol.ti, 10.0 * jnp.asarray(protocol.te), protocol.flip_angle,
               jnp.asarray(protocol.field_strength) / 3.0]
    numeric = jnp.stack([jnp.asarray(v, jnp.float32) for v in numeric], axis=-1)
    onehot = jnp.broadcast_to(onehot, numeric.shape[:-1] + onehot.shape)
    return jnp.concatenate([numeric, onehot], axis=-1)
