"""The embedded default dataset: real anatomy -> quantitative maps -> subjects -> sites.

Anatomy is nilearn's bundled MNI ICBM152 2009a template (GM and WM
probability maps; CSF = filled brain region minus GM minus WM).  Each
"subject" is a smooth random deformation of it with jittered tissue values and
a smooth T1 texture; each "site" images every subject with its own protocol
and scanner effects (B1+, bias field, slice profile, gain, Rician noise).  The
result is written as a BIDS-like folder and read back through
:func:`phyjax.data.bids.scan_bids`, the loader a user's data goes through.

Ground truth (noise-free quantitative maps per field strength and the brain
mask) and an independent re-scan of every subject with the target site's protocol (the ceiling
of any harmonization) go to ``derivatives/phyjax-sim``.

Partial volume is imaged at the signal level (:func:`signed_image`), subjects carry random
atrophy (:func:`atrophy`), and the sites include a thick-slice 2-D spin echo (format 4).
With ``data.test_anatomy="real_philips"`` the held-out subjects are made from a second, real
anatomy instead (:func:`load_real_anatomy`): heads no method was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from phyjax.data import bids
from phyjax.data.nifti import save_volume
from phyjax.data.sidecar import protocol_to_sidecar
from phyjax.parallel import ordered_map
from phyjax.physics import scanner, signal, tissues
from phyjax.physics.sequences import Protocol

DERIVATIVES = "derivatives/phyjax-sim"
_FORMAT_VERSION = 6
RESCAN_KEY = 7919   # fold_in of a subject's target-site key that draws its re-scan


def site_protocol(site_cfg) -> Protocol:
    """Protocol of a site config (times in s, flip angle in degrees; ``tr_readout`` and
    ``n_readouts``, when given and > 0, give an ``mprage`` site its full readout train)."""
    p = Protocol.from_degrees(site_cfg["sequence"], tr=site_cfg["tr"], te=site_cfg["te"],
                              ti=site_cfg.get("ti", 0.0),
                              flip_angle_deg=site_cfg.get("flip_angle", 0.0),
                              field_strength=site_cfg["field_strength"])
    if p.sequence == "mprage" and float(site_cfg.get("n_readouts", 0) or 0) > 0:
        p = p.replace(tr_readout=float(site_cfg["tr_readout"]),
                      n_readouts=float(site_cfg["n_readouts"]))
    return p



#: dcm2niix style per vendor and family (the real sidecars in ``tests/data/vendor_t1_sidecars``
#: and their physicist's reading): the fields written, and what ``RepetitionTime`` holds.
_VENDOR_STYLE = {
    ("siemens", "mprage"): dict(tr="prep", fields={
        "ManufacturersModelName": "MAGNETOM Prisma Fit", "ScanningSequence": "GR\\IR",
        "SequenceVariant": "SK\\SP\\MP", "SequenceName": "*tfl3d1_16ns",
        "PulseSequenceDetails": "%SiemensSeq%\\tfl", "MRAcquisitionType": "3D"}),
    ("ge", "mprage"): dict(tr="readout", fields={   # IR-SPGR (BRAVO): no inversion TR written
        "ManufacturersModelName": "DISCOVERY MR750", "ScanningSequence": "GR",
        "SequenceVariant": "SS\\SP\\SK", "SequenceName": "efgre3d", "MRAcquisitionType": "3D"}),
    ("siemens", "se"): dict(tr="prep", fields={      # 2-D spin-echo T1w, thick slices
        "ManufacturersModelName": "Avanto", "ScanningSequence": "SE", "SequenceVariant": "SK\\SP",
        "SequenceName": "*se2d1", "MRAcquisitionType": "2D"}),
    ("philips", "spgr"): dict(tr="readout", fields={  # 3-D T1-FFE
        "ManufacturersModelName": "Ingenia", "ScanningSequence": "GR", "SequenceVariant": "SP",
        "MRAcquisitionType": "3D"}),
}


def vendor_sidecar(site_cfg, protocol: Protocol) -> tuple[dict, dict]:
    """``(sidecar, missing)``: the JSON sidecar of a site as its vendor's dcm2niix writes it
    (BIDS units: s, degrees, T), and the protocol values it leaves out (:data:`phyjax.data.
    sidecar.FIELDS` names; a site table's row).  Siemens MPRAGE: ``RepetitionTime`` is the time
    between inversions; echo spacing and readouts per inversion are not written.  GE IR-SPGR:
    ``RepetitionTime`` is the readout TR; the time between inversions and the readouts per
    inversion are not written.  Philips T1-FFE: everything an SPGR needs.  Other vendors or
    families, and a GE site without a readout train: the generic BIDS fields of
    :func:`~phyjax.data.sidecar.protocol_to_sidecar`."""
    vendor = str(site_cfg.get("manufacturer", "")).lower()
    style = _VENDOR_STYLE.get((vendor, protocol.sequence))
    if style is None:
        return protocol_to_sidecar(protocol), {}
    out = {"Manufacturer": site_cfg["manufacturer"],
           "MagneticFieldStrength": float(protocol.field_strength), **style["fields"],
           "EchoTime": float(protocol.te),
           "FlipAngle": round(float(np.rad2deg(float(protocol.flip_angle))), 6)}
    missing = {}
    has_train = float(protocol.n_readouts) > 0
    if protocol.sequence == "mprage":
        out["InversionTime"] = float(protocol.ti)
        if style["tr"] == "prep":
            out["RepetitionTime"] = float(protocol.tr)
            if has_train:
                missing = {"tr_readout_s": float(protocol.tr_readout),
                           "n_readouts": float(protocol.n_readouts)}
        elif not has_train:   # no readout TR to write as RepetitionTime: generic BIDS
            return protocol_to_sidecar(protocol), {}
        else:
            out["RepetitionTime"] = float(protocol.tr_readout)
            missing = {"tr_prep_s": float(protocol.tr), "n_readouts": float(protocol.n_readouts)}
    else:
        out["RepetitionTime"] = float(protocol.tr)
    return out, missing


def slice_thickness_mm(slice_fwhm: float, affine) -> float:
    """``SliceThickness`` (mm) of a scan imaged with a slice profile of FWHM ``slice_fwhm``
    voxels along its last axis (:func:`acquire`) on the grid of ``affine``, as dcm2niix writes
    it: the profile's FWHM (the voxel itself where the profile is narrower than one voxel).
    :meth:`phyjax.data.volumes.Volume.slice_fwhm` reads it back."""
    voxel = float(np.linalg.norm(np.asarray(affine, np.float64)[:3, 2]))
    return round(voxel * max(1.0, float(slice_fwhm)), 6)


def site_effects(site_cfg) -> scanner.ScannerEffects:
    """Scanner effects of a site config."""
    keys = ("b1_scale", "b1_curvature", "bias_amplitude", "noise_fraction", "slice_fwhm", "gain")
    return scanner.ScannerEffects(**{k: float(site_cfg[k]) for k in keys if k in site_cfg})


def load_anatomy(voxel_size: int = 2):
    """MNI152 2009a tissue probabilities cropped to the head, at ``voxel_size`` mm (an integer: nilearn resamples the template).

    Returns ``(probs, mask, affine)``: ``probs`` float32 ``(3, X, Y, Z)`` for
    csf, gm, wm (summing to at most 1), ``mask`` bool ``(X, Y, Z)``, ``affine`` 4x4.
    """
    from nilearn import datasets  # heavy import, only needed here

    gm_img = datasets.load_mni152_gm_template(resolution=int(voxel_size))
    gm = np.asarray(gm_img.get_fdata(), np.float32).clip(0, 1)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=int(voxel_size)).get_fdata(),
                    np.float32).clip(0, 1)
    probs, region = _tissue_region(gm, wm)
    # Crop to the region's bounding box plus a margin, keeping the affine exact.
    idx = np.argwhere(region)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, region.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = gm_img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return probs[(slice(None),) + sl], region[sl], affine


def _tissue_region(gm, wm):
    """``(probs (3, X, Y, Z) csf/gm/wm, region)`` from GM and WM probabilities: the brain region
    is the parenchyma closed and hole-filled (ventricles) plus a thin rim of sulcal/extra-axial
    CSF; CSF fills the region's remainder."""
    parenchyma = (gm + wm) > 0.5
    region = ndimage.binary_closing(parenchyma, iterations=2)
    region = ndimage.binary_fill_holes(region)
    region = ndimage.binary_dilation(region, iterations=1)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * region
    return np.stack([csf, gm * region, wm * region]).astype(np.float32), region


#: Anatomies the held-out subjects of the default dataset can be made from
#: (``data.test_anatomy``): ``mni152`` -- the training template (the default);
#: ``real_philips`` -- one real adult head, the FSL FAST GM/WM partial-volume maps of a 1 mm
#: Philips 3D T1w shipped in ``phyjax/data/anatomy`` (see its README: BSD-2-Clause).
TEST_ANATOMIES = ("mni152", "real_philips")
_ANATOMY_DIR = os.path.join(os.path.dirname(__file__), "anatomy")


def load_real_anatomy(voxel_size: int, shape, name: str = "real_philips"):
    """A real subject's tissue probabilities ``(3, *shape)`` (csf, gm, wm) at ``voxel_size`` mm.

    The 1 mm FAST GM/WM maps are cut to their largest connected component (the shipped scan has
    two synthetic spheres beside the left hemisphere), averaged over ``voxel_size``^3 blocks
    (exact partial volumes at an integer voxel size), given the brain region and CSF of
    :func:`load_anatomy`'s recipe, and centred (by the region's bounding box) in an array of
    ``shape`` -- the template crop's grid, so held-out and training subjects share one grid
    and affine.  The head is not registered to MNI space: it keeps its own size, shape and
    folding (RAS axes as the template's).

    Raises ValueError for an unknown ``name`` or a head larger than ``shape``.
    """
    if name != "real_philips":
        raise ValueError(f"data.test_anatomy={name!r}; expected one of {TEST_ANATOMIES}.")
    import nibabel as nib

    maps = []
    for tissue in ("gm", "wm"):
        img = nib.load(os.path.join(_ANATOMY_DIR, f"philips_t1w_fast_pve_{tissue}.nii.gz"))
        if nib.aff2axcodes(img.affine) != ("R", "A", "S"):
            raise ValueError(f"{img.get_filename()}: expected RAS axes, got "
                             f"{nib.aff2axcodes(img.affine)}.")
        maps.append(np.asarray(img.get_fdata(), np.float32).clip(0, 1))
    gm, wm = maps
    labels, _ = ndimage.label((gm + wm) > 0.5)
    head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    head = ndimage.binary_dilation(head, iterations=3)   # keep the partial-volume rim
    gm, wm = gm * head, wm * head
    v = int(voxel_size)
    crop = tuple(slice(0, (n // v) * v) for n in gm.shape)
    gm, wm = (m[crop].reshape(m[crop].shape[0] // v, v, m[crop].shape[1] // v, v,
                              m[crop].shape[2] // v, v).mean((1, 3, 5)) for m in (gm, wm))
    probs, region = _tissue_region(gm, wm)
    idx = np.argwhere(region)
    lo, hi = idx.min(0), idx.max(0) + 1
    size = hi - lo
    if np.any(size > np.asarray(shape)):
        raise ValueError(f"the {name} head ({tuple(size)} voxels) does not fit the template "
                         f"grid {tuple(shape)} at {voxel_size} mm.")
    out = np.zeros((3,) + tuple(shape), np.float32)
    start = (np.asarray(shape) - size) // 2
    dst = tuple(slice(a, a + n) for a, n in zip(start, size))
    out[(slice(None),) + dst] = probs[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


def _smooth_field(rng, shape, sigma_vox):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox)
    return field / (np.abs(field).max() + 1e-12)


def atrophy(probs, level: float, voxel_size: float):
    """Tissue probabilities ``(3, X, Y, Z)`` (csf, gm, wm) after a simple model of atrophy.

    Two patterns of brain ageing and neurodegeneration, each scaled by ``level`` (0 = none, 1 =
    all of the affected tissue lost): cortical thinning from the pial side -- a fraction
    ``level * w`` of each voxel's GM becomes CSF, where ``w`` (0-1) is the share of CSF among
    the CSF and WM around the voxel (2 mm Gaussian neighbourhood), so the outer cortex thins
    first -- and ventricular enlargement: WM within ~6 mm of the ventricles (CSF deeper than
    15 mm from the brain's edge) becomes CSF in proportion to ``level``.  The total tissue
    fraction of every voxel is unchanged, so the brain region (and mask) stays the same.
    At 2 mm, ``level`` 0.3 turns 13 % of the GM into CSF and enlarges the ventricles ~1.6x.
    A morphological model for anatomical variety, not a biophysical one.
    """
    if level <= 0:
        return probs
    csf, gm, wm = (np.asarray(p, np.float64) for p in probs)
    sigma = 2.0 / voxel_size
    near_csf, near_wm = ndimage.gaussian_filter(csf, sigma), ndimage.gaussian_filter(wm, sigma)
    pial = near_csf / np.maximum(near_csf + near_wm, 1e-6)
    d_gm = level * gm * pial
    region = probs.sum(0) > 0.5
    depth_mm = ndimage.distance_transform_edt(region) * voxel_size
    ventricles = ((csf > 0.5) & (depth_mm > 15.0)).astype(np.float64)
    around = ndimage.gaussian_filter(ventricles, 3.0 / voxel_size)
    around = np.clip(2.0 * around / max(around.max(), 1e-6), 0.0, 1.0)
    d_wm = level * wm * around
    return np.stack([csf + d_gm + d_wm, gm - d_gm, wm - d_wm]).astype(np.float32)


def sharpen(probs, gamma: float):
    """Tissue probabilities ``(3, X, Y, Z)`` with each voxel's tissue shares raised to ``gamma``
    and renormalised (``p_t^gamma / sum_s p_s^gamma`` times the voxel's total, which is kept):
    ``gamma`` > 1 narrows the partial-volume band at every boundary.  A population template
    such as MNI152 is an average of many heads, so its boundaries are wider than any one
    head's (at 2 mm, 32 % of the template's brain voxels hold > 90 % of one tissue against 45 %
    in the real head of :func:`load_real_anatomy`); sharpening gives training subjects an
    individual's crisper anatomy.  ``gamma`` = 1 returns ``probs`` unchanged."""
    if gamma == 1.0:
        return probs
    probs = np.asarray(probs, np.float64)
    total = probs.sum(0)
    shares = probs / np.maximum(total, 1e-12)
    powered = shares ** float(gamma)
    out = powered / np.maximum(powered.sum(0), 1e-12) * total
    return out.astype(np.float32)


#: Per-head relaxation of white-matter lesions relative to the head's own WM: T1, T2 and T2*
#: lengthened and PD raised by factors drawn uniformly from these ranges (:func:`make_subject`).
#: T1-hypointense MS lesions have T1 and T2 well above normal-appearing WM, up to near CSF's
#: T1 in "black holes" (e.g. Magn. Reson. Imaging 12:33, 1994, pixel-wise relaxation mapping in
#: MS; Riva et al., AJNR 30:1394, 2009, black holes separated by their T1); the ranges span
#: lesions from slightly hypointense to darker than GM on a 3 T MPRAGE (WM T1 0.81 s -> 1.13-1.78
#: s, GM 1.35 s).  A relaxometric model for variety, not a fit to one study.
LESION_FACTORS = {"t1": (1.4, 2.2), "t2": (1.5, 3.0), "t2star": (1.3, 2.5), "pd": (1.0, 1.2)}
#: ``data.lesion_subjects``: every subject has lesions, or only the held-out ones (no method
#: sees a lesion in training: a harmonizer fitted on healthy heads, applied to patients)
LESION_SUBJECTS = ("all", "held_out")
LESION_RADIUS_MM = (3.0, 6.0)   # lesion radii (6-12 mm diameter)
LESION_MARGIN_MM = 4.0          # deep WM (>= 90 %) this far around every lesion


def wm_lesions(probs, n: int, voxel_size: float, rng, radius_mm=LESION_RADIUS_MM,
               margin_mm: float = LESION_MARGIN_MM) -> np.ndarray:
    """Fractions ``(X, Y, Z)`` of white matter turned into lesion tissue: up to ``n`` round
    lesions of radii drawn from ``radius_mm`` (mm), each centred in deep white matter --
    every voxel within ``radius + margin_mm`` of its centre holds >= 90 % WM in ``probs``
    ``(3, X, Y, Z)`` (csf, gm, wm) -- and not overlapping another lesion's margin, so a ring of
    normal-appearing WM surrounds each lesion (:class:`phyjax.evaluate.measures.LesionMeasure`
    measures contrast against it).  Each lesion is a ball whose edge is smoothed over one voxel;
    its fraction never exceeds the voxel's WM.  Fewer than ``n`` are placed where the head has
    too little deep WM (the default data's 2 mm heads hold 3-6 when asked for 4-8).  ``rng``: a
    NumPy Generator.  Raises ValueError for ``n < 0``.
    """
    if n < 0:
        raise ValueError(f"n={n} lesions; expected >= 0.")
    wm = np.asarray(probs[2], np.float64)
    shape = wm.shape
    lesion = np.zeros(shape, np.float64)
    free = ndimage.distance_transform_edt(wm >= 0.9) * voxel_size   # mm to the nearest non-deep-WM
    grid = np.indices(shape, dtype=np.float64)
    for _ in range(int(n)):
        r = float(rng.uniform(*radius_mm))
        candidates = np.argwhere(free >= r + margin_mm)
        if len(candidates) == 0:
            break
        centre = candidates[rng.integers(len(candidates))]
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) * voxel_size
        ball = np.clip((r - dist) / voxel_size + 0.5, 0.0, 1.0)    # 1 inside, 1-voxel ramp
        lesion = np.maximum(lesion, ball)
        # keep the next lesions (and their margins) off this one's margin
        free = np.minimum(free, np.maximum(dist - r - 2 * margin_mm, 0.0))
    return np.minimum(lesion, wm).astype(np.float32)


def make_subject(probs, seed: int, deform_mm: float, voxel_size: float, jitter: float,
                 texture: float, atrophy_max: float = 0.0, sharpness_max: float = 0.0,
                 lesions_max: int = 0):
    """One synthetic subject: deformed tissue probabilities and per-tissue value factors.

    Returns ``(probs, factors, t1_texture)``: deformed ``(3, X, Y, Z)``
    probabilities, ``(3, 4)`` multiplicative jitter of (t1, t2, t2star, pd) per
    tissue, and a smooth ``(X, Y, Z)`` T1 modulation around 1.  With ``atrophy_max`` > 0 the
    subject's :func:`atrophy` level is drawn uniformly from ``[0, atrophy_max]``, with
    ``sharpness_max`` > 0 its :func:`sharpen` exponent from ``[1, 1 + sharpness_max]`` (each from
    its own stream of ``seed``, so the other draws do not depend on them).  With
    ``lesions_max`` > 0 the head gets between ``ceil(lesions_max / 2)`` and ``lesions_max``
    white-matter lesions (:func:`wm_lesions`, placed after atrophy) as a fourth compartment:
    ``probs`` is then ``(4, X, Y, Z)`` (csf, gm, wm, lesion; the lesion fraction taken from the
    WM) and ``factors`` ``(4, 4)``, its last row the lesion's (t1, t2, t2star, pd) relative to
    the head's WM (:data:`LESION_FACTORS`), all from a third stream of ``seed``.
    """
    rng = np.random.default_rng(seed)
    shape = probs.shape[1:]
    sigma = 12.0 / voxel_size
    disp = [_smooth_field(rng, shape, sigma) * deform_mm / voxel_size for _ in range(3)]
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = [g + d for g, d in zip(grid, disp)]
    warped = np.stack([ndimage.map_coordinates(p, coords, order=1, mode="constant")
                       for p in probs]).astype(np.float32)
    factors = np.clip(1.0 + jitter * rng.standard_normal((3, 4)), 0.7, 1.3)
    factors[:, 3] = np.minimum(factors[:, 3], 1.0 / tissues.tissue_array(3.0)[:, 3])  # PD <= 1
    t1_texture = 1.0 + texture * _smooth_field(rng, shape, 3.0 / voxel_size * 2)
    if sharpness_max > 0:
        warped = sharpen(warped, 1.0 + float(np.random.default_rng([seed, 11]).uniform(
            0.0, sharpness_max)))
    if atrophy_max > 0:
        level = float(np.random.default_rng([seed, 7]).uniform(0.0, atrophy_max))
        warped = atrophy(warped, level, voxel_size)
    if lesions_max > 0:
        lrng = np.random.default_rng([seed, 13])
        n = int(lrng.integers((lesions_max + 1) // 2, lesions_max + 1))
        lesion = wm_lesions(warped, n, voxel_size, lrng)
        warped = np.concatenate([warped[:2], (warped[2] - lesion)[None], lesion[None]])
        rel = np.array([lrng.uniform(*LESION_FACTORS[k]) for k in ("t1", "t2", "t2star", "pd")])
        factors = np.concatenate([factors, (factors[2] * rel)[None]])
        factors[3, 3] = min(factors[3, 3], 1.0 / tissues.tissue_array(3.0)[2, 3])   # PD <= 1
    return warped, factors, t1_texture.astype(np.float32)


#: How a voxel holding several tissues is imaged: ``signal`` -- each tissue's signed signal
#: weighted by its volume fraction, then the magnitude (the voxel is a mixture of compartments,
#: as in a real scanner); ``parameter`` -- one signal of the fraction-weighted T1/T2/T2*/PD
#: (the effective-parameter voxel of a measured quantitative map).
PARTIAL_VOLUME = ("signal", "parameter")


def quantitative_maps(probs, factors, t1_texture, field_strength, partial_volume="parameter"):
    """Partial-volume maps ``{"t1","t2","t2star","pd"}`` (s, s, s, fraction), each ``(X, Y, Z)``.

    Relaxation times are probability-weighted means of the tissue values;
    PD is the probability-weighted sum (0 outside the brain, where T1/T2 are set
    to the CSF value to keep the signal equations finite).  These are the ground-truth maps in
    either mode.  ``partial_volume="signal"`` adds the compartments :func:`acquire` then images
    one by one: ``fractions`` ``(3, X, Y, Z)`` (csf, gm, wm), ``tissue_table`` ``(3, 4)`` (t1,
    t2, t2star, pd per tissue, jittered) and ``t1_texture`` ``(X, Y, Z)``.  A head with lesions
    (:func:`make_subject` ``lesions_max``) has 4 compartments: ``probs`` ``(4, X, Y, Z)`` and
    ``factors`` ``(4, 4)``, whose last row scales the WM row of the table.
    Raises ValueError for another ``partial_volume``.
    """
    if partial_volume not in PARTIAL_VOLUME:
        raise ValueError(f"partial_volume {partial_volume!r}; expected one of {PARTIAL_VOLUME}.")
    table = tissues.tissue_array(field_strength)  # (3 tissues, 4 params)
    if len(factors) == 4:   # a lesion compartment (make_subject): its factors are WM-relative
        table = np.concatenate([table, table[2:3]])
    table = table * factors
    total = probs.sum(0)
    weights = probs / np.maximum(total, 1e-6)
    maps = {}
    for j, name in enumerate(("t1", "t2", "t2star")):
        maps[name] = np.einsum("t...,t->...", weights, table[:, j]).astype(np.float32)
        maps[name] = np.where(total > 1e-6, maps[name], table[0, j]).astype(np.float32)
    maps["t1"] = maps["t1"] * t1_texture
    maps["pd"] = np.einsum("t...,t->...", probs, table[:, 3]).astype(np.float32)
    if partial_volume == "signal":
        maps["fractions"] = np.asarray(probs, np.float32)
        maps["tissue_table"] = table.astype(np.float32)
        maps["t1_texture"] = np.asarray(t1_texture, np.float32)
    return maps


def signed_image(maps, protocol: Protocol, b1=1.0):
    """Noise-free signed signal ``(X, Y, Z)`` of ``maps`` (:func:`quantitative_maps`) through
    ``protocol``.

    With compartments (``partial_volume="signal"``) it is the volume-fraction-weighted sum of
    each tissue's signed signal, ``sum_t f_t S(T1_t tex, T2_t, T2*_t, PD_t)`` -- the signal of a
    voxel holding several tissues, whose magnitude is not the signal of the mean T1 (for MPRAGE a
    GM/CSF voxel mixes a positive and a near-null signal); otherwise the signal of the
    effective-parameter maps (:func:`phyjax.physics.signal.signed_signal`).
    """
    if "fractions" not in maps:
        return signal.signed_signal(protocol, maps["t1"], maps["t2"], maps["t2star"],
                                    maps["pd"], b1)
    table, texture = maps["tissue_table"], maps["t1_texture"]
    out = 0.0
    for t, fraction in enumerate(maps["fractions"]):
        t1, t2, t2star, pd = (float(v) for v in table[t])
        out = out + fraction * signal.signed_signal(protocol, t1 * texture, t2, t2star, pd, b1)
    return out


def acquire(maps, mask, protocol: Protocol, effects: scanner.ScannerEffects, key,
            slice_axis: int = -1):
    """Image a subject: signal equation, slice profile, B1+, bias, gain, Rician noise.

    The slice profile integrates the signed signal across the slice before the magnitude is
    taken, as reconstruction does; with compartments in ``maps`` (:func:`quantitative_maps`
    ``partial_volume="signal"``) tissues are mixed at the signal level (:func:`signed_image`).

    Args:
      maps: dict of ``(X, Y, Z)`` maps at ``protocol.field_strength``.
      mask: brain mask ``(X, Y, Z)`` (for the noise reference level).
      key: PRNG key for the bias field and noise.
      slice_axis: the voxel axis the slice profile (``effects.slice_fwhm``) blurs: the last
        (axial slices of a RAS grid, as every site of the default dataset), 1 coronal, 0
        sagittal.
    Returns: float32 magnitude image ``(X, Y, Z)``.
    """
    shape = maps["t1"].shape
    k_bias, k_noise = jax.random.split(key)
    b1 = scanner.b1_field(shape, effects.b1_scale, effects.b1_curvature)
    clean = jnp.abs(scanner.slice_profile(signed_image(maps, protocol, b1), effects.slice_fwhm,
                                          axis=slice_axis))
    coeffs = scanner.sample_bias_coefficients(k_bias, effects.bias_amplitude)
    clean = effects.gain * clean * scanner.bias_field(shape, coeffs)
    sigma = effects.noise_fraction * jnp.nanpercentile(jnp.where(mask, clean, jnp.nan), 99.0)
    return np.asarray(scanner.rician_noise(clean, sigma, k_noise), np.float32)


def dataset_fingerprint(data_cfg) -> str:
    """Hash of everything that determines the default dataset's content."""
    payload = json.dumps({"v": _FORMAT_VERSION, "cfg": _to_plain(data_cfg)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _to_plain(cfg):
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    keys = ("seed", "n_subjects", "voxel_size", "deform_mm", "tissue_jitter", "t1_texture",
            "sites")
    out = {k: cfg[k] for k in keys}
    # Added in format 4; configs written before it get the old behaviour.
    out["atrophy"] = float(cfg.get("atrophy", 0.0))
    out["partial_volume"] = str(cfg.get("partial_volume", "parameter"))
    out["target_site"] = str(cfg.get("target_site", "reference"))   # whose re-scan is written
    test_anatomy = str(cfg.get("test_anatomy", "mni152"))
    if test_anatomy != "mni152":   # only then: the default dataset's fingerprint is unchanged
        out["test_anatomy"] = test_anatomy
        out["n_test"] = int(cfg["n_test"])   # with "seed", which subjects are held out
    if float(cfg.get("anatomy_sharpness", 0.0)) != 0:   # likewise only when set
        out["anatomy_sharpness"] = float(cfg["anatomy_sharpness"])
    if int(cfg.get("lesions", 0)) != 0:   # likewise
        out["lesions"] = int(cfg["lesions"])
        out["lesion_subjects"] = str(cfg.get("lesion_subjects", "all"))
        if out["lesion_subjects"] != "all":   # which subjects are held out
            out["n_test"] = int(cfg["n_test"])
    return out


def held_out_labels(cfg) -> tuple[str, ...]:
    """Subject labels the experiments' split (``data.n_test``, ``data.seed``;
    :func:`phyjax.data.split.split_subjects`) holds out of the default dataset."""
    from phyjax.data.split import split_subjects

    labels = [f"{i + 1:02d}" for i in range(int(cfg["n_subjects"]))]
    return tuple(split_subjects(labels, int(cfg["n_test"]), int(cfg["seed"]))[1])


def dataset_subject(data_cfg, i: int, template, real=None):
    """Subject ``i`` (0-based) of the default dataset of ``data_cfg``: :func:`make_subject`'s
    ``(probs, factors, t1_texture)``, with the seeds and settings the dataset is built with.
    ``template``: :func:`load_anatomy`'s probabilities; ``real``: :func:`load_real_anatomy`'s,
    which a held-out subject (:func:`held_out_labels`) is made from when the config has a
    ``test_anatomy`` (template subjects alone are sharpened).  The one place the ground truth of
    a subject is made -- by the builder and by anything that recomputes it."""
    cfg = _to_plain(data_cfg)
    from_real = (real is not None and "test_anatomy" in cfg
                 and f"{i + 1:02d}" in held_out_labels(cfg))
    lesions = int(cfg.get("lesions", 0))
    if cfg.get("lesion_subjects", "all") == "held_out" and f"{i + 1:02d}" not in held_out_labels(
            cfg):
        lesions = 0   # patients only among the held-out subjects: no method trains on lesions
    return make_subject(
        real if from_real else template, seed=cfg["seed"] * 1000 + i,
        deform_mm=cfg["deform_mm"], voxel_size=cfg["voxel_size"], jitter=cfg["tissue_jitter"],
        texture=cfg["t1_texture"], atrophy_max=cfg["atrophy"],
        sharpness_max=0.0 if from_real else float(cfg.get("anatomy_sharpness", 0.0)),
        lesions_max=lesions)


def _write_subject(root: str, i: int, cfg: dict, template, real, affine, field_strengths,
                   base_key):
    """Subject ``i`` of the default dataset (:func:`dataset_subject`): brain mask and T1/M0 maps
    per B0 (derivatives), and one T1w scan + sidecar per site, each with its own PRNG key
    ``fold_in(fold_in(key, i), j)``."""
    subject = f"{i + 1:02d}"
    s_probs, factors, texture = dataset_subject(cfg, i, template, real)
    s_mask = s_probs.sum(0) > 0.5  # the deformed brain region
    deriv = os.path.join(root, DERIVATIVES, f"sub-{subject}", "anat")
    save_volume(s_mask.astype(np.uint8), affine,
                os.path.join(deriv, f"sub-{subject}_desc-brain_mask.nii.gz"), dtype=np.uint8)
    if len(s_probs) == 4:   # white-matter lesions (data.lesions): fraction and the WM around them
        paths = lesion_paths(root, subject)
        save_volume(s_probs[3], affine, paths["lesion"])
        save_volume(s_probs[2], affine, paths["wm"])
    maps_by_b0 = {}
    for b0 in field_strengths:
        maps = maps_by_b0[b0] = quantitative_maps(s_probs, factors, texture, b0,
                                                   cfg["partial_volume"])
        tag = f"{b0:g}T".replace(".", "p")
        save_volume(maps["t1"] * s_mask, affine,
                    os.path.join(deriv, f"sub-{subject}_acq-{tag}_T1map.nii.gz"))
        save_volume(maps["pd"] * s_mask, affine,
                    os.path.join(deriv, f"sub-{subject}_acq-{tag}_M0map.nii.gz"))
    for j, (site, site_cfg) in enumerate(sorted(cfg["sites"].items())):
        protocol = site_protocol(site_cfg)
        key = jax.random.fold_in(jax.random.fold_in(base_key, i), j)
        maps, effects = maps_by_b0[float(site_cfg["field_strength"])], site_effects(site_cfg)
        image = acquire(maps, s_mask, protocol, effects, key)
        stem = os.path.join(root, f"sub-{subject}", f"ses-{site}", "anat",
                            f"sub-{subject}_ses-{site}_T1w")
        save_volume(image, affine, stem + ".nii.gz")
        sidecar, _ = vendor_sidecar(site_cfg, protocol)
        sidecar["SliceThickness"] = slice_thickness_mm(effects.slice_fwhm, affine)
        sidecar.setdefault("Manufacturer", site_cfg.get("manufacturer", "phyjax-sim"))
        sidecar["InstitutionName"] = site
        with open(stem + ".json", "w") as f:
            json.dump(sidecar, f, indent=2)
        if site == cfg["target_site"]:
            # An independent re-scan with the target protocol (same anatomy and scanner, a new
            # noise and bias-field draw): the ceiling a harmonized image is measured against.
            rescan = acquire(maps, s_mask, protocol, effects, jax.random.fold_in(key, RESCAN_KEY))
            save_volume(rescan, affine, rescan_path(root, subject))


def write_site_table(path: str, sites) -> None:
    """The default dataset's site table (:func:`phyjax.data.sidecar.read_site_table` format):
    per site, the values its vendor-style sidecar leaves out (:func:`vendor_sidecar`) -- what
    a user copies from the scanner's protocol printout."""
    rows = {site: vendor_sidecar(cfg, site_protocol(cfg))[1] for site, cfg in sorted(sites.items())}
    columns = sorted({k for r in rows.values() for k in r})
    lines = ["\t".join(["site"] + columns)]
    lines += ["\t".join([site] + [f"{r[c]:g}" if c in r else "" for c in columns])
              for site, r in rows.items()]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def build_default_dataset(data_cfg, cache_dir: str, progress: bool = True) -> str:
    """Build (once) and return the path of the default BIDS-like dataset.

    The folder name carries :func:`dataset_fingerprint`, so a changed config
    builds a new dataset and an unchanged one is reused.  Writing goes to a
    temporary folder renamed at the end, so an interrupted build leaves nothing
    half-written behind.
    """
    root = os.path.join(cache_dir, f"default-{dataset_fingerprint(data_cfg)}")
    if os.path.exists(os.path.join(root, "dataset_description.json")):
        return root
    cfg = _to_plain(data_cfg)
    if cfg["partial_volume"] not in PARTIAL_VOLUME:
        raise ValueError(f"data.partial_volume={cfg['partial_volume']!r}; expected one of "
                         f"{PARTIAL_VOLUME}.")
    if not 0.0 <= cfg["atrophy"] < 1.0:
        raise ValueError(f"data.atrophy={cfg['atrophy']} must be in [0, 1).")
    os.makedirs(cache_dir, exist_ok=True)
    test_anatomy = cfg.get("test_anatomy", "mni152")
    if test_anatomy not in TEST_ANATOMIES:
        raise ValueError(f"data.test_anatomy={test_anatomy!r}; expected one of "
                         f"{TEST_ANATOMIES}.")
    if not 0 <= int(cfg.get("lesions", 0)) <= 50:
        raise ValueError(f"data.lesions={cfg['lesions']} must be in [0, 50].")
    if cfg.get("lesion_subjects", "all") not in LESION_SUBJECTS:
        raise ValueError(f"data.lesion_subjects={cfg['lesion_subjects']!r}; expected one of "
                         f"{LESION_SUBJECTS}.")
    if not float(cfg.get("anatomy_sharpness", 0.0)) >= 0.0:
        raise ValueError(f"data.anatomy_sharpness={cfg['anatomy_sharpness']} must be >= 0.")
    probs, _, affine = load_anatomy(cfg["voxel_size"])
    real = (load_real_anatomy(cfg["voxel_size"], probs.shape[1:], test_anatomy)
            if test_anatomy != "mni152" else None)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=cache_dir)   # after every check
    sites = cfg["sites"]
    field_strengths = sorted({float(s["field_strength"]) for s in sites.values()})
    base_key = jax.random.key(cfg["seed"])
    participants = ["participant_id"]
    n = int(cfg["n_subjects"])
    bar = tqdm(total=n * len(sites), desc="building default dataset", disable=not progress)

    def write(i):
        _write_subject(tmp, i, cfg, probs, real, affine, field_strengths, base_key)
        return f"sub-{i + 1:02d}"
    # two subjects at once (phyjax.parallel): each has its own seeds, keys and files
    for label in ordered_map(write, range(n)):
        participants.append(label)
        bar.update(len(sites))
    bar.close()
    write_site_table(os.path.join(tmp, bids.SITE_TABLE), sites)
    with open(os.path.join(tmp, "participants.tsv"), "w") as f:
        f.write("\n".join(participants) + "\n")
    with open(os.path.join(tmp, "dataset_description.json"), "w") as f:
        json.dump({"Name": "phyjax default multi-site dataset (MNI152 2009a anatomy"
                           + (f"; held-out subjects: {test_anatomy}" if real is not None
                              else "")
                           + ")",
                   "BIDSVersion": "1.9.0", "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "phyjax", "Description": json.dumps(cfg)}]}, f,
                  indent=2)
    if os.path.exists(root):  # another process finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, root)
    return root


def rescan_path(root: str, subject: str) -> str:
    """Path of ``subject``'s independent re-scan with the target site's protocol (derivatives;
    written for the target site of the config the dataset was built with)."""
    return os.path.join(root, DERIVATIVES, f"sub-{subject}", "anat",
                        f"sub-{subject}_desc-rescan_T1w.nii.gz")


def lesion_paths(root: str, subject: str) -> dict[str, str]:
    """Paths of ``subject``'s white-matter lesion fraction and (lesion-free) WM fraction
    (BIDS derivative ``label-<tissue>_probseg``; written only when the dataset has lesions,
    ``data.lesions`` > 0)."""
    deriv = os.path.join(root, DERIVATIVES, f"sub-{subject}", "anat")
    return {t: os.path.join(deriv, f"sub-{subject}_label-{label}_probseg.nii.gz")
            for t, label in (("lesion", "lesion"), ("wm", "WM"))}


def ground_truth_paths(root: str, subject: str, field_strength: float) -> dict[str, str]:
    """Paths of the simulated T1 map, M0 (PD) map and brain mask of ``subject``."""
    deriv = os.path.join(root, DERIVATIVES, f"sub-{subject}", "anat")
    tag = f"{field_strength:g}T".replace(".", "p")
    return {"t1": os.path.join(deriv, f"sub-{subject}_acq-{tag}_T1map.nii.gz"),
            "m0": os.path.join(deriv, f"sub-{subject}_acq-{tag}_M0map.nii.gz"),
            "mask": os.path.join(deriv, f"sub-{subject}_desc-brain_mask.nii.gz")}
