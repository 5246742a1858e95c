"""Unit conversions at the boundary (configs, BIDS sidecars) and nowhere else.

Inside phyjax all times are in seconds, angles in radians and fields in tesla
(BIDS convention for times; radians for the math).  Flip angles in degrees
appear only in configs and sidecars and are converted here.
"""

from __future__ import annotations

import numpy as np


def deg2rad(angle_deg):
    """Degrees -> radians (array-like, any shape)."""
    return np.deg2rad(angle_deg)


def rad2deg(angle_rad):
    """Radians -> degrees (array-like, any shape)."""
    return np.rad2deg(angle_rad)


def ms(value_ms):
    """Milliseconds -> seconds (array-like, any shape)."""
    return np.asarray(value_ms, dtype=float) * 1e-3
