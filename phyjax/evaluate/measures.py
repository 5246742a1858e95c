"""Benchmark measures beyond image similarity: tissue segmentation, volumes, subject-level metrics.

* :class:`TissueMeasure` -- one fixed tissue segmenter (Atropos or HMRF) for every image (raw images'
  segmentations cached): Dice/IoU/F1/precision/recall against the segmentation of the same
  subject's target-protocol image, tissue volumes and their differences; a measure for
  :func:`phyjax.evaluate.loop.evaluate_images`.
* :func:`evaluate_features` -- the rows of a feature-level method (ComBat): held-out features and
  volumes mapped into the target site.
* :func:`generator_maps` -- T1/M0 NRMSE of PhyCHarm's quantitative maps (:class:`MapsAlongside`:
  the same, scored while the evaluation harmonizes).
* :class:`LesionMeasure` -- white-matter lesions' contrast against the WM around them, against the
  same lesions in the target image (default data with ``data.lesions`` > 0).
* :func:`reproducibility` -- ICC of every radiomic feature across sites (traveling subjects).
* :func:`subject_level` -- per (method, subject): coefficient of variation of tissue volumes
  across source sites, and a leave-one-subject-out site classifier on each method's outputs.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from phyjax.data.nifti import load_volume
from phyjax.data.volumes import Volume
from phyjax.evaluate.metrics import nrmse
from phyjax.evaluate.overlap import (TISSUES, coefficient_of_variation, tissue_overlap,
                                     tissue_volumes, volume_differences)
from phyjax.evaluate.site_difference import site_classifier
from phyjax.evaluate.unpaired import icc


class TissueMeasure:
    """Segmentation overlap and tissue volumes of an output vs its subject's target image."""

    def __init__(self, volumes, segment):
        self.volumes, self.segment = volumes, segment
        self.voxel_mm3 = {s: next(iter(v.values())).voxel_mm3 for s, v in volumes.items()}
        self._labels: dict[tuple[str, str], np.ndarray] = {}

    def labels(self, subject: str, site: str) -> np.ndarray:
        """Segmentation of the raw scan (cached)."""
        if (subject, site) not in self._labels:
            v = self.volumes[subject][site]
            self._labels[(subject, site)] = self.segment(v.image, v.mask)
        return self._labels[(subject, site)]

    def tissue_volumes(self, subject: str, site: str) -> dict[str, float]:
        return tissue_volumes(self.labels(subject, site), self.voxel_mm3[subject])

    def feature_row(self, features, subject: str, site: str) -> np.ndarray:
        """Radiomic features followed by the raw scan's tissue volumes (ComBat's feature vector)."""
        vols = self.tissue_volumes(subject, site)
        return np.concatenate([features, [vols[t] for t in TISSUES]])

    def __call__(self, method: str, output, source: Volume, truth: Volume) -> dict:
        s = source.subject
        labels = (self.labels(s, source.site) if method == "none"
                  else self.segment(output, source.mask))
        vols = tissue_volumes(labels, self.voxel_mm3[s])
        # Over both brains: tissue labelled outside the target scan's mask is a false
        # positive too (restricted to the truth's mask it would not count, while the volumes
        # below count it).
        region = np.asarray(truth.mask, bool) | np.asarray(source.mask, bool)
        return {**tissue_overlap(labels, self.labels(s, truth.site), region),
                **{f"volume_{k}": x for k, x in vols.items()},
                **volume_differences(vols, self.tissue_volumes(s, truth.site))}


def lesion_regions(lesion, wm, mask, ring_mm: float = 4.0, voxel_mm: float = 1.0):
    """``[(core, ring)]``, boolean ``(X, Y, Z)`` pairs, one per white-matter lesion.

    ``lesion`` (lesion fraction), ``wm`` (WM fraction), ``mask``: ``(X, Y, Z)``.  A lesion is a
    connected component of ``lesion >= 0.5`` inside ``mask`` (its core); its ring is every voxel
    within ``ring_mm`` (mm; ``voxel_mm`` the voxel edge) of the lesion's extent
    (``lesion > 0.01``) that holds no lesion, >= 90 % WM and lies in ``mask``.  Lesions with an
    empty ring are left out.  Raises ValueError when the shapes differ.
    """
    arrays = [np.asarray(a) for a in (lesion, wm, mask)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"lesion, wm and mask shapes differ: {[a.shape for a in arrays]}")
    lesion, wm, mask = arrays[0], arrays[1], arrays[2].astype(bool)
    cores, n = ndimage.label((lesion >= 0.5) & mask)
    extent = lesion > 0.01
    iterations = max(1, int(round(ring_mm / voxel_mm)))
    out = []
    for i in range(n):
        core = cores == i + 1
        own = ndimage.binary_propagation(core, mask=extent)      # this lesion's whole extent
        ring = (ndimage.binary_dilation(own, iterations=iterations) & ~extent & (wm >= 0.9)
                & mask)
        if ring.any():
            out.append((core, ring))
    return out


