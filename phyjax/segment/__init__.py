"""Physics-aware tissue segmentation (Borges et al., SASHIMI 2019, arXiv:2001.10767).

:mod:`~phyjax.segment.model` (U-Net with an optional acquisition-parameter branch),
:mod:`~phyjax.segment.gold` (R1 gold standard), :mod:`~phyjax.segment.simulate` (images over
protocol ranges), :mod:`~phyjax.segment.train` (soft Dice, inference, saving),
:mod:`~phyjax.segment.evaluate` (Dice, volume CoV, bridging), :mod:`~phyjax.segment.infer`
(a user's T1w -> BIDS derivatives), :mod:`~phyjax.segment.report`.  The experiment is
:mod:`phyjax.experiments.physics_seg` (``configs/physics_seg.py``).
"""
