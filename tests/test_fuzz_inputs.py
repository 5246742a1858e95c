"""Fuzzed inputs (hypothesis): the NIfTI, mask and sidecar loading paths end in a result or one
:class:`~phyjax.data.nifti.InputError` naming the file -- never another exception, never a
silently wrong result.

Generated: random and truncated files, NIfTI images of 1 to 5 dimensions and several data types
with NaN/Inf voxels, oblique, flipped, singular and non-finite affines, empty, non-overlapping,
off-grid and wrong-dimensional masks, and JSON sidecars whose acquisition fields have the wrong
type (strings, booleans, lists, objects, null, huge integers) or the wrong unit (ms, gauss,
radians), plus non-UTF-8 and non-object files.  What a result must satisfy is checked against the
generated input (the voxels written, the affine, plausible protocol values).  Bounded for CI:
``derandomize`` (the same cases every run), no example database, a fixed ``max_examples`` each.
"""

import gzip
import io
import json
import math
import os
import tempfile
import warnings

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from phyjax.data.bids import Scan
from phyjax.data.nifti import InputError, load_volume
from phyjax.data.sidecar import read_protocol, read_sidecar
from phyjax.data.volumes import load_scans
from phyjax.experiments.harmonize import load_mask

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=12,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _expect_input_error(call, *paths):
    """``call()``'s result, or None after an InputError whose message names one of ``paths``.
    Any other exception fails the test (re-raised)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            return call()
    except InputError as exc:
        assert any(os.path.basename(p) in str(exc) for p in paths), (str(exc), paths)
        return None


# ----------------------------------------------------------------------------- geometry

def _rotation(angles):
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


@st.composite
def affines(draw, allow_bad=True):
    """Axis-aligned, flipped or oblique 4x4 affines (voxels 0.5-4 mm); with ``allow_bad`` also
    singular (a zero column) and non-finite ones."""
    kind = draw(st.sampled_from(["ras", "flipped", "oblique", "singular", "nonfinite"]
                                if allow_bad else ["ras", "flipped", "oblique"]))
    zooms = np.array(draw(st.lists(st.floats(0.5, 4.0), min_size=3, max_size=3)))
    rot = np.eye(3)
    if kind == "flipped":
        rot = np.diag(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3)))
    elif kind == "oblique":
        rot = _rotation(draw(st.lists(st.floats(-0.6, 0.6), min_size=3, max_size=3)))
    a = np.eye(4)
    a[:3, :3] = rot * zooms
    a[:3, 3] = draw(st.lists(st.floats(-50, 50), min_size=3, max_size=3))
    if kind == "singular":
        a[:3, draw(st.integers(0, 2))] = 0.0
    elif kind == "nonfinite":
        a[draw(st.integers(0, 2)), draw(st.integers(0, 3))] = draw(
            st.sampled_from([np.nan, np.inf]))
    return a, kind


def _nifti_bytes(data, affine):
    """A NIfTI-1 file of ``data`` whose sform is ``affine`` as given, even singular or
    non-finite (no qform: nibabel cannot decompose such an affine into one)."""
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header["qform_code"] = 0
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = np.asarray(affine)[:3]
    return header.binaryblock + raw[len(header.binaryblock):]


def _good_affine(a):
    m = np.asarray(a, np.float64)
    return bool(np.isfinite(m).all() and abs(np.linalg.det(m[:3, :3])) > 1e-6)


# ----------------------------------------------------------------------------- NIfTI files

NIFTI_KINDS = ["uint8", "int16", "float32", "float64", "complex64", "truncated", "random",
               "empty"]


@st.composite
def nifti_cases(draw, kind):
    """``(bytes of a file, array written or None, affine)`` of one ``kind``: an image of that
    data type (1 to 5 dimensions, NaN/Inf voxels for floats, any affine), a truncated image,
    random bytes or an empty file."""
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=600)), None, None
    if kind == "empty":
        return b"", None, None
    dtype = np.dtype(kind if kind != "truncated" else "float32")
    ndim = draw(st.sampled_from([3, 3, 3, 4, 1, 2, 5]))
    shape = tuple(draw(st.lists(st.sampled_from([2, 3, 5, 1, 0]), min_size=ndim,
                                max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    data = (rng.random(shape) * 100).astype(dtype)
    if dtype.kind == "c":
        data = data + 1j * draw(st.sampled_from([0.0, 1.0])) * data
    if dtype.kind == "f" and data.size and draw(st.booleans()):
        flat = data.reshape(-1)
        flat[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from([np.nan, np.inf,
                                                                           -np.inf]))
    affine, _ = draw(affines())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = _nifti_bytes(data, affine)
    if kind == "truncated":
        return raw[:draw(st.integers(0, len(raw) - 1))], None, None
    return raw, data, affine


@pytest.mark.parametrize("kind", NIFTI_KINDS)
@FUZZ
@given(data=st.data(), gz=st.booleans())
def test_fuzzed_nifti_loads_or_names_the_file(kind, data, gz):
    raw, written, affine = data.draw(nifti_cases(kind))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sub-01_T1w.nii" + (".gz" if gz else ""))
        with open(path, "wb") as f:
            f.write(gzip.compress(raw) if gz else raw)
        out = _expect_input_error(lambda: load_volume(path), path)
    event("refused" if out is None else "loaded")
    if out is None:
        return
    assert written is not None, f"a {kind} file was loaded as an image"
    got, image = out
    want = np.asarray(written)
    if want.ndim == 4 and want.shape[-1] == 1:
        want = want[..., 0]
    assert got.dtype == np.float32 and got.ndim == 3 and min(got.shape) >= 2
    assert np.isfinite(got).all()
    assert want.dtype.kind != "c", "complex voxels cast to float (imaginary part dropped)"
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)
    assert _good_affine(image.affine), image.affine
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)


# ----------------------------------------------------------------------------- masks

MASK_KINDS = ["good", "empty", "nan", "2d", "4d", "far", "other_grid", "probability",
              "negative", "dark_image"]


@st.composite
def mask_cases(draw, kind):
    """A valid 8x8x8 image (RAS, flipped or oblique) and a mask of one ``kind``: a plain good
    one, empty, with a NaN, 2-D, 4-D, shifted out of the field of view, on another (possibly
    broken) grid, a probability map, negative, or good on an all-zero image."""
    image_affine, _ = draw(affines(allow_bad=False))
    mask = np.zeros((8, 8, 8), np.float32)
    lo = draw(st.integers(0, 4))
    mask[lo:lo + 4, lo:lo + 4, lo:lo + 4] = 1.0
    mask_affine = image_affine.copy()
    if kind == "empty":
        mask[:] = 0
    elif kind == "nan":
        mask[lo, lo, lo] = np.nan
    elif kind == "2d":
        mask = mask[:, :, 0]
    elif kind == "4d":
        mask = np.stack([mask, mask], axis=-1)
    elif kind == "far":
        mask_affine[:3, 3] += 1000.0
    elif kind == "other_grid":
        mask_affine, _ = draw(affines())
    elif kind == "probability":
        mask = mask * draw(st.floats(0.0, 1.0))
    elif kind == "negative":
        mask = -mask
    return image_affine, mask, mask_affine, kind


def _write_image_and_mask(tmp, image_affine, mask, mask_affine, dark=False):
    image = np.zeros((8, 8, 8), np.float32)
    if not dark:
        image[1:7, 1:7, 1:7] = 50.0
        image[3:5, 3:5, 3:5] = 100.0
    path = os.path.join(tmp, "sub-01_T1w.nii.gz")
    mask_path = os.path.join(tmp, "sub-01_desc-brain_mask.nii.gz")
    nib.save(nib.Nifti1Image(image, image_affine), path)
    with warnings.catch_warnings(), open(mask_path + ".raw", "wb") as f:
        warnings.simplefilter("ignore")
        f.write(_nifti_bytes(mask, mask_affine))
    with open(mask_path + ".raw", "rb") as f, open(mask_path, "wb") as out:
        out.write(gzip.compress(f.read()))
    return path, mask_path


@pytest.mark.parametrize("kind", MASK_KINDS)
@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_fuzzed_masks_match_or_name_the_file(kind, data):
    image_affine, mask, mask_affine, kind = data.draw(mask_cases(kind))
    with tempfile.TemporaryDirectory() as tmp:
        path, mask_path = _write_image_and_mask(tmp, image_affine, mask, mask_affine,
                                                dark=kind == "dark_image")
        img = nib.load(path)
        # Harmonize mode's mask reader ...
        got = _expect_input_error(lambda: load_mask(mask_path, path, img), mask_path)
        # ... and the dataset loader's (two passes: headers + masks, then voxels).
        sidecar = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 0.02,
                   "EchoTime": 0.004, "FlipAngle": 25, "MagneticFieldStrength": 3}
        scan = Scan(subject="01", site="a", path=path, reading=read_protocol(sidecar, "x.json"),
                    mask_path=mask_path)
        vols = _expect_input_error(lambda: load_scans([scan]), mask_path, path)
    event(f"harmonize {'refused' if got is None else 'matched'}, dataset "
          f"{'refused' if vols is None else 'loaded'}")
    should_fail = kind in ("empty", "nan", "2d", "4d", "far", "negative") or (
        kind == "probability" and mask.max() <= 0.5) or (
        kind == "other_grid" and not _good_affine(mask_affine))
    if should_fail:
        assert got is None and vols is None, f"a {kind} mask was accepted"
        return
    if kind == "dark_image":   # the mask is fine; nothing to normalize the image by
        assert got is not None and vols is None
        return
    if kind in ("good", "probability"):
        assert got is not None and vols is not None, f"a {kind} mask was refused"
    for result in (got, None if vols is None else vols["01"]["a"].mask):
        if result is not None:
            assert result.dtype == bool and result.any()
    if got is not None and kind != "other_grid":
        np.testing.assert_array_equal(got, mask > 0.5)
    if vols is not None:
        vol = vols["01"]["a"]
        assert np.isfinite(vol.image).all() and vol.mask.any()


# ----------------------------------------------------------------------------- sidecars

KEYS = ["RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "MagneticFieldStrength",
        "RepetitionTimePreparation", "RepetitionTimeExcitation", "EchoTrainLength",
        "ScanningSequence", "SequenceVariant", "SequenceName", "PulseSequenceType", "ScanOptions",
        "Manufacturer", "ImageType", "SeriesDescription", "MRAcquisitionType"]

_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 5),
    st.floats(0, 5).map(lambda x: x * 1000),                   # ms instead of s
    st.sampled_from([1.5, 3.0, 15000.0, 30000.0, 0.14, 0.0]),  # T, gauss, radians
    st.integers(-10, 10 ** 6), st.just(10 ** 400), st.booleans(), st.none(),
    st.sampled_from(["2.3", "2300 ms", "GR", "IR", "GR\\IR", "SP\\MP", "tfl3d1", "efgre3d",
                     "Siemens", "GE", "Philips", "mprage", "", "NaN", "1e999"]),
    st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=6)


VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "vendor_t1_sidecars")
SIDECAR_KINDS = sorted(f for f in os.listdir(VENDOR) if f.endswith(".json")) + [
    "random_fields", "array", "not_json", "not_utf8"]


@st.composite
def sidecar_files(draw, kind):
    """Bytes of a sidecar file: a real vendor sidecar (``kind`` = its file name) with up to
    three fields replaced by values of the wrong type or unit, or removed; random fields; a JSON
    array; not JSON; not UTF-8."""
    if kind == "not_json":
        return draw(st.text(max_size=40)).encode() + b"{"
    if kind == "not_utf8":
        return b'{"EchoTime": "\xff\xfe"}'
    if kind in ("random_fields", "array"):
        fields = draw(st.dictionaries(st.sampled_from(KEYS), _values, max_size=10))
        return json.dumps([fields] if kind == "array" else fields).encode()
    with open(os.path.join(VENDOR, kind)) as f:
        fields = json.load(f)
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)):
        how = draw(st.sampled_from(["unit", "unit", "type", "remove"]))
        if how == "remove":
            fields.pop(key, None)
        elif how == "type" or not isinstance(fields.get(key), (int, float)):
            fields[key] = draw(_values)
        else:   # the wrong unit or sign: ms, gauss, radians, 0, negative
            fields[key] = fields[key] * draw(st.sampled_from([1000.0, 1e4, math.pi / 180, 0.0,
                                                              -1.0]))
    return json.dumps(fields).encode()     # NaN/Infinity written as JSON extensions


@pytest.mark.parametrize("kind", SIDECAR_KINDS)
@FUZZ
@given(data=st.data())
def test_fuzzed_sidecars_read_or_name_the_file(kind, data):
    raw = data.draw(sidecar_files(kind))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sub-01_T1w.json")
        with open(path, "wb") as f:
            f.write(raw)

        def read():
            reading = read_protocol(read_sidecar(path), path)
            reading.row()                        # what inspect mode writes must not fail
            return reading.protocol()

        protocol = _expect_input_error(read, path)
    event("refused" if protocol is None else protocol.sequence)
    if protocol is None:
        return
    assert kind not in ("array", "not_json", "not_utf8")
    # A protocol that comes back is physically plausible (SI units inside: s, rad, T).
    tr, te = float(protocol.tr), float(protocol.te)
    assert math.isfinite(tr) and 1e-3 <= tr <= 30.0, protocol
    assert math.isfinite(te) and 0.0 <= te < tr, protocol
    assert 0.01 <= float(protocol.field_strength) <= 20.0, protocol
    assert 0.0 <= float(protocol.flip_angle) <= math.pi + 1e-9, protocol
    if protocol.sequence in ("mprage", "ir"):
        assert 0 < float(protocol.ti) < tr, protocol
