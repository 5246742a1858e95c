"""Acquisition parameters from BIDS / dcm2niix JSON sidecars: the one place phyjax reads them.

Physics (:mod:`phyjax.physics`) takes parameters only; this module turns a sidecar (times in s,
flip angles in degrees, as BIDS has them) into a :class:`~phyjax.physics.sequences.Protocol` or an
:class:`~phyjax.physics.mp2rage.MP2RAGEProtocol`, and every error names the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from phyjax.data.nifti import InputError
from phyjax.physics import signal, tissues
from phyjax.physics.mp2rage import (DEFAULT_INVERSION_EFFICIENCY, DEFAULT_READOUT_TR,
                                    MP2RAGEProtocol)
from phyjax.physics import units
from phyjax.physics.sequences import SEQUENCES, Protocol


def read_sidecar(path: str) -> dict:
    """Parse a JSON sidecar.  Raises InputError naming ``path`` if missing or invalid."""
    if not os.path.exists(path):
        raise InputError(f"{path}: sidecar not found (acquisition parameters are required).")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: invalid JSON ({type(exc).__name__}: {exc}).") from exc
    except OSError as exc:   # a folder, no permission, ...
        raise InputError(f"{path}: cannot read the sidecar ({exc.strerror or exc}).") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: sidecar must be a JSON object.")
    return data


#: Sidecar key of an MPRAGE's readouts per shot (inversion) in sidecars phyjax writes: BIDS has
#: no field for it, dcm2niix writes it only for Philips (``EchoTrainLength``, the TFE factor), so
#: the key is phyjax's own and is read for any manufacturer.
READOUTS_KEY = "PhyjaxReadoutsPerShot"


def protocol_to_sidecar(p: Protocol) -> dict:
    """BIDS sidecar fields of a protocol (times in s, FlipAngle in degrees) plus the family name
    (``PulseSequenceType``).  Inversion-prepared families write ``RepetitionTimePreparation``
    (and ``RepetitionTimeExcitation`` when the readout TR is known), so no reader has to guess
    what ``RepetitionTime`` means.  An MPRAGE's readouts per shot, for which BIDS has no field,
    go in :data:`READOUTS_KEY` when known (> 0), so :func:`read_protocol` gets back the whole
    readout train of a sidecar phyjax wrote."""
    out = {"PulseSequenceType": p.sequence.upper(), "RepetitionTime": float(p.tr),
           "EchoTime": float(p.te), "FlipAngle": float(units.rad2deg(p.flip_angle)),
           "MagneticFieldStrength": float(p.field_strength)}
    if p.sequence in ("mprage", "ir"):
        out["InversionTime"] = float(p.ti)
    if p.sequence == "mprage":
        out["RepetitionTimePreparation"] = float(p.tr)
        if float(p.tr_readout) > 0:
            out["RepetitionTimeExcitation"] = float(p.tr_readout)
        if float(p.n_readouts) > 0:
            out[READOUTS_KEY] = float(p.n_readouts)
    return out


def site_label(sidecar: Mapping[str, Any]) -> str | None:
    """``InstitutionName``_``ManufacturersModelName`` (whichever are given), or None."""
    return "_".join(str(sidecar[k]).strip() for k in ("InstitutionName", "ManufacturersModelName")
                    if sidecar.get(k) is not None and str(sidecar[k]).strip()) or None


def sidecar_path(image_path: str) -> str:
    """``x_T1w.nii.gz`` -> ``x_T1w.json``."""
    base = image_path[:-7] if image_path.endswith(".nii.gz") else os.path.splitext(image_path)[0]
    return base + ".json"


# ----------------------------------------------------------------------------- protocol reading

#: Families the reader knows: the closed-form ones of :data:`SEQUENCES` plus ``mp2rage``.
FAMILIES = SEQUENCES + ("mp2rage",)

#: The values a reading carries, in BIDS units (s, degrees, T); ``protocols.tsv`` columns.
#: ``tr_prep_s``: time between preparations (inversions) -- the TR of mprage, mp2rage and ir;
#: ``tr_readout_s``: time between excitations -- the TR of spgr, se and bssfp, and the echo
#: spacing inside an mprage/mp2rage readout train; ``ti_s``/``flip_angle_deg``: the (first)
#: inversion time and flip angle; ``ti2_s``/``flip2_deg``: MP2RAGE's second ones;
#: ``n_readouts``: readouts per inversion (shot).
FIELDS = ("tr_prep_s", "tr_readout_s", "ti_s", "flip_angle_deg", "te_s", "b0_t", "n_readouts",
          "ti2_s", "flip2_deg")

#: What the signal model in use needs per family (the static MPRAGE equation needs no readout).
NEEDED = {"spgr": ("tr_readout_s", "te_s", "flip_angle_deg", "b0_t"),
          "mprage": ("tr_prep_s", "ti_s", "te_s", "b0_t"),
          "ir": ("tr_prep_s", "ti_s", "te_s", "b0_t"),
          "se": ("tr_readout_s", "te_s", "b0_t"),
          "bssfp": ("tr_readout_s", "te_s", "flip_angle_deg", "b0_t"),
          "mp2rage": ("tr_prep_s", "tr_readout_s", "ti_s", "ti2_s", "flip_angle_deg",
                      "flip2_deg", "n_readouts", "te_s", "b0_t")}

#: Carried when present (the full readout-train models use them), reported when absent.
CARRIED = {"mprage": ("tr_readout_s", "flip_angle_deg", "n_readouts")}

#: Documented vendor defaults, used only where a needed value is absent and written into every
#: output as an assumption: ``{(family, field): (value, why)}``.
VENDOR_DEFAULTS = {
    ("mp2rage", "tr_readout_s"): (DEFAULT_READOUT_TR, "echo spacing of the Siemens Prisma "
                                  "t1_mp2rage_sag_p3_32 protocol (dcm2niix does not write it; "
                                  "see phyjax.physics.mp2rage.DEFAULT_READOUT_TR)"),
}

#: Plausible ranges in BIDS units, and the unit mistake a value outside them usually is.
_RANGES = {"tr_prep_s": (0.05, 30.0), "tr_readout_s": (1e-3, 30.0), "ti_s": (1e-3, 10.0),
           "ti2_s": (1e-3, 10.0), "te_s": (0.0, 1.0), "b0_t": (0.01, 20.0),
           "flip_angle_deg": (0.0, 180.0), "flip2_deg": (0.0, 180.0), "n_readouts": (1, 4096)}

#: Tighter upper limits where a family's value cannot be long: the TR of a spoiled-gradient-echo
#: or bSSFP scan (2-D multi-slice FLASH reaches ~1 s; a TR written in ms, e.g. 20 for 20 ms,
#: would otherwise read as 20 s and remove all T1 weighting), and the echo spacing inside an
#: MPRAGE / IR-SPGR / TFE / MP2RAGE readout train (5-12 ms).
_FAMILY_MAX = {("spgr", "tr_readout_s"): 2.0, ("bssfp", "tr_readout_s"): 2.0,
               ("mprage", "tr_readout_s"): 0.05, ("mp2rage", "tr_readout_s"): 0.05}

#: Families whose flip angle is that of a readout train, where 90 degrees or more is not a
#: protocol (the train multiplies Mz by cos(flip) per pulse; they use 4-15 degrees).
_TRAIN_FAMILIES = ("mprage", "mp2rage")

_SEQUENCE_NAMES = {  # lower-case fragments of SequenceName / PulseSequenceName / descriptions
    "mp2rage": ("mp2rage",),
    "prepared_gre": ("tfl", "mprage", "mp-rage", "mp_rage", "t1tfe", "tfe", "bravo", "ir-spgr",
                     "irspgr", "ir-fspgr", "irfspgr", "gre_fsp_ir"),
    "gre": ("fl2d", "fl3d", "*fl", "flash", "spgr", "fspgr", "efgre", "fgre", "gre", "ffe",
            "t1ffe", "gradient echo"),
    "bssfp": ("trufi", "tfi", "fiesta", "bffe", "bssfp", "truefisp"),
    "se": ("tse", "fse", "se2d", "se3d", "spin echo", "spc", "cube", "space"),
}
_PST_ALIASES = {"mprage": "mprage", "mp2rage": "mp2rage", "irspgr": "mprage",
                "bravo": "mprage", "tfe": "mprage", "spgr": "spgr", "flash": "spgr",
                "gre": "spgr", "ffe": "spgr", "spoiledgradientecho": "spgr",
                "gradientecho": "spgr", "ir": "ir",
                "flair": "ir", "se": "se", "tse": "se", "fse": "se", "spinecho": "se",
                "bssfp": "bssfp", "trufi": "bssfp", "truefisp": "bssfp", "fiesta": "bssfp",
                "bffe": "bssfp"}


@dataclasses.dataclass
class Reading:
    """A sidecar read as a physicist would: family, every value with its origin, and what is
    missing, assumed or wrong.

    Attributes:
      source: file name (or "command line") for messages.
      family: one of :data:`FAMILIES`, or None when the evidence does not say.
      image_type: ``INV1``, ``INV2`` or ``UNI`` for MP2RAGE images, else "".
      manufacturer: ``Manufacturer`` of the sidecar ("" if absent).
      values: :data:`FIELDS` that are known, BIDS units.
      origin: where each value came from (a sidecar field, "site table", "command line",
        "vendor default").
      evidence: why this family.
      errors: implausible or contradictory values (each says what was probably meant).
      missing: needed values that nothing supplied.
      assumed: values taken from :data:`VENDOR_DEFAULTS` (each with its reason).
      notes: carried values that are absent but not needed by the model in use, and other facts.
      slice_thickness_mm: ``SliceThickness`` (mm; dcm2niix writes it from DICOM (0018,0050)),
        the nominal FWHM of the slice (2-D) or partition (3-D) profile; None when absent or
        implausible (a note says which).
      acquisition: ``MRAcquisitionType`` (``2D`` or ``3D``; "" when absent).
    """

    source: str
    family: str | None = None
    image_type: str = ""
    manufacturer: str = ""
    values: dict = dataclasses.field(default_factory=dict)
    origin: dict = dataclasses.field(default_factory=dict)
    evidence: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    assumed: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    slice_thickness_mm: float | None = None
    acquisition: str = ""

    @property
    def status(self) -> str:
        """``error``, ``missing``, ``assumed`` or ``ok`` (the worst that applies)."""
        if self.errors:
            return "error"
        if self.missing or self.family is None:
            return "missing"
        return "assumed" if self.assumed else "ok"

    @property
    def message(self) -> str:
        """Every problem, missing value, assumption and note, one sentence each."""
        parts = [self.problems] if self.problems else []
        return "; ".join(parts + [f"assumed {a}" for a in self.assumed] + self.notes)

    @property
    def problems(self) -> str:
        """The errors and missing values only ("" when there are none)."""
        parts = list(self.errors)
        if self.family is None and not self.errors:
            parts.append("missing the sequence family (no ScanningSequence, SequenceVariant, "
                         "InversionTime or known sequence name in the sidecar; harmonize mode "
                         f"takes --config.harmonize.sequence, one of {FAMILIES})")
        parts += [f"missing {m}" for m in self.missing]
        return "; ".join(parts)

    def protocol(self) -> Protocol:
        """The :class:`Protocol` of this reading.

        Raises:
          InputError: naming the file and listing every error and missing value; also for
            ``mp2rage`` (its own family, read here, but not a closed-form :class:`Protocol`:
            use :meth:`mp2rage_protocol`).
        """
        if self.status in ("error", "missing"):
            raise InputError(f"{self.source}: {self.problems}.")
        if self.family == "mp2rage":
            raise InputError(f"{self.source}: MP2RAGE {self.image_type or 'image'} read "
                             f"({self.summary()}), but harmonization models take single-inversion "
                             "protocols; MP2RAGE inputs are not supported by them yet.")
        v = self.values
        tr = v["tr_prep_s"] if self.family in ("mprage", "ir") else v["tr_readout_s"]
        return Protocol.from_degrees(
            self.family, tr=tr, te=v["te_s"], ti=v.get("ti_s", 0.0),
            flip_angle_deg=v.get("flip_angle_deg", 0.0), field_strength=v["b0_t"]).replace(
            tr_readout=v.get("tr_readout_s", 0.0) if self.family == "mprage" else 0.0,
            n_readouts=float(v.get("n_readouts", 0.0)) if self.family == "mprage" else 0.0)

    def mp2rage_protocol(self, partial_fourier: float = 1.0) -> MP2RAGEProtocol:
        """The :class:`MP2RAGEProtocol` of an MP2RAGE reading.  Raises InputError as above."""
        if self.family != "mp2rage" or self.status in ("error", "missing"):
            raise InputError(f"{self.source}: not a complete MP2RAGE reading ({self.problems}).")
        v = self.values
        return MP2RAGEProtocol.from_degrees(
            tr_mp2rage=v["tr_prep_s"], ti1=v["ti_s"], ti2=v["ti2_s"],
            flip1_deg=v["flip_angle_deg"], flip2_deg=v["flip2_deg"],
            readout_tr=v["tr_readout_s"], n_readouts=int(v["n_readouts"]),
            partial_fourier=partial_fourier, te=v["te_s"], field_strength=v["b0_t"])

    def summary(self) -> str:
        return ", ".join(f"{k}={self.values[k]:g}" for k in FIELDS if k in self.values)

    def row(self) -> dict:
        """One ``protocols.tsv`` row (without path/subject/session/site)."""
        return {"family": self.family or "", **{k: self.values.get(k, "") for k in FIELDS[:6]},
                "status": self.status, "message": self.message, "image_type": self.image_type,
                **{k: self.values.get(k, "") for k in FIELDS[6:]},
                "manufacturer": self.manufacturer,
                "slice_thickness_mm": ("" if self.slice_thickness_mm is None
                                       else self.slice_thickness_mm),
                "mr_acquisition_type": self.acquisition,
                "origin": "; ".join(f"{k} from {v}" for k, v in self.origin.items()
                                    if not v.startswith("sidecar"))}


def _text(sidecar, *keys) -> str:
    out = []
    for k in keys:
        v = sidecar.get(k)
        out += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)] if v else []
    return " ".join(out).lower()


def _tokens(sidecar, key) -> set[str]:
    v = sidecar.get(key, "")
    v = "\\".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return set(v.upper().replace("\\", " ").replace("_", " ").split())


def detect_family(sidecar: Mapping[str, Any]) -> tuple[str | None, str, list[str]]:
    """``(family, image_type, evidence)`` from every field a sidecar carries.

    Evidence for an inversion: ``ScanningSequence`` IR (incl. GE ``RM\\IR``), ``SequenceVariant``
    MP, ``ScanOptions`` IR / IR_GEMS, an ``InversionTime``, or a prepared-GRE sequence name
    (tfl, MP-RAGE, T1TFE, BRAVO, IR-SPGR ...); for a gradient echo: ``ScanningSequence`` GR or a
    GRE name (fl, efgre3d, FFE ...).  MP2RAGE: "mp2rage" in a name or list-valued
    ``InversionTime``; its image type from ``ImageType`` (UNI) or the series name (INV1/INV2).
    """
    scanning, variant = _tokens(sidecar, "ScanningSequence"), _tokens(sidecar, "SequenceVariant")
    options = _tokens(sidecar, "ScanOptions")
    names = _text(sidecar, "SequenceName", "PulseSequenceName", "PulseSequenceDetails",
                  "SeriesDescription", "ProtocolName")
    pst = re.sub(r"[\s_\-]", "", str(sidecar.get("PulseSequenceType", "")).lower())
    ti = sidecar.get("InversionTime")
    evidence = []

    def named(group):
        return any(n in names for n in _SEQUENCE_NAMES[group])

    if "mp2rage" in names or pst == "mp2rage" or (isinstance(ti, (list, tuple)) and len(ti) > 1):
        image_type = ("UNI" if "UNI" in _tokens(sidecar, "ImageType") or "_uni" in names
                      else "INV1" if "inv1" in names else "INV2" if "inv2" in names else "")
        return "mp2rage", image_type, ["MP2RAGE named or list-valued InversionTime"]
    inversion = []
    if "IR" in scanning:
        inversion.append("ScanningSequence IR")
    if "MP" in variant:
        inversion.append("SequenceVariant MP")
    if "IR" in options or "IR GEMS" in " ".join(sorted(options)):
        inversion.append("ScanOptions IR")
    if ti not in (None, "", 0) and not isinstance(ti, (list, tuple)):
        inversion.append("InversionTime present")
    if named("prepared_gre"):
        inversion.append("prepared-GRE sequence name")
    gre = "GR" in scanning or named("gre") or named("prepared_gre") or "gradientecho" in pst
    if pst in _PST_ALIASES:
        family = _PST_ALIASES[pst]
        # dcm2niix's generic "Gradient Echo" says nothing about a preparation: other evidence wins
        if not (family == "spgr" and inversion):
            return family, "", [f"PulseSequenceType {sidecar['PulseSequenceType']}"]
    if named("bssfp"):
        return "bssfp", "", ["balanced-SSFP sequence name"]
    if gre and inversion:
        return "mprage", "", ["gradient echo"] + inversion
    if "RM" in scanning and "IR" in scanning and ("mp-rage" in names or "mprage" in names):
        return "mprage", "", ["GE research-mode MP-RAGE (ScanningSequence RM\\IR)"]
    if gre:
        return "spgr", "", ["gradient echo without preparation"]
    if "IR" in scanning or ("SE" in scanning and inversion):
        return "ir", "", ["inversion recovery without gradient echo"]
    if "SE" in scanning or named("se"):
        return "se", "", ["spin echo"]
    return None, "", evidence


def infer_sequence(sidecar: Mapping[str, Any]) -> str | None:
    """The family of :func:`detect_family` (None when the evidence does not say)."""
    return detect_family(sidecar)[0]


def _value(value, key, reading: Reading):
    if isinstance(value, bool) or value is None:
        reading.errors.append(f"{key} is not a number: {value!r}")
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):   # OverflowError: an integer beyond float
        reading.errors.append(f"{key} is not a number: {str(value)[:40]!r}")
        return None
    if not math.isfinite(value) or value < 0:
        reading.errors.append(f"{key} must be finite and >= 0, got {value}")
        return None
    return value


def _tr_meaning(sidecar, family: str, manufacturer: str, names: str) -> str:
    """What ``RepetitionTime`` is for this vendor and family: ``prep`` or ``readout``."""
    if family in ("spgr", "se", "bssfp"):
        return "readout"
    if family in ("ir", "mp2rage"):
        return "prep"
    tr = sidecar.get("RepetitionTime")
    if "siemens" in manufacturer:
        return "prep"       # MPRAGE: the inversion repetition time (dcm2niix, Siemens)
    if manufacturer.startswith("ge") and ("mp-rage" in names or "mprage" in names):
        return "prep"       # GE product MP-RAGE: inversion-to-inversion interval
    if any(v in manufacturer for v in ("ge", "philips", "uih", "united", "canon", "toshiba",
                                       "hitachi", "fujifilm")):
        return "readout"    # IR-SPGR/BRAVO, T1-TFE, gre_fsp IR: the excitation TR
    try:
        return "readout" if float(tr) < 0.1 else "prep"   # unknown vendor: by magnitude
    except (TypeError, ValueError, OverflowError):
        return "prep"


def _from_sidecar(sidecar, reading: Reading, family: str):
    """Fill ``reading.values`` from the sidecar's own fields (BIDS names first)."""
    names = _text(sidecar, "SequenceName", "PulseSequenceName", "SeriesDescription",
                  "ProtocolName")
    keys = {"te_s": "EchoTime", "b0_t": "MagneticFieldStrength"}
    prep, exc = sidecar.get("RepetitionTimePreparation"), sidecar.get("RepetitionTimeExcitation")
    if prep is not None:
        keys["tr_prep_s"] = "RepetitionTimePreparation"
    if exc is not None:
        keys["tr_readout_s"] = "RepetitionTimeExcitation"
    meaning = _tr_meaning(sidecar, family, reading.manufacturer, names)
    key = "tr_prep_s" if meaning == "prep" else "tr_readout_s"
    tr = sidecar.get("RepetitionTime")
    same = [v for v in (prep, exc) if v is not None and _close(tr, v)]
    if key not in keys and tr is not None and not same:  # else it repeats a BIDS field
        keys[key] = "RepetitionTime"
    for field, k in keys.items():
        if sidecar.get(k) is not None:
            _set(reading, field, _value(sidecar[k], k, reading), f"sidecar {k}")
    _inversions_and_flips(sidecar, reading, family)
    if family == "mprage" and sidecar.get(READOUTS_KEY) is not None:
        _set(reading, "n_readouts", _value(sidecar[READOUTS_KEY], READOUTS_KEY, reading),
             f"sidecar {READOUTS_KEY} (written by phyjax)")
    elif family == "mprage" and "philips" in reading.manufacturer and \
            sidecar.get("EchoTrainLength"):
        _set(reading, "n_readouts", _value(sidecar["EchoTrainLength"], "EchoTrainLength",
                                            reading), "sidecar EchoTrainLength (Philips TFE factor)")


