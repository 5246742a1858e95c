"""Training: state, checkpointing (Orbax), and a resumable loop with a progress bar."""

from phyjax.train.loop import TrainState, fit, make_train_step, restore_latest

__all__ = ["TrainState", "fit", "make_train_step", "restore_latest"]
