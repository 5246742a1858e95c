"""Training: state, checkpointing (Orbax), and a resumable loop with a progress bar."""

from phyjax.train.loop import TrainState, fit, restore_latest

__all__ = ["TrainState", "fit", "restore_latest"]
