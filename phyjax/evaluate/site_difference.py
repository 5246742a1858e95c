"""How different are the sites?  Radiomic features per image, per-site distributions, site classifier.

Features come from :mod:`phyjax.radiomics` (JAX, PyRadiomics 3.1.0-compatible names such as
``firstorder_Mean``, ``glcm_Contrast``, ``glrlm_RunEntropy``): first-order, GLCM and GLRLM
features of the whole brain mask, fixed bin width (PyRadiomics ``binWidth``) on the normalized
intensities, all 13 3-D directions.  :func:`site_features` is the one-image entry point
(``(image, mask) -> {name: float}``); :class:`FeatureExtractor` batches many images into one
jit-compiled call.

The site classifier is a standardized, L2-regularized multinomial logistic regression
(scikit-learn) evaluated by cross-validation *grouped by subject* (a subject's scans are never
split between training and test folds), so with a traveling-subject design it can only succeed
by recognising the scanner, not the head.  Chance level is the frequency of the most common
site (``1 / n_sites`` for a balanced design); a permutation test that shuffles site labels
*within* subjects gives a p-value.

Arrays are ``(X, Y, Z)`` as everywhere in phyjax (the extractor transposes to the ``(z, y, x)``
order :mod:`phyjax.radiomics` expects; with isotropic voxels this only fixes the meaning of
"in-plane").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from phyjax.radiomics import RadiomicsConfig, crop_and_pad, extract_batch, feature_names
from phyjax.radiomics.discretize import n_bins_for_width
from phyjax.radiomics.packed import roi_box


def _validate(image, mask, index=None):
    where = "" if index is None else f"image {index}: "
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape != mask.shape:
        raise ValueError(f"{where}shape mismatch: image {image.shape} != mask {mask.shape}.")
    if image.ndim not in (2, 3):
        raise ValueError(f"{where}expected a 2-D or 3-D image, got shape {image.shape}.")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"{where}empty mask: no voxels to compute features from.")
    if not np.all(np.isfinite(image[mask])):
        raise ValueError(f"{where}non-finite values (nan/inf) inside the mask.")
    return image, mask


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """Radiomic features of many ``(image, mask)`` pairs (``(X, Y, Z)`` arrays).

    Attributes:
      bin_width: PyRadiomics ``binWidth`` in image units (images here are normalized so that
        the 99th in-brain percentile is ~1; 0.05 gives ~25 grey levels).
      n_bins: size of the static grey-level axis; doubled (up to ``max_bins``) for an ROI that
        spans more bins.  Features do not depend on it as long as it covers the ROI.
      max_bins: cap of the grey-level axis.  An ROI spanning more bins (only an image far outside
        the normal intensity range: with the defaults, a range above 4.8 x the 99th percentile)
        has its highest grey levels merged into the last bin, as in
        :mod:`phyjax.radiomics` ("values above are clipped"); first-order features that do not
        use grey levels are unaffected.  :meth:`bins_needed` tells when this happens.
      classes: feature classes (``firstorder``, ``glcm``, ``glrlm``).
      batch_size: images per jit-compiled call (fixed, so one compilation serves every call
        with the same canvas).
    """

    bin_width: float = 0.05
    n_bins: int = 48
    max_bins: int = 96
    classes: tuple[str, ...] = ("firstorder", "glcm", "glrlm")
    batch_size: int = 4

    def names(self) -> tuple[str, ...]:
        return feature_names(RadiomicsConfig(bin_width=self.bin_width, n_bins=self.n_bins,
                                             classes=tuple(self.classes)))

    def bins_needed(self, image, mask) -> int:
        """Grey levels the ROI spans with fixed bin width (PyRadiomics binning).  Any array order."""
        v = np.asarray(image, np.float64)[np.asarray(mask, bool)]
        return n_bins_for_width(float(v.min()), float(v.max()), float(self.bin_width))

    def canvas(self, masks: Sequence[np.ndarray], multiple: int = 8) -> tuple[int, int, int]:
        """Common ``(z, y, x)`` canvas holding every mask's bounding box (rounded up)."""
        shape = np.max([roi_box(np.asarray(m, bool).T) for m in masks], axis=0)
        return tuple(1 if s == 1 else int(math.ceil(s / multiple) * multiple) for s in shape)

    def table(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
              canvas: Sequence[int] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
        """``(names, X)`` with ``X`` of shape ``(len(images), n_features)`` (float64).

        Raises ValueError on a count mismatch, an image/mask shape mismatch, an empty mask or
        non-finite values inside a mask (naming the image's index).
        """
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks.")
        names = self.names()
        if not len(images):
            return names, np.zeros((0, len(names)))
        pairs = [_validate(im, m, i) for i, (im, m) in enumerate(zip(images, masks))]
        # (X, Y, Z) -> (Z, Y, X); 2-D (X, Y) -> (1, Y, X).
        ims = [np.asarray(im, np.float64).T if im.ndim == 3 else np.asarray(im, np.float64).T[None]
               for im, _ in pairs]
        ms = [m.T if m.ndim == 3 else m.T[None] for _, m in pairs]
        if canvas is None:
            canvas = self.canvas([m.T for m in ms])
        # Group images by the grey-level axis they need (features do not depend on it as long
        # as it covers the ROI's range), so typical images share one compilation.
        groups: dict[int, list[int]] = {}
        for i, (im, m) in enumerate(zip(ims, ms)):
            need = self.bins_needed(im, m)
            bins = int(self.n_bins)
            while bins < need and 2 * bins <= self.max_bins:  # doubling: few compilations
                bins *= 2
            groups.setdefault(bins, []).append(i)
        out_x = np.zeros((len(ims), len(names)))
        bs = int(self.batch_size)
        for n_bins, idx in groups.items():
            config = RadiomicsConfig(bin_width=self.bin_width, n_bins=n_bins,
                                     classes=tuple(self.classes))
            for start in range(0, len(idx), bs):
                chunk = idx[start:start + bs]
                # Pad the last chunk by repeating its first image: one static batch shape.
                padded = chunk + [chunk[0]] * (bs - len(chunk))
                xb, mb = crop_and_pad([ims[i] for i in padded], [ms[i] for i in padded],
                                      canvas=tuple(canvas))
                out = extract_batch(xb, mb, config)
                out_x[chunk] = np.stack([np.asarray(out[k], np.float64) for k in names],
                                        -1)[:len(chunk)]
        return names, out_x


def site_features(image, mask, extractor: FeatureExtractor | None = None) -> dict[str, float]:
    """Radiomic features of one image inside ``mask`` as ``{name: float}``.

    The swappable single-image entry point: everything in the benchmark that needs features goes
    through :class:`FeatureExtractor`, which computes exactly these (batched).
    Raises ValueError on a shape mismatch, an empty mask or non-finite values in the mask.
    """
    names, x = (extractor or FeatureExtractor()).table([image], [mask])
    return {k: float(v) for k, v in zip(names, x[0])}


def finite_columns(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the feature columns that are finite in every row."""
    return np.all(np.isfinite(x), axis=0)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: Student-t confidence interval of the mean of the finite values.

    ``low``/``high`` are ``nan`` with fewer than two values; everything is ``nan`` with none.
    """
    from scipy import stats

    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def site_classifier(x: np.ndarray, sites: Sequence[str], groups: Sequence[str], *,
                    n_splits: int = 5, c: float = 1.0, n_permutations: int = 0,
                    seed: int = 0) -> dict:
    """Cross-validated accuracy of predicting the site from features, folds grouped by subject.

    Args:
      x: ``(n_samples, n_features)``; columns that are not finite everywhere are dropped.
      sites: site label per sample.  groups: subject per sample (never split across folds).
      n_splits: folds (at most the number of subjects; equal to it = leave-one-subject-out).
      c: inverse L2 regularization strength of the logistic regression.
      n_permutations: if > 0, a permutation test (site labels shuffled within subjects; across
        subjects when each subject has one image).
    Returns a dict: ``accuracy`` (over all samples), ``per_group`` ({subject: accuracy of that
    subject's samples}), ``chance`` (most frequent site's share), ``n_samples``, ``n_sites``,
    ``n_groups``, ``n_features``, ``n_folds``, ``p_value`` (nan without permutations) and
    ``predictions``.
    Raises ValueError with fewer than 2 sites or 2 subjects, or on length mismatches.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict, permutation_test_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, np.float64)
    sites, groups = np.asarray(sites, str), np.asarray(groups, str)
    if x.ndim != 2 or not (len(x) == len(sites) == len(groups)):
        raise ValueError(f"features {x.shape}, {len(sites)} site labels and {len(groups)} groups "
                         "must agree in length.")
    labels, counts = np.unique(sites, return_counts=True)
    subjects = np.unique(groups)
    if len(labels) < 2:
        raise ValueError(f"site classifier needs at least 2 sites, got {labels.tolist()}.")
    if len(subjects) < 2:
        raise ValueError(f"site classifier needs at least 2 subjects for grouped cross-validation, "
                         f"got {subjects.tolist()}.")
    keep = finite_columns(x)
    x = x[:, keep]
    n_folds = int(min(n_splits, len(subjects)))
    cv = GroupKFold(n_splits=n_folds)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="newton-cg", max_iter=1000))
    pred = cross_val_predict(model, x, sites, groups=groups, cv=cv)
    correct = pred == sites
    per_group = {str(g): float(correct[groups == g].mean()) for g in subjects}
    p_value = float("nan")
    if n_permutations > 0:
        # sklearn permutes within groups; with one image per subject (unpaired data) that
        # would permute nothing, so the labels are then permuted across subjects.
        singletons = len(subjects) == len(x)
        folds = list(cv.split(x, sites, groups))
        _, _, p_value = permutation_test_score(model, x, sites,
                                               groups=None if singletons else groups, cv=folds,
                                               n_permutations=int(n_permutations),
                                               random_state=seed)
    return {"accuracy": float(correct.mean()), "per_group": per_group,
            "chance": float(counts.max() / counts.sum()), "n_samples": int(len(x)),
            "n_sites": int(len(labels)), "n_groups": int(len(subjects)),
            "n_features": int(keep.sum()), "n_folds": n_folds, "p_value": float(p_value),
            "predictions": pred.tolist()}


def per_site_distributions(names: Sequence[str], x: np.ndarray, sites: Sequence[str]) -> list[dict]:
    """One row per (site, feature): n, mean, sd, median, q25, q75 over that site's images."""
    x = np.asarray(x, np.float64)
    sites = np.asarray(sites, str)
    rows = []
    for site in sorted(set(sites.tolist())):
        block = x[sites == site]
        for j, name in enumerate(names):
            v = block[:, j]
            v = v[np.isfinite(v)]
            q25, med, q75 = (np.percentile(v, [25, 50, 75]) if v.size else (np.nan,) * 3)
            rows.append({"site": site, "feature": name, "n": int(v.size),
                         "mean": float(v.mean()) if v.size else float("nan"),
                         "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                         "median": float(med), "q25": float(q25), "q75": float(q75)})
    return rows


def kruskal_wallis(names: Sequence[str], x: np.ndarray, sites: Sequence[str]) -> dict[str, float]:
    """Kruskal-Wallis p-value per feature for "same distribution at every site" (nan if undefined)."""
    from scipy import stats

    x = np.asarray(x, np.float64)
    sites = np.asarray(sites, str)
    out = {}
    for j, name in enumerate(names):
        groups = [x[sites == s, j] for s in sorted(set(sites.tolist()))]
        groups = [g[np.isfinite(g)] for g in groups]
        try:
            with np.errstate(invalid="ignore", divide="ignore"):  # all ties -> nan
                out[name] = float(stats.kruskal(*groups).pvalue) if all(g.size for g in groups) \
                    else float("nan")
        except ValueError:  # all values identical
            out[name] = float("nan")
    return out


def n_significant(pvalues, alpha: float = 0.05) -> int:
    """How many of the finite p-values stay below ``alpha`` after Bonferroni correction."""
    finite = [p for p in pvalues if np.isfinite(p)]
    return int(sum(p * max(len(finite), 1) < alpha for p in finite))


def site_difference(names: Sequence[str], x: np.ndarray, sites: Sequence[str],
                    subjects: Sequence[str], *, n_splits: int = 5, c: float = 1.0,
                    n_permutations: int = 100, seed: int = 0, alpha: float = 0.05) -> dict:
    """The site-difference report before harmonization.

    Returns ``{"classifier": site_classifier(...), "accuracy_ci": (mean, low, high, n) over
    subjects, "distributions": per_site_distributions(...), "kruskal_p": {feature: p},
    "n_significant": features with Bonferroni-corrected p < alpha, "n_features": ...}``.
    """
    clf = site_classifier(x, sites, subjects, n_splits=n_splits, c=c,
                          n_permutations=n_permutations, seed=seed)
    pvals = kruskal_wallis(names, x, sites)
    n_sig = n_significant(pvals.values(), alpha)
    return {"classifier": clf, "accuracy_ci": t_interval(list(clf["per_group"].values())),
            "distributions": per_site_distributions(names, x, sites), "kruskal_p": pvals,
            "n_significant": n_sig, "n_features": len(names), "alpha": alpha}



def radiomic_relative_error(features, reference) -> float:
    """Median over features of ``|f - f_ref| / |f_ref|`` (features with ``f_ref == 0`` or non-finite
    values are skipped; ``nan`` if none is left).  The median keeps a few near-zero reference
    features (e.g. ``glcm_ClusterShade``) from dominating.

    Raises ValueError if the two vectors differ in length.
    """
    f, ref = np.asarray(features, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    if f.shape != ref.shape:
        raise ValueError(f"{f.size} features vs {ref.size} reference features.")
    ok = np.isfinite(f) & np.isfinite(ref) & (ref != 0)
    if not ok.any():
        return float("nan")
    return float(np.median(np.abs(f[ok] - ref[ok]) / np.abs(ref[ok])))