def _close(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError, OverflowError):
        return False


def _inversions_and_flips(sidecar, reading: Reading, family: str):
    ti, flip = sidecar.get("InversionTime"), sidecar.get("FlipAngle")
    listed = isinstance(ti, (list, tuple)) or isinstance(flip, (list, tuple))
    if family == "mp2rage" and listed:
        tis = list(ti) if isinstance(ti, (list, tuple)) else [ti]
        flips = list(flip) if isinstance(flip, (list, tuple)) else [flip]
        if len(tis) != 2 or len(flips) != 2:
            reading.errors.append(f"list-valued InversionTime {ti!r} (MP2RAGE) needs two "
                                  f"InversionTime and two FlipAngle values, got FlipAngle {flip!r}")
            return
        for f, v, k in (("ti_s", tis[0], "InversionTime"), ("ti2_s", tis[1], "InversionTime"),
                        ("flip_angle_deg", flips[0], "FlipAngle"),
                        ("flip2_deg", flips[1], "FlipAngle")):
            _set(reading, f, _value(v, k, reading), f"sidecar {k}")
        return
    second = family == "mp2rage" and reading.image_type == "INV2"
    if ti is not None:
        _set(reading, "ti2_s" if second else "ti_s", _value(ti, "InversionTime", reading),
             "sidecar InversionTime")
    if flip is not None:
        _set(reading, "flip2_deg" if second else "flip_angle_deg",
             _value(flip, "FlipAngle", reading), "sidecar FlipAngle")


