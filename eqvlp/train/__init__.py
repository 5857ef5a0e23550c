"""Training: the sharded step, checkpoints, and the `eqvlp train` loop."""

from eqvlp.train.step import contrastive_loss, make_train_step, sharded_train_step

__all__ = ["contrastive_loss", "make_train_step", "sharded_train_step"]
