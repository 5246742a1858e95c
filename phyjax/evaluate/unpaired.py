"""Measures that need no paired (traveling-subject) scans: how far apart are the sites, and does a
method keep each image's own anatomy?

* :func:`site_distance` -- mean pairwise 1-Wasserstein distance between sites' distributions
  (of pooled in-ROI intensities, or of each radiomic feature), divided by the pooled
  within-site standard deviation so that methods whose outputs have other units compare
  fairly.  Two identical sites give 0; a shift by d within-site SDs gives d.
* :func:`effect_sizes` -- Kruskal-Wallis epsilon squared per feature (``H / (n - 1)``; Tomczak &
  Tomczak 2014), the share of the rank variance explained by the site (its maximum is below 1:
  about ``1 - 1/k^2`` for k equal sites).
* :func:`anatomy_preservation` -- an output against *its own* source: Spearman correlation of the
  in-ROI intensities (1 for any monotone intensity mapping) and Pearson correlation of the
  gradient magnitudes (edges).  A method that erases anatomy to make sites look alike (e.g. a
  constant image) scores 0.
* :func:`embedding` -- 2-D PCA of standardized features, for a site-cluster figure.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage, stats
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler


def within_site_sd(groups) -> float:
    """Pooled within-site standard deviation ``sqrt(sum_i (n_i - 1) s_i^2 / (N - k))`` of ``k``
    samples (the denominator of Cohen's d, generalized to k groups); ``nan`` when no site has
    two values.  Unlike the SD of all values pooled together it does not grow with the
    differences *between* sites, so a distance divided by it does not saturate (divided by the
    SD of the pooled sample, two sites apart by a pure shift never score above 2)."""
    groups = [np.asarray(g, np.float64).ravel() for g in groups]
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof <= 0:
        return float("nan")
    return float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups if len(g) > 1) / dof))


def _scaled_w1(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    w1 = float(stats.wasserstein_distance(a, b))
    if not np.isfinite(scale):
        return float("nan")
    if scale > 0:
        return w1 / scale
    return 0.0 if w1 == 0 else float("inf")   # no spread within sites, yet they differ


def site_distance(values_by_site: dict[str, np.ndarray]) -> dict:
    """Mean pairwise 1-Wasserstein distance between sites' samples, in units of the pooled
    within-site standard deviation (:func:`within_site_sd`), so that methods whose outputs have
    other units compare fairly and a shift of d within-site SDs scores d.

    Args:
      values_by_site: ``{site: 1-D array}`` (e.g. the in-ROI intensities of all its images).
    Returns ``{"mean": float, "pairs": {"a|b": float}}`` (``nan`` mean with fewer than 2 sites or
    no site with two values; ``inf`` for sites that differ while every one is constant).
    """
    sites = sorted(values_by_site)
    scale = within_site_sd([values_by_site[s] for s in sites])
    pairs = {f"{a}|{b}": _scaled_w1(np.ravel(values_by_site[a]), np.ravel(values_by_site[b]),
                                    scale) for a, b in itertools.combinations(sites, 2)}
    return {"mean": float(np.mean(list(pairs.values()))) if pairs else float("nan"),
            "pairs": pairs}


def feature_distance(x: np.ndarray, sites) -> float:
    """Mean over features of :func:`site_distance` of the feature's per-site values."""
    x, sites = np.asarray(x, np.float64), np.asarray(sites, str)
    labels = sorted(set(sites.tolist()))
    out = [site_distance({s: x[sites == s, j] for s in labels})["mean"]
           for j in range(x.shape[1]) if np.all(np.isfinite(x[:, j]))]
    return float(np.nanmean(out)) if out else float("nan")


def effect_sizes(names, x: np.ndarray, sites) -> dict[str, float]:
    """Kruskal-Wallis epsilon squared ``H / (n - 1)`` per feature (Tomczak & Tomczak 2014);
    ``nan`` when undefined (constant feature).

    0 means no site effect.  When the site orders the values completely (no ties) it reaches
    its maximum ``(N^3 - sum_i n_i^3) / (N^3 - N)`` for sites of ``n_i`` values, ``N`` in all
    -- about ``1 - 1/k^2`` for ``k`` sites of equal size (0.75 for two), not 1 -- so compare
    values between tables with the same sites and sizes only."""
    x, sites = np.asarray(x, np.float64), np.asarray(sites, str)
    labels = sorted(set(sites.tolist()))
    out = {}
    for j, name in enumerate(names):
        groups = [x[sites == s, j] for s in labels]
        try:
            with np.errstate(invalid="ignore", divide="ignore"):  # all ties: nan, said below
                h = stats.kruskal(*groups).statistic
            out[name] = float(h / (len(x) - 1))
        except ValueError:
            out[name] = float("nan")
    return out


def anatomy_preservation(output: np.ndarray, source: np.ndarray, mask: np.ndarray) -> dict:
    """``{"rank_corr", "edge_corr"}`` of an output against its own source inside ``mask``.

    ``rank_corr``: Spearman correlation of the intensities (0 for a constant output);
    ``edge_corr``: Pearson correlation of the gradient magnitudes (scipy Sobel, 3-D) where the
    whole 3x3x3 stencil lies inside ``mask`` (the ROI's own boundary is not anatomy), so an
    affine intensity map scores exactly 1.
    """
    mask = np.asarray(mask, bool)
    out = np.where(mask, np.asarray(output, np.float64), 0.0)
    src = np.where(mask, np.asarray(source, np.float64), 0.0)

    def corr(f, a, b):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return 0.0
        return float(f(a, b)[0])

    grad = [np.sqrt(sum(ndimage.sobel(v, axis=k) ** 2 for k in range(v.ndim))) for v in (out, src)]
    inner = ndimage.binary_erosion(mask, structure=np.ones((3,) * mask.ndim))  # the Sobel stencil
    inner = inner if inner.any() else mask
    return {"rank_corr": corr(stats.spearmanr, out[mask], src[mask]),
            "edge_corr": corr(stats.pearsonr, grad[0][inner], grad[1][inner])}


def anatomy_measure(method: str, output: np.ndarray, source, truth) -> dict:
    """:func:`anatomy_preservation` as a measure of :func:`phyjax.evaluate.loop.evaluate_images`
    (needs no pair: the output against its own source scan)."""
    return anatomy_preservation(output, source.image, source.mask)


def embedding(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` PCA coordinates of standardized, finite feature columns."""
    x = np.asarray(x, np.float64)
    x = x[:, np.all(np.isfinite(x), axis=0)]
    z = StandardScaler().fit_transform(x)
    return PCA(n_components=2, random_state=seed).fit_transform(z)


def icc(x: np.ndarray) -> dict[str, float]:
    """Intraclass correlations of a ``(n targets, k raters)`` table (Shrout & Fleiss, Psychol.
    Bull. 86:420, 1979): ``icc1`` = ICC(1,1), ``icc21`` = ICC(2,1) (absolute agreement, raters
    random), ``icc31`` = ICC(3,1) (consistency).  Here targets are subjects and raters are sites:
    a feature that a harmonized site reproduces has ICC near 1.  ``nan`` when undefined.
    """
    x = np.asarray(x, np.float64)
    n, k = x.shape
    if n < 2 or k < 2 or not np.all(np.isfinite(x)):
        return {"icc1": float("nan"), "icc21": float("nan"), "icc31": float("nan")}
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(0) - grand) ** 2)
    ss_err = np.sum((x - grand) ** 2) - ss_rows - ss_cols
    bms, jms = ss_rows / (n - 1), ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    wms = (ss_cols + ss_err) / (n * (k - 1))

    def ratio(num, den):
        return float(num / den) if den > 0 else float("nan")

    return {"icc1": ratio(bms - wms, bms + (k - 1) * wms),
            "icc21": ratio(bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n),
            "icc31": ratio(bms - ems, bms + (k - 1) * ems)}


def location_scale(x: np.ndarray, sites, reference: str) -> dict[str, float]:
    """ComBat-style site effects left in a feature table, relative to ``reference``'s site.

    Each feature is divided by its pooled within-site SD (:func:`within_site_sd`, so the
    differences between sites do not shrink their own unit); per other site, the location
    difference is ``|mean_site - mean_reference|`` (in those SDs, Cohen's d) and the scale ratio
    ``sd_site / sd_reference``.
    Returns the medians over features and sites: ``location`` (0 = no shift) and
    ``log_scale`` = median ``|log(ratio)|`` (0 = equal spread); ``nan`` when undefined.
    """
    x, sites = np.asarray(x, np.float64), np.asarray(sites, str)
    labels = sorted(set(sites.tolist()))
    x = x[:, np.all(np.isfinite(x), axis=0) & (np.ptp(x, axis=0) > 0)]
    others = [s for s in labels if s != reference]
    ref = x[sites == reference]
    if x.shape[1] == 0 or len(ref) < 2 or not others:
        return {"location": float("nan"), "log_scale": float("nan")}
    sd = np.array([within_site_sd([x[sites == s, j] for s in labels])
                   for j in range(x.shape[1])])
    keep = sd > 0          # constant within every site: no unit to measure a shift in
    if not keep.any():
        return {"location": float("nan"), "log_scale": float("nan")}
    x = x[:, keep]
    z = (x - x.mean(0)) / sd[keep]
    ref = z[sites == reference]
    loc, scale = [], []
    for s in others:
        block = z[sites == s]
        if len(block) < 2:
            continue
        loc.append(np.abs(block.mean(0) - ref.mean(0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            scale.append(np.abs(np.log(block.std(0, ddof=1) / ref.std(0, ddof=1))))
    if not loc:
        return {"location": float("nan"), "log_scale": float("nan")}
    return {"location": float(np.nanmedian(np.concatenate(loc))),
            "log_scale": float(np.nanmedian(np.concatenate(scale)))}


def covariate_strength(x: np.ndarray, covariate) -> np.ndarray:
    """Per feature, how strongly a covariate shows in it: ``|Spearman rho|`` for a numeric
    covariate (0 for a constant feature; ``nan`` for a constant covariate), Kruskal-Wallis
    epsilon squared for a categorical one."""
    x = np.asarray(x, np.float64)
    try:
        values = np.asarray(covariate, np.float64)
    except ValueError:
        labels = np.asarray(covariate, str)
        return np.array(list(effect_sizes(range(x.shape[1]), x, labels).values()))
    if np.ptp(values) == 0:
        return np.full(x.shape[1], np.nan)
    out = np.zeros(x.shape[1])      # a constant feature shows no covariate effect
    for j in range(x.shape[1]):
        if np.ptp(x[:, j]) > 0:
            out[j] = abs(stats.spearmanr(x[:, j], values)[0])
    return out


def biology_kept(before: np.ndarray, after: np.ndarray, covariate, top: int = 10) -> dict:
    """Is a covariate's effect kept?  Of the ``top`` features that show it most before
    harmonization (:func:`covariate_strength` on ``before``), their mean strength before and
    after; ``kept`` = after / before (1 = kept, 0 = erased)."""
    s_before = covariate_strength(before, covariate)
    order = np.argsort(np.nan_to_num(s_before, nan=-1.0))[::-1][:top]
    b = float(np.nanmean(s_before[order]))
    a = float(np.nanmean(covariate_strength(after, covariate)[order]))
    return {"before": b, "after": a, "kept": a / b if b > 0 else float("nan")}