def _set(reading: Reading, field: str, value, origin: str):
    if value is not None:
        reading.values[field] = value
        reading.origin[field] = origin


def _plausibility(reading: Reading):
    """Catch unit mistakes: times in ms, B0 in gauss, flip angles in radians."""
    for field, value in list(reading.values.items()):
        lo, hi = _RANGES[field]
        where = reading.origin.get(field, field)
        hi = _FAMILY_MAX.get((reading.family, field), hi)
        if field.endswith("_s") and value > hi:
            reading.errors.append(f"{field} = {value:g} s ({where}) is implausible for a "
                                  f"{reading.family} scan (above {hi:g} s); BIDS times are "
                                  f"in seconds -- probably {value / 1000:g} s (given in ms)")
        elif field == "b0_t" and value > hi:
            guess = f" -- probably {value / 1e4:g} T (given in gauss)" if value / 1e4 <= hi else ""
            reading.errors.append(f"b0_t = {value:g} T ({where}) is implausible{guess}")
        elif field == "b0_t" and value >= lo and not _has_tissue_table(value):
            # readable, and physics-free methods can use it; the physics cannot (no T1 table)
            reading.notes.append(f"no tissue relaxation table for B0 = {value:g} T (tables: "
                                 f"{', '.join(f'{b:g}' for b in tissues.FIELD_STRENGTHS)} T): "
                                 "PhyCHarm refuses this scan (it converts T1 between field strengths "
                                 "through these tables)")
        elif field in ("flip_angle_deg", "flip2_deg") and 0 < value < 1.0 and \
                reading.family != "se":
            reading.errors.append(f"{field} = {value:g} degrees ({where}) is implausible for a "
                                  f"{reading.family} scan -- probably radians "
                                  f"({math.degrees(value):.3g} degrees)")
        elif field in ("flip_angle_deg", "flip2_deg") and value > hi:
            reading.errors.append(f"{field} = {value:g} degrees ({where}) exceeds 180")
        elif field in ("flip_angle_deg", "flip2_deg") and value >= 90.0 and \
                reading.family in _TRAIN_FAMILIES:
            reading.errors.append(f"{field} = {value:g} degrees ({where}) is not a readout-train "
                                  f"flip angle of a {reading.family} scan (below 90; typically "
                                  "4-15 degrees)")
        elif field == "n_readouts" and not lo <= value <= hi:
            reading.errors.append(f"n_readouts = {value:g} ({where}) is implausible")
        elif value < lo and field in NEEDED.get(reading.family, ()):
            # e.g. MagneticFieldStrength 0 or InversionTime 0 of an inversion-prepared scan
            # (a value the model needs; GE's InversionTime 0 of a plain SPGR is not needed)
            reading.errors.append(f"{field} = {value:g} ({where}) is implausible for a "
                                  f"{reading.family} scan (below {lo:g})")