def region_contrasts(image, regions) -> np.ndarray:
    """``1 - mean(core) / mean(ring)`` of ``image`` ``(X, Y, Z)`` for each ``(core, ring)`` of
    :func:`lesion_regions` (on the image's grid), a ``(n_lesions,)`` array; NaN for a lesion
    whose ring mean is not positive."""
    image = np.asarray(image, np.float64)
    out = []
    for core, ring in regions:
        ref = image[ring].mean()
        out.append(1.0 - image[core].mean() / ref if ref > 0 else np.nan)
    return np.asarray(out, np.float64)


def lesion_contrasts(image, lesion, wm, mask, ring_mm: float = 4.0, voxel_mm: float = 1.0):
    """Contrast of each white-matter lesion against the WM around it, ``1 - mean(core) /
    mean(ring)`` (0: invisible, 1: black; negative: brighter than its surroundings), over
    :func:`lesion_regions` (same arguments; ``image`` ``(X, Y, Z)`` on their grid).

    Returns a ``(n_lesions,)`` array (NaN for a lesion whose ring mean is not positive).
    Raises ValueError when the shapes differ.
    """
    if np.shape(image) != np.shape(lesion):
        raise ValueError(f"image shapes differ: {np.shape(image)} vs {np.shape(lesion)}")
    return region_contrasts(image, lesion_regions(lesion, wm, mask, ring_mm, voxel_mm))


class LesionMeasure:
    """How a method keeps white-matter lesions: per lesion, its contrast against the WM around
    it (:func:`lesion_contrasts`) in the output and in the subject's target image; a measure for
    :func:`phyjax.evaluate.loop.evaluate_images`.

    ``maps(subject) -> (lesion, wm)`` gives the subject's lesion and WM fractions on the
    scans' grid (:meth:`from_dataset` reads the default dataset's derivatives).  Keys:
    ``lesion_contrast`` (mean over the subject's lesions) and ``lesion_contrast_err`` (mean
    absolute difference from the target image's contrast of the same lesion), NaN for a
    subject without lesions.  An intensity remap that is not the target's own can flatten or
    deepen lesions; re-synthesis from T1 predicts them from their physics.
    """

    def __init__(self, maps):
        self.maps, self._cache = maps, {}

    @classmethod
    def from_dataset(cls, root: str, subjects) -> "LesionMeasure | None":
        """The measure on the default dataset at ``root``, or None when some of ``subjects``
        has no lesion maps (a dataset built without ``data.lesions``, or a user's folder)."""
        from phyjax.data.synthetic import lesion_paths

        paths = {s: lesion_paths(root, s) for s in subjects}
        if not paths or not all(os.path.exists(p) for d in paths.values() for p in d.values()):
            return None
        return cls(lambda s: (load_volume(paths[s]["lesion"])[0], load_volume(paths[s]["wm"])[0]))

    def _truth(self, subject: str, truth: Volume):
        if subject not in self._cache:
            lesion, wm = self.maps(subject)
            for name, a in (("lesion", lesion), ("wm", wm)):
                if np.shape(a) != np.shape(truth.image):
                    raise ValueError(f"subject {subject}: {name} map {np.shape(a)} is not on the "
                                     f"grid of {truth.path} {np.shape(truth.image)}.")
            voxel = float(truth.voxel_mm3) ** (1.0 / 3.0)
            # the lesion cores and rings within the truth's mask, once per subject
            regions = lesion_regions(lesion, wm, truth.mask, voxel_mm=voxel)
            self._cache[subject] = (regions, region_contrasts(truth.image, regions))
        return self._cache[subject]

    def __call__(self, method: str, output, source: Volume, truth: Volume) -> dict:
        regions, c_truth = self._truth(source.subject, truth)
        if np.shape(output) != np.shape(truth.image):
            raise ValueError(f"{method}: output {np.shape(output)} is not on the grid of "
                             f"{truth.path} {np.shape(truth.image)}.")
        c_out = region_contrasts(output, regions)
        ok = np.isfinite(c_out) & np.isfinite(c_truth)
        if not ok.any():
            return {"lesion_contrast": float("nan"), "lesion_contrast_err": float("nan")}
        return {"lesion_contrast": float(c_out[ok].mean()),
                "lesion_contrast_err": float(np.abs(c_out[ok] - c_truth[ok]).mean())}


def evaluate_features(harmonizer, subjects, source_sites, target_site: str,
                      tissue: TissueMeasure, raw_feat, n_features: int):
    """Rows and mapped radiomic features of a feature-level harmonizer on held-out subjects."""
    rows, feats = [], {}
    for subject in subjects:
        sites = [s for s in source_sites if s in tissue.volumes[subject]]
        x = np.stack([tissue.feature_row(raw_feat[(subject, s)], subject, s) for s in sites])
        y = harmonizer.transform(x, sites)
        truth_vol = tissue.tissue_volumes(subject, target_site)
        for site, row in zip(sites, y):
            vols = dict(zip(TISSUES, map(float, row[n_features:])))
            feats[(harmonizer.name, subject, site)] = row[:n_features]
            rows.append({"method": harmonizer.name, "site": site, "subject": subject,
                         **{f"volume_{k}": x_ for k, x_ in vols.items()},
                         **volume_differences(vols, truth_vol)})
    return rows, feats


