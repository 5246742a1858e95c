"""Acquisition parameters from BIDS / dcm2niix JSON sidecars: the one place phyjax reads them.

Physics (:mod:`phyjax.physics`) takes parameters only; this module turns a sidecar (times in s,
flip angles in degrees, as BIDS has them) into a :class:`~phyjax.physics.sequences.Protocol` or an
:class:`~phyjax.physics.mp2rage.MP2RAGEProtocol`, and every error names the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from phyjax.data.nifti import InputError
from phyjax.physics.mp2rage import (DEFAULT_INVERSION_EFFICIENCY, DEFAULT_READOUT_TR,
                                    MP2RAGEProtocol)
from phyjax.physics.sequences import REQUIRED, SEQUENCES, Protocol


def read_sidecar(path: str) -> dict:
    """Parse a JSON sidecar.  Raises InputError naming ``path`` if missing or invalid."""
    if not os.path.exists(path):
        raise InputError(f"{path}: sidecar not found (acquisition parameters are required).")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: sidecar must be a JSON object.")
    return data


def sidecar_path(image_path: str) -> str:
    """``x_T1w.nii.gz`` -> ``x_T1w.json``."""
    base = image_path[:-7] if image_path.endswith(".nii.gz") else os.path.splitext(image_path)[0]
    return base + ".json"


def protocol_for(image_path: str, sequence: str | None = None,
                 overrides: Mapping[str, float] | None = None) -> Protocol:
    """Protocol of an image from its sidecar (and optional overrides).  Raises InputError."""
    path = sidecar_path(image_path)
    sidecar = read_sidecar(path) if os.path.exists(path) or not overrides else {}
    try:
        return protocol_from_sidecar(sidecar, source=path, sequence=sequence, overrides=overrides)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


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


def protocol_from_sidecar(sidecar: Mapping[str, Any], source: str = "<sidecar>",
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


# ----------------------------------------------------------------------------- MP2RAGE

def _load(sidecar, default_name):
    if isinstance(sidecar, (str, os.PathLike)):
        path = Path(sidecar)
        try:
            return json.loads(path.read_text()), path.name
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the sidecar ({err}).") from None
    if not isinstance(sidecar, Mapping):
        raise ValueError(f"{default_name}: expected a dict or a JSON path, got "
                         f"{type(sidecar).__name__}.")
    return dict(sidecar), default_name


def _number(fields, key, source, *, positive=True):
    value = fields.get(key)
    if value is None:
        raise ValueError(f"{source}: MP2RAGE needs {key!r}, which is missing.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {key!r} is not a number: {value!r}.") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{source}: {key!r} must be finite and {'>' if positive else '>='} 0, "
                         f"got {value}.")
    return value


def mp2rage_protocol_from_sidecars(
        inv1: Mapping[str, Any] | str | os.PathLike,
        inv2: Mapping[str, Any] | str | os.PathLike,
        source: Sequence[str] = ("<INV1 sidecar>", "<INV2 sidecar>"),
        *,
        n_readouts: int | None = None,
        readout_tr: float | None = None,
        partial_fourier: float = 1.0,
        inversion_efficiency: float = DEFAULT_INVERSION_EFFICIENCY) -> MP2RAGEProtocol:
    """:class:`MP2RAGEProtocol` from the INV1 and INV2 BIDS sidecars (dcm2niix, Siemens).

    Read from the sidecars (BIDS units: s, degrees):
      * ``InversionTime`` of each -> ti1, ti2 (must satisfy TI1 < TI2);
      * ``FlipAngle`` of each (degrees) -> flip1, flip2 (rad);
      * ``RepetitionTimePreparation`` (BIDS MP2RAGE) if present, else ``RepetitionTime``
        (dcm2niix writes the MP2RAGE TR there for Siemens, e.g. 5 s) -> tr_mp2rage; the
        two files must agree; a value < 0.1 s is rejected as a readout TR;
      * ``MagneticFieldStrength`` -> field_strength (must agree); ``EchoTime`` -> te
        (0 if absent).

    Not in Siemens sidecars, hence arguments:
      * ``readout_tr`` (s): the echo spacing.  None -> ``RepetitionTimeExcitation`` (BIDS)
        when both sidecars have it, else :data:`DEFAULT_READOUT_TR` = 7.0 ms, an
        ASSUMPTION estimated for the Prisma ``t1_mp2rage_sag_p3_32`` protocol (see that
        constant); pass the value from the scanner protocol when known.
      * ``n_readouts``: slices per slab (partition-encoding steps of the full k-space,
        e.g. the image size along the slab axis).  dcm2niix writes no field for it, so it
        is required; None raises ValueError.
      * ``partial_fourier``: slice partial Fourier (default 1.0 = off).  The sidecar's
        ``PartialFourier`` is the *in-plane phase* partial Fourier (dcm2niix reads
        ``ucPhasePartialFourier``), not the one along the train, so it is not used.
      * ``inversion_efficiency`` (default 0.96, Marques et al. 2010).

    Args:
      inv1, inv2: parsed sidecars, or paths to the JSON files.
      source: names used in error messages (file names when paths are given).
    Raises:
      ValueError: naming the file and the field when a field is missing, not a
        positive number, or contradictory; when ``n_readouts`` is missing; when the
        trains do not fit in the timing (:meth:`MP2RAGEProtocol.validate`).
    """
    src1, src2 = (source, source) if isinstance(source, str) else tuple(source)
    f1, src1 = _load(inv1, src1)
    f2, src2 = _load(inv2, src2)

    ti1 = _number(f1, "InversionTime", src1)
    ti2 = _number(f2, "InversionTime", src2)
    if ti1 >= ti2:
        raise ValueError(f"{src1}, {src2}: INV1 InversionTime {ti1} s must be shorter than "
                         f"INV2 InversionTime {ti2} s (are the files swapped?).")
    flip1 = _number(f1, "FlipAngle", src1)
    flip2 = _number(f2, "FlipAngle", src2)

    def prep_tr(fields, src):
        key = ("RepetitionTimePreparation" if fields.get("RepetitionTimePreparation") is not None
               else "RepetitionTime")
        value = _number(fields, key, src)
        if value < 0.1:
            raise ValueError(f"{src}: {key!r} = {value} s looks like a readout TR, not the "
                             f"MP2RAGE TR; give 'RepetitionTimePreparation'.")
        return value

    tr1, tr2 = prep_tr(f1, src1), prep_tr(f2, src2)
    if not math.isclose(tr1, tr2, rel_tol=1e-6):
        raise ValueError(f"{src1}, {src2}: MP2RAGE TR differs between INV1 ({tr1} s) and "
                         f"INV2 ({tr2} s).")
    b0_1 = _number(f1, "MagneticFieldStrength", src1)
    b0_2 = _number(f2, "MagneticFieldStrength", src2)
    if not math.isclose(b0_1, b0_2, rel_tol=1e-3):
        raise ValueError(f"{src1}, {src2}: MagneticFieldStrength differs ({b0_1} vs {b0_2} T).")
    te = _number(f1, "EchoTime", src1, positive=False) if f1.get("EchoTime") is not None else 0.0

    if readout_tr is None:
        rte = [f.get("RepetitionTimeExcitation") for f in (f1, f2)]
        if all(v is not None for v in rte):
            readout_tr = _number(f1, "RepetitionTimeExcitation", src1)
            if not math.isclose(readout_tr, _number(f2, "RepetitionTimeExcitation", src2),
                                rel_tol=1e-6):
                raise ValueError(f"{src1}, {src2}: RepetitionTimeExcitation differs between "
                                 f"INV1 and INV2.")
        else:
            readout_tr = DEFAULT_READOUT_TR
    if n_readouts is None:
        raise ValueError(
            f"{src1}: the number of readouts per train (slices per slab) is not in the "
            f"sidecar (no field such as 'SlicesPerSlab'); pass n_readouts, e.g. the "
            f"image size along the slab axis.")
    return MP2RAGEProtocol.from_degrees(
        tr_mp2rage=tr1, ti1=ti1, ti2=ti2, flip1_deg=flip1, flip2_deg=flip2,
        readout_tr=readout_tr, n_readouts=n_readouts, partial_fourier=partial_fourier,
        inversion_efficiency=inversion_efficiency, te=te, field_strength=b0_1)