def _has_tissue_table(b0: float) -> bool:
    try:
        tissues.table_field(b0)
    except ValueError:
        return False
    return True


def _consistency(reading: Reading):
    v, f = reading.values, reading.family
    if f in ("mprage", "ir", "mp2rage") and "ti_s" in v and "tr_prep_s" in v \
            and v["ti_s"] >= v["tr_prep_s"]:
        reading.errors.append(f"InversionTime {v['ti_s']:g} s must be shorter than the inversion "
                              f"repetition time {v['tr_prep_s']:g} s "
                              f"({reading.origin['tr_prep_s']})")
    if f in ("spgr", "se", "bssfp") and "te_s" in v and "tr_readout_s" in v \
            and v["te_s"] >= v["tr_readout_s"]:
        reading.errors.append(f"EchoTime {v['te_s']:g} s must be shorter than RepetitionTime "
                              f"{v['tr_readout_s']:g} s")
    # the full readout-train model puts the k-space centre mid-train (signal.train_fits)
    if f == "mprage" and all(k in v for k in ("tr_readout_s", "n_readouts", "ti_s", "tr_prep_s")) \
            and not signal.train_fits(v["n_readouts"], v["tr_readout_s"], v["ti_s"], v["tr_prep_s"]):
        half = 0.5 * v["n_readouts"] * v["tr_readout_s"]
        reading.errors.append(
            f"the readout train of {v['n_readouts']:g} x {1e3 * v['tr_readout_s']:g} ms "
            f"({reading.origin['n_readouts']}; {reading.origin['tr_readout_s']}) does not fit "
            f"its timing: half of it ({half:g} s) must fit both before the k-space centre, "
            f"TI {v['ti_s']:g} s ({reading.origin['ti_s']}), and after it, TR - TI "
            f"{v['tr_prep_s'] - v['ti_s']:g} s (inversion TR from "
            f"{reading.origin['tr_prep_s']}) -- check the readouts per shot (those of "
            "one inversion) and the two TRs; the readout-train model assumes linear "
            "ordering (k-space centre mid-train): for a centric-ordered train leave "
            "n_readouts out, and the static MPRAGE equation is used")
    if f == "mp2rage" and "ti_s" in v and "ti2_s" in v and v["ti_s"] >= v["ti2_s"]:
        reading.errors.append(f"MP2RAGE TI1 {v['ti_s']:g} s must be shorter than TI2 "
                              f"{v['ti2_s']:g} s")