def subject_level(methods, rows, feats, subjects, source_sites, c, notes):
    """Per (method, subject): CoV of tissue volumes across source sites, site-classifier accuracy.

    The classifier is trained and tested on the held-out subjects' outputs of one method,
    leave-one-subject-out (needs >= 2 held-out subjects and >= 2 source sites, else ``nan``
    and a note).  Returns ``(subject_rows, {method: classifier result})``.
    """
    subject_rows = []
    for m in methods:
        for subject in subjects:
            rs = [r for r in rows if r["method"] == m and r["subject"] == subject]
            row = {"method": m, "subject": subject}
            for t in TISSUES:
                vals = [r[f"volume_{t}"] for r in rs]
                row[f"cov_{t}"] = (coefficient_of_variation(vals)
                                   if len(vals) >= 2 and np.mean(vals) > 0 else float("nan"))
            row["site_acc"] = float("nan")
            subject_rows.append(row)
    classifier = {}
    if len(subjects) < 2 or len(source_sites) < 2:
        notes.append("Site classifier after harmonization not computed: it needs at least 2 "
                     "held-out subjects and 2 source sites.")
        return subject_rows, classifier
    for m in methods:
        keys = [(m, s, site) for s in subjects for site in source_sites if (m, s, site) in feats]
        res = classifier[m] = site_classifier(
            np.stack([feats[k] for k in keys]), [k[2] for k in keys], [k[1] for k in keys],
            n_splits=len(subjects), c=c.c)
        for row in subject_rows:
            if row["method"] == m:
                row["site_acc"] = res["per_group"].get(row["subject"], float("nan"))
    return subject_rows, classifier


def generator_maps(harmonizer, volumes, subjects, source_sites) -> list[dict]:
    """T1 and M0 NRMSE of a maps-predicting harmonizer (PhyCHarm's generator, at the source B0)
    against the ground-truth maps, per held-out subject and source site (where maps exist)."""
    return MapsAlongside(harmonizer).rows(volumes, subjects, source_sites)  # nothing seen yet


def _map_errors(pred: dict, v) -> dict:
    return {"t1_nrmse": float(nrmse(pred["t1"], v.t1, v.mask)),
            "m0_nrmse": float(nrmse(pred["m0"], v.m0, v.mask))}


class MapsAlongside:
    """A maps-predicting harmonizer (PhyCHarm) for one evaluation pass that scores its maps on
    the way: :meth:`harmonize` runs the network once per scan (``predict``), keeps the T1/M0
    NRMSE of scans with ground-truth maps and returns the harmonized image, so :meth:`rows`
    gives :func:`generator_maps`' rows without a second pass over the held-out scans (a scan not
    harmonized through it is predicted then).  Everything else is the wrapped harmonizer's.
    Scans are matched by object identity: the evaluation's volumes must be the ones passed to
    :meth:`rows`."""

    def __init__(self, harmonizer):
        self.harmonizer = harmonizer
        self._errors: dict[int, dict] = {}

    def __getattr__(self, name):
        return getattr(self.harmonizer, name)

    def harmonize(self, volume):
        pred = self.harmonizer.predict(volume)
        if volume.t1 is not None:
            self._errors[id(volume)] = _map_errors(pred, volume)
        return self.harmonizer.image_of(volume, pred)

    def rows(self, volumes, subjects, source_sites) -> list[dict]:
        """:func:`generator_maps` of the wrapped harmonizer, from the scans already harmonized."""
        rows = []
        for subject in subjects:
            for site in source_sites:
                v = volumes[subject].get(site)
                if v is None or v.t1 is None:
                    continue
                errors = self._errors.get(id(v)) or _map_errors(self.harmonizer.predict(v), v)
                rows.append({"site": site, "subject": subject, **errors})
        return rows


def reproducibility(methods, feats, subjects, sites) -> list[dict]:
    """Per method: median over radiomic features of ICC(2,1) and ICC(3,1) across ``sites``
    (:func:`phyjax.evaluate.unpaired.icc`; subjects as targets, sites as raters), on the held-out
    subjects' outputs ``feats[(method, subject, site)]`` (traveling subjects only)."""
    rows = []
    for m in methods:
        keys = [[(m, s, site) for site in sites] for s in subjects]
        if not all(k in feats for row in keys for k in row):
            continue
        cube = np.stack([[feats[k] for k in row] for row in keys])   # (subjects, sites, F)
        per = [icc(cube[:, :, j]) for j in range(cube.shape[2])]
        rows.append({"method": m, **{f"median_{k}": float(np.nanmedian([p[k] for p in per]))
                                     for k in ("icc21", "icc31")},
                     "n_subjects": len(subjects), "n_sites": len(sites)})
    return rows
