"""Is a value known now, or only when compiled code runs?

The physics functions check their arguments (a field strength without a relaxation table, a
readout train that does not fit) when the values are concrete, and leave traced values (inside
``jax.jit``, ``vmap``, ``grad``) to the boundary that fed them, which checks them concretely.
"""

from __future__ import annotations

import jax
import numpy as np


def concrete(*values) -> list[np.ndarray] | None:
    """``values`` as float64 NumPy arrays, or None when any of them is a JAX tracer.

    Raises TypeError/ValueError for a value that is neither (e.g. a string): only tracing is
    a reason to skip a check.
    """
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(values)):
        return None
    return [np.asarray(v, np.float64) for v in values]
