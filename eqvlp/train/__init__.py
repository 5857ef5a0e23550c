"""Training: configs, the optimiser, exact accumulation, the step, checkpoints, the loop.

- `TrainConfig`, `load_config`, `override`: what one `eqvlp train` run does.
- `train`: the main job (data, step, evaluation, checkpoints, outputs in the run directory).
- `load_run`: a run directory's model, config and tokenizer.
- `OptimConfig`, `make_optimizer`, `learning_rate`, `decay_mask`, `skip_nonfinite`,
  `SkipNonfiniteState`, `ema_params`: AdamW with warm-up + cosine/rsqrt, masked weight decay,
  non-finite steps skipped, weight EMA.
- `accumulated_value_and_grad`, `embed_in_micro_batches`: exact gradient accumulation for
  contrastive losses.
- `make_objective`: the loss chosen by `LossConfig`; `RocketHeads`, `rocket_loss`: clip-rocket's
  heads and loss on embeddings.
- `make_encoder`, `example_keys`: what the step feeds the towers (views, CLIPA masks drawn from
  per-example keys).
- `TrainPhase`, `training_phases`: CLIPA's reduced and full-resolution phases of a run.
- `make_train_step`, `sharded_train_step`, `contrastive_loss`: a plain sharded step for custom
  loops (any model following `eqvlp.models.protocol`).
- `checkpoint`: save / restore / latest_step of any pytree of arrays (tensorstore).
"""

from eqvlp.train import checkpoint
from eqvlp.train.accumulate import accumulated_value_and_grad, embed_in_micro_batches
from eqvlp.train.clipa import TrainPhase, training_phases
from eqvlp.train.config import TrainConfig, load_config, override
from eqvlp.train.encode import example_keys, make_encoder
from eqvlp.train.loop import train
from eqvlp.train.objective import make_objective
from eqvlp.train.optim import (
    OptimConfig,
    SkipNonfiniteState,
    decay_mask,
    ema_params,
    learning_rate,
    make_optimizer,
    skip_nonfinite,
)
from eqvlp.train.rocket import RocketHeads, rocket_loss
from eqvlp.train.run import load_run
from eqvlp.train.step import contrastive_loss, make_train_step, sharded_train_step

__all__ = [
    "OptimConfig",
    "RocketHeads",
    "SkipNonfiniteState",
    "TrainConfig",
    "TrainPhase",
    "accumulated_value_and_grad",
    "checkpoint",
    "contrastive_loss",
    "decay_mask",
    "ema_params",
    "embed_in_micro_batches",
    "example_keys",
    "learning_rate",
    "load_config",
    "load_run",
    "make_encoder",
    "make_objective",
    "make_optimizer",
    "make_train_step",
    "override",
    "rocket_loss",
    "sharded_train_step",
    "skip_nonfinite",
    "train",
    "training_phases",
]
