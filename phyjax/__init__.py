"""phyjax: physics-informed MRI harmonization in JAX.

Subpackages
-----------
physics     pure, differentiable MR signal equations, tissue values, scanner effects.
data        NIfTI/BIDS I/O, the embedded default multi-site dataset, slicing and splits.
models      flax modules (conditional U-Net, PhyCHarm generator and harmonizer).
losses      physics re-synthesis, image losses.
train       train state, jit-compiled steps, Orbax checkpointing.
evaluate    image metrics, report tables and figures.
baselines   classic intensity harmonization (z-score, histogram matching).
experiments one module per method wiring data + model + train + evaluate.
"""

__version__ = "0.1.0"
