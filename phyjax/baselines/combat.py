"""ComBat harmonization of feature tables (radiomic features, tissue volumes), fitted on training data.

Johnson, Li & Rabinovic, Biostatistics 8:118 (2007) (empirical-Bayes location/scale batch
correction); Fortin et al., NeuroImage 167:104 (2018) and 161:149 (2017) (neuroimaging).  The model
for feature ``f`` of sample ``j`` at site ``i`` is ``x = alpha_f + gamma_if + delta_if eps``;
fitting standardizes each feature with the pooled mean and variance, estimates the site
location ``gamma*`` and scale ``delta*`` with empirical-Bayes shrinkage across features, and
removes them.

Fitting is done by the authors' reference implementation, ``neuroCombat.neuroCombat`` (package
``neuroCombat`` 0.2.12, Fortin).  Applying the fitted estimates to *held-out* samples is
``neuroCombatFromTraining``'s arithmetic, ported here (:meth:`ComBat.transform`) because the
upstream function fails on NumPy >= 2.4 (``int()`` of a 1-element array); the tests check that
this port reproduces ``neuroCombat``'s own output on the training samples.  neuroCombat's
``ref_batch`` option cannot be used either (it calls ``np.int``, removed in NumPy 1.24); instead
:meth:`ComBat.transform` can map harmonized features into one site's space (``to_site``) by
inverting that site's fitted location/scale, which is what a reference-batch ComBat aims at.

Documented behaviour on bad input (each tested): a site with fewer than 2 training samples, fewer
than 2 sites, non-finite values or mismatched lengths raise ValueError; features that are constant
over the training samples cannot be standardized and pass through unchanged; applying to a site
not seen in training raises ValueError.  No covariates are modelled (the embedded dataset has none;
with a traveling-subject design the subject is balanced across sites).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
from neuroCombat import neuroCombat

from phyjax.baselines.persist import Persistent


def _as_table(features, sites):
    x = np.asarray(features, np.float64)
    sites = np.asarray(sites, dtype=str)
    if x.ndim != 2:
        raise ValueError(f"features must be (n_samples, n_features), got shape {x.shape}.")
    if len(sites) != len(x):
        raise ValueError(f"{len(x)} samples but {len(sites)} site labels.")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain nan/inf; ComBat needs finite values.")
    return x, sites


class ComBat(Persistent):
    """ComBat on a ``(n_samples, n_features)`` table.

    Args:
      eb: empirical-Bayes shrinkage of the site parameters (ComBat); False = plain L/S.
      parametric: parametric (True) or non-parametric empirical-Bayes priors.
      mean_only: only remove the site means (no scaling).
    """

    name = "combat"

    def __init__(self, eb: bool = True, parametric: bool = True, mean_only: bool = False):
        self.eb, self.parametric, self.mean_only = eb, parametric, mean_only

    def fit(self, features, sites) -> "ComBat":
        """Estimate the site effects from training samples.  Returns ``self``."""
        x, sites = _as_table(features, sites)
        levels, counts = np.unique(sites, return_counts=True)
        if len(levels) < 2:
            raise ValueError(f"ComBat needs samples from at least 2 sites, got {levels.tolist()}.")
        few = [f"{str(s)!r} ({c})" for s, c in zip(levels, counts) if c < 2]
        if few:
            raise ValueError("ComBat needs at least 2 training samples per site to estimate its "
                             f"scale; too few at: {', '.join(few)}.")
        self.varying_ = np.ptp(x, axis=0) > 0
        if not self.varying_.any():
            raise ValueError("every feature is constant over the training samples.")
        with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
            out = neuroCombat(dat=x[:, self.varying_].T, covars=pd.DataFrame({"site": sites}),
                              batch_col="site", eb=self.eb, parametric=self.parametric,
                              mean_only=self.mean_only)
        est = out["estimates"]
        self.sites_ = [str(s) for s in est["batches"]]
        self.stand_mean_ = np.asarray(est["stand.mean"], np.float64)[:, 0]
        self.var_pooled_ = np.asarray(est["var.pooled"], np.float64)[:, 0]
        self.gamma_ = np.asarray(est["gamma.star"], np.float64)   # (n_sites, n_varying)
        self.delta_ = np.asarray(est["delta.star"], np.float64)
        self.training_output_ = x.copy()
        self.training_output_[:, self.varying_] = np.asarray(out["data"], np.float64).T
        return self

    def _site_index(self, sites):
        if not hasattr(self, "sites_"):
            raise RuntimeError("ComBat: call fit(...) on training features first.")
        unknown = sorted(set(sites.tolist()) - set(self.sites_))
        if unknown:
            raise ValueError(f"sites {unknown} were not in the ComBat training data "
                             f"(known: {self.sites_}).")
        return np.array([self.sites_.index(s) for s in sites], int)

    def transform(self, features, sites, to_site: str | None = None) -> np.ndarray:
        """Harmonize samples (held-out or not) with the fitted estimates.

        ``(x - m) / sqrt(v) -> (z - gamma*_site) / sqrt(delta*_site) -> * sqrt(v) + m`` per
        feature (``neuroCombatFromTraining``).  With ``to_site``, the result is then mapped into
        that site's space by the inverse of its own correction, so samples from ``to_site`` come
        back unchanged and all others are expressed as if acquired there.
        """
        x, sites = _as_table(features, sites)
        idx = self._site_index(sites)
        if x.shape[1] != len(self.varying_):
            raise ValueError(f"fitted on {len(self.varying_)} features, got {x.shape[1]}.")
        m, sd = self.stand_mean_, np.sqrt(self.var_pooled_)
        v = x[:, self.varying_]
        z = ((v - m) / sd - self.gamma_[idx]) / np.sqrt(self.delta_[idx])
        if to_site is not None:
            ref = self._site_index(np.asarray([to_site], str))[0]
            z = z * np.sqrt(self.delta_[ref]) + self.gamma_[ref]
        out = x.copy()
        out[:, self.varying_] = z * sd + m
        return out
