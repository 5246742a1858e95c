"""Acquisition protocols as typed pytrees, and their construction from BIDS sidecars.

A :class:`Protocol` holds the sequence family (static, not traced) and its
timing in SI units.  It is a JAX pytree, so protocols can be stacked and
``vmap``-ed over, and signal equations are differentiable with respect to
every numeric field.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

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
    """

    tr: Any
    te: Any
    ti: Any = 0.0
    flip_angle: Any = 0.0
    field_strength: Any = 3.0
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

    def to_sidecar(self) -> dict:
        """BIDS sidecar fields (times in s, FlipAngle in degrees) plus the family name."""
        out = {
            "PulseSequenceType": self.sequence.upper(),
            "RepetitionTime": float(self.tr),
            "EchoTime": float(self.te),
            "FlipAngle": float(units.rad2deg(self.flip_angle)),
            "MagneticFieldStrength": float(self.field_strength),
        }
        if self.sequence in ("mprage", "ir"):
            out["InversionTime"] = float(self.ti)
        if self.sequence == "mprage":
            out["RepetitionTimePreparation"] = float(self.tr)
        return out


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


def infer_sequence(sidecar: Mapping[str, Any]) -> str | None:
    """Sequence family from BIDS/DICOM fields, or ``None`` when they do not say.

    Uses ``PulseSequenceType`` when present (phyjax writes it), else the DICOM
    ``ScanningSequence`` that dcm2niix copies from DICOM: GR+IR -> mprage
    (inversion-prepared gradient echo); GR -> spgr; IR without GR -> ir; SE -> se.
    """
    pst = str(sidecar.get("PulseSequenceType", "")).strip().lower().replace("-", "").replace("_", "")
    aliases = {"mprage": "mprage", "mp2rage": "mprage", "irspgr": "mprage", "bravo": "mprage",
               "tfe": "mprage", "spgr": "spgr", "flash": "spgr", "gre": "spgr", "ffe": "spgr",
               "ir": "ir", "flair": "ir", "se": "se", "tse": "se", "fse": "se",
               "bssfp": "bssfp", "trufi": "bssfp", "truefisp": "bssfp", "fiesta": "bssfp",
               "bffe": "bssfp"}
    if pst in aliases:
        return aliases[pst]
    scanning = set(str(sidecar.get("ScanningSequence", "")).upper().replace("\\", " ").split())
    if "GR" in scanning and "IR" in scanning:
        return "mprage"
    if "GR" in scanning:
        return "spgr"
    if "IR" in scanning:
        return "ir"
    if "SE" in scanning:
        return "se"
    return None


def from_sidecar(sidecar: Mapping[str, Any], source: str = "<sidecar>",
                 sequence: str | None = None,
                 overrides: Mapping[str, float] | None = None) -> Protocol:
    """Map a BIDS sidecar (times in s, FlipAngle in degrees) to a :class:`Protocol`.

    Args:
      sidecar: the parsed JSON.
      source: file name used in error messages.
      sequence: force the family; otherwise :func:`infer_sequence`.
      overrides: values that replace sidecar fields, in sidecar units
        (keys ``RepetitionTime``, ``EchoTime``, ``InversionTime``, ``FlipAngle``,
        ``MagneticFieldStrength``), e.g. from the command line.

    For ``mprage``, ``RepetitionTimePreparation`` (BIDS) is preferred over
    ``RepetitionTime`` because vendors disagree on what ``RepetitionTime`` means;
    an explicit ``RepetitionTime`` override (the command line) wins over both.

    Raises:
      ValueError: naming ``source`` when the family cannot be determined, a
        field the family needs is missing, non-numeric, negative, or
        contradictory (TI >= TR for inversion-prepared sequences; TE >= TR).
    """
    fields = dict(sidecar)
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    seq = sequence or infer_sequence(fields)
    if seq is None:
        raise ValueError(
            f"{source}: cannot tell the sequence family (no PulseSequenceType and no "
            f"ScanningSequence); pass it explicitly (one of {SEQUENCES}).")
    if seq not in SEQUENCES:
        raise ValueError(f"{source}: unknown sequence {seq!r}; expected one of {SEQUENCES}.")

    def number(key, required):
        value = fields.get(key)
        if value is None:
            if required:
                raise ValueError(f"{source}: sequence {seq!r} needs {key!r}, which is missing.")
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {key!r} is not a number: {value!r}.") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{source}: {key!r} must be finite and >= 0, got {value}.")
        return value

    need = REQUIRED[seq]
    tr_key = "RepetitionTime"
    overridden = (overrides or {}).get("RepetitionTime") is not None
    if seq == "mprage" and fields.get("RepetitionTimePreparation") is not None and not overridden:
        tr_key = "RepetitionTimePreparation"
    tr = number(tr_key, "tr" in need)
    te = number("EchoTime", "te" in need)
    ti = number("InversionTime", "ti" in need) or 0.0
    flip = number("FlipAngle", "flip_angle" in need) or 0.0
    b0 = number("MagneticFieldStrength", False)
    if b0 is None:
        raise ValueError(f"{source}: 'MagneticFieldStrength' (T) is missing.")
    if seq in ("mprage", "ir") and ti >= tr:
        raise ValueError(f"{source}: InversionTime {ti} s must be shorter than the repetition "
                         f"time {tr} s ({tr_key}).")
    if seq in ("spgr", "se", "bssfp") and te >= tr:
        raise ValueError(f"{source}: EchoTime {te} s must be shorter than RepetitionTime {tr} s.")
    return Protocol.from_degrees(seq, tr=tr, te=te, ti=ti, flip_angle_deg=flip, field_strength=b0)
