"""Harmonization baselines, fitted on training data only.

Image-level (``fit(images, masks)`` on training images, then ``baseline(image, mask)``; registry
:data:`BASELINES`): no harmonization, z-score, histogram matching, Nyúl standardization,
WhiteStripe.  Feature-level: :class:`ComBat` (``fit(features, sites)`` / ``transform``).
"""

from phyjax.baselines.combat import ComBat
from phyjax.baselines.intensity import BASELINES as _INTENSITY_BASELINES
from phyjax.baselines.intensity import HistogramMatching, NoHarmonization, ZScore
from phyjax.baselines.nyul import NyulStandardization
from phyjax.baselines.whitestripe import WhiteStripe

BASELINES = {**_INTENSITY_BASELINES,
             NyulStandardization.name: NyulStandardization, WhiteStripe.name: WhiteStripe}

__all__ = ["BASELINES", "ComBat", "HistogramMatching", "NoHarmonization", "NyulStandardization",
           "WhiteStripe", "ZScore"]