def _complete(reading: Reading):
    """Vendor defaults for what is needed but absent; the rest is missing (or a note)."""
    for field in NEEDED[reading.family]:
        if field in reading.values:
            continue
        default = VENDOR_DEFAULTS.get((reading.family, field))
        if default is not None:
            _set(reading, field, default[0], f"vendor default ({default[1]})")
            reading.assumed.append(f"{field} = {default[0]:g} ({default[1]})")
        else:
            hint = _HINTS.get(field, f"{_BIDS_NAMES[field]} not in the sidecar")
            reading.missing.append(f"{field} ({hint})")
    absent = [f for f in CARRIED.get(reading.family, ()) if f not in reading.values]
    if absent:
        reading.notes.append(f"not given: {', '.join(absent)} (the static MPRAGE equation in use "
                             "does not need them; the readout-train model does)")


_BIDS_NAMES = {"tr_prep_s": "RepetitionTimePreparation", "tr_readout_s": "RepetitionTime",
               "ti_s": "InversionTime", "flip_angle_deg": "FlipAngle", "te_s": "EchoTime",
               "b0_t": "MagneticFieldStrength", "n_readouts": "readouts per inversion",
               "ti2_s": "InversionTime of INV2", "flip2_deg": "FlipAngle of INV2"}
_HINTS = {"tr_prep_s": "the time between inversions (RepetitionTimePreparation); this vendor's "
                       "RepetitionTime is the readout TR -- give it in a site table (tr_prep_s)",
          "ti_s": "InversionTime absent -- give it in a site table (ti_s)",
          "ti2_s": "the second inversion time -- use the other MP2RAGE sidecar or a site table",
          "flip2_deg": "the second flip angle -- use the other MP2RAGE sidecar or a site table",
          "n_readouts": "readouts per inversion (slices per slab) -- give it in a site table",
          "b0_t": "MagneticFieldStrength absent"}


