"""Classic intensity-harmonization baselines, fitted on training data only."""

from phyjax.baselines.intensity import BASELINES, HistogramMatching, NoHarmonization, ZScore

__all__ = ["BASELINES", "HistogramMatching", "NoHarmonization", "ZScore"]