def read_protocol(sidecar: Mapping[str, Any], source: str = "<sidecar>", *,
                  family: str | None = None, site_values: Mapping[str, float] | None = None,
                  overrides: Mapping[str, float] | None = None,
                  site_origin: str = "site table") -> Reading:
    """Read a sidecar (BIDS units: s, degrees, T) into a :class:`Reading`.

    Args:
      sidecar: the parsed JSON (may be empty when everything comes from ``overrides``).
      source: file name for messages.
      family: force the family (one of :data:`FAMILIES`); else :func:`detect_family`.
      site_values: a site table's row (:data:`FIELDS`, BIDS units): fills values the sidecar
        lacks.
      overrides: values (:data:`FIELDS`) that replace the sidecar's, e.g. from the command line.
    Never raises for bad content: errors, missing and assumed values are in the reading
    (:meth:`Reading.protocol` raises).  Raises ValueError for an unknown forced family.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"{source}: unknown sequence {family!r}; expected one of {FAMILIES}.")
    detected, image_type, evidence = detect_family(sidecar)
    reading = Reading(source=source, family=family or detected, image_type=image_type,
                      manufacturer=str(sidecar.get("Manufacturer", "")).strip().lower(),
                      evidence=["forced"] if family else evidence)
    _geometry(sidecar, reading)
    if reading.family is None:
        return reading
    _from_sidecar(sidecar, reading, reading.family)
    for field, value in (site_values or {}).items():
        if field not in reading.values and value is not None:
            _set(reading, field, _value(value, field, reading), site_origin)
    for field, value in (overrides or {}).items():
        if value is not None:
            _set(reading, field, _value(value, field, reading), "command line")
    _plausibility(reading)
    _consistency(reading)
    _complete(reading)
    return reading


#: Plausible ``SliceThickness`` (mm): 3-D partitions of 0.5 mm to 2-D slices of 10 mm and more;
#: below 0.1 it is most likely in m or cm.
_THICKNESS_RANGE_MM = (0.1, 20.0)


def _geometry(sidecar, reading: Reading) -> None:
    """``SliceThickness`` and ``MRAcquisitionType`` into ``reading`` (geometry, not signal: a
    bad value is a note and the thickness stays unknown, never an error that blocks the scan)."""
    kind = str(sidecar.get("MRAcquisitionType", "") or "").strip().upper()
    reading.acquisition = kind if kind in ("2D", "3D") else ""
    if kind and not reading.acquisition:
        reading.notes.append(f"MRAcquisitionType {sidecar['MRAcquisitionType']!r} is neither "
                             "2D nor 3D; ignored")
    if "SliceThickness" not in sidecar:
        return
    raw = sidecar["SliceThickness"]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    lo, hi = _THICKNESS_RANGE_MM
    if isinstance(raw, bool) or not lo <= value <= hi:
        reading.notes.append(f"SliceThickness {raw!r} is not a thickness in mm ({lo:g}-{hi:g}); "
                             "ignored (the slice profile stays unknown)")
        return
    reading.slice_thickness_mm = value


_BIDS_OVERRIDES = {"EchoTime": "te_s", "InversionTime": "ti_s", "FlipAngle": "flip_angle_deg",
                   "MagneticFieldStrength": "b0_t", "RepetitionTimePreparation": "tr_prep_s",
                   "RepetitionTimeExcitation": "tr_readout_s"}


#: command-line names (``config.harmonize``, ``config.target``; s, degrees, T) -> reading fields
#: (``tr``: the TR of the family's signal equation, see :func:`read_given`)
COMMAND_LINE = {"tr": "tr_prep_s", "te": "te_s", "ti": "ti_s", "flip_angle": "flip_angle_deg",
                "field_strength": "b0_t", "tr_readout": "tr_readout_s",
                "n_readouts": "n_readouts"}
#: the command-line names of an inversion-prepared readout train (``config.harmonize`` only):
#: what a vendor's sidecar may leave out (GE's and United Imaging's give no readouts per
#: inversion) and a site table gives a dataset
READOUT_NAMES = ("tr_readout", "n_readouts")


def read_given(path: str, sequence: str = "", given: Mapping[str, float] | None = None,
               require_file: bool = False) -> Reading:
    """A protocol given by a sidecar and/or values on the command line (:data:`COMMAND_LINE`
    names, BIDS units; they override the sidecar's; ``tr_readout`` and ``n_readouts`` only
    for an inversion-prepared family, else InputError).

    ``path`` is read when ``require_file``, when it exists, or when nothing is ``given``;
    ``sequence`` forces the family.  ``tr`` is the TR of the family's signal equation (the
    inversion TR of mprage/ir/mp2rage, the excitation TR otherwise).  Raises InputError naming
    ``path`` for a missing or invalid sidecar.
    """
    given = dict(given or {})
    sidecar = (read_sidecar(path) if require_file or (path and os.path.exists(path)) or not given
               else {})
    family = sequence or infer_sequence(sidecar)
    overrides = {}
    for name, value in given.items():
        if name in READOUT_NAMES and family not in ("mprage", "mp2rage"):
            raise InputError(f"{path or 'command line'}: {name}={value:g} describes the readout "
                             "train of an inversion-prepared sequence (MPRAGE, IR-SPGR, TFE); "
                             f"this scan is {family!r} -- give its TR as tr.")
        field = COMMAND_LINE[name]
        if name == "tr":
            field = "tr_prep_s" if family in ("mprage", "ir", "mp2rage") else "tr_readout_s"
        overrides[field] = value
    return read_protocol(sidecar, path if sidecar else "command line", family=sequence or None,
                         overrides=overrides)


def given_values(section) -> dict[str, float]:
    """The :data:`COMMAND_LINE` values set in a config section (negative or None = not given)."""
    return {k: float(section[k]) for k in COMMAND_LINE
            if section.get(k) is not None and section[k] >= 0}


def target_from_config(section) -> Protocol | None:
    """The target protocol of a ``config.target`` section (``sidecar`` and/or ``sequence``,
    ``tr``, ``te``, ``ti``, ``flip_angle``, ``field_strength``), or None when it gives none.
    Raises InputError naming every missing or implausible value."""
    given = given_values(section)
    if not section.get("sidecar") and not given:
        return None
    reading = read_given(section.get("sidecar", ""), section.get("sequence", ""), given,
                         require_file=bool(section.get("sidecar")))
    return reading.protocol()


def protocol_from_sidecar(sidecar: Mapping[str, Any], source: str = "<sidecar>",
                          sequence: str | None = None,
                          overrides: Mapping[str, float] | None = None) -> Protocol:
    """The :class:`Protocol` of a sidecar (:func:`read_protocol` then :meth:`Reading.protocol`).

    ``overrides`` use sidecar names (``RepetitionTime`` = the TR of the family's signal
    equation: the inversion TR of mprage/ir, the excitation TR otherwise; ``EchoTime``,
    ``InversionTime``, ``FlipAngle``, ``MagneticFieldStrength``); None leaves a field alone.
    Raises InputError (a ValueError) naming ``source`` for any error or missing value.
    """
    fam = sequence or infer_sequence(sidecar)
    values = {}
    for k, v in (overrides or {}).items():
        if k == "RepetitionTime":
            values["tr_prep_s" if fam in ("mprage", "ir", "mp2rage") else "tr_readout_s"] = v
        elif k in _BIDS_OVERRIDES:
            values[_BIDS_OVERRIDES[k]] = v
        else:
            raise ValueError(f"{source}: unknown override {k!r}.")
    return read_protocol(sidecar, source, family=sequence, overrides=values).protocol()


def protocol_for(image_path: str, sequence: str | None = None,
                 overrides: Mapping[str, float] | None = None) -> Protocol:
    """Protocol of an image from its sidecar (and optional overrides).  Raises InputError."""
    path = sidecar_path(image_path)
    sidecar = read_sidecar(path) if os.path.exists(path) or not overrides else {}
    return protocol_from_sidecar(sidecar, source=path, sequence=sequence, overrides=overrides)


def read_site_table(path: str) -> dict[str, dict[str, float]]:
    """A per-site parameter table: TSV with a ``site`` column and any of :data:`FIELDS`
    (BIDS units; empty cells = not given).  Returns ``{site: {field: value}}``.

    Raises InputError naming the file for a missing ``site`` column, an unknown column, a
    repeated site or a non-numeric cell.
    """
    if not os.path.exists(path):
        raise InputError(f"{path}: site parameter table not found.")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "site" not in rows[0]:
        raise InputError(f"{path}: a site table needs a header with a 'site' column and any of "
                         f"{', '.join(FIELDS)} (tab-separated).")
    unknown = sorted(set(rows[0]) - {"site", *FIELDS})
    if unknown:
        raise InputError(f"{path}: unknown columns {unknown}; known: site, {', '.join(FIELDS)}.")
    table = {}
    for i, row in enumerate(rows, start=2):
        site = row["site"].strip()
        if site in table:
            raise InputError(f"{path}: line {i}: site {site!r} appears twice.")
        table[site] = {}
        for k, v in row.items():
            if k == "site" or v is None or not v.strip():
                continue
            try:
                table[site][k] = float(v)
            except ValueError:
                raise InputError(f"{path}: line {i}: {k} = {v!r} is not a number.") from None
    return table



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
