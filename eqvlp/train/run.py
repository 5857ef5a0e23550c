"""A finished or running `eqvlp train` run directory, loaded back: config, model, tokenizer.

`eqvlp eval --checkpoint DIR`, fine-tuning and export start from here.
"""

import json
import warnings
from pathlib import Path

import equinox as eqx
import jax

from eqvlp import models
from eqvlp.train import checkpoint
from eqvlp.train.clipa import phase_at, training_phases
from eqvlp.train.config import TrainConfig, from_json
from eqvlp.train.loop import data_config


def load_config(run: str | Path) -> TrainConfig:
    """The `TrainConfig` a run was started with (`DIR/config.json`)."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run} an eqvlp train run directory?")
    return from_json(json.loads(path.read_text()))


def checkpoint_model_config(cfg: TrainConfig, step: int):
    """The model config of the checkpoint after `step` steps: CLIPA's reduced phase has its
    own image size (the phase that trained the checkpoint's last step decides)."""
    model_config = cfg.model_config()
    phases = training_phases(cfg, model_config, data_config(cfg, model_config))
    return phase_at(phases, max(step - 1, 0)).model_config


def load_run(run: str | Path, *, step: int | None = None, ema: bool = False):
    """`(model, config, tokenizer)` of a run at its latest (or a given) checkpoint.

    The model is restored on the local devices, replicated; `ema=True` takes the EMA weights
    (runs with `optim.ema_decay` set). The tokenizer is None for CLIPPO (rendered text).
    """
    cfg = load_config(run)
    if ema and cfg.optim.ema_decay is None:
        raise ValueError(f"run {run} kept no EMA weights (optim.ema_decay was not set)")
    ckpt_dir = Path(run) / "checkpoints"
    steps = checkpoint.committed_steps(ckpt_dir)[::-1] if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"run {run} has no committed checkpoint in {ckpt_dir}")
    name = "ema" if ema else "model"
    problems = []
    for candidate in steps:  # newest first: a damaged checkpoint falls back to an older one
        # a checkpoint taken in CLIPA's reduced phase holds the model at that phase's image size
        model_config = checkpoint_model_config(cfg, candidate)
        model_class = models.presets.MODEL_CLASSES[type(model_config)]
        model = model_class(model_config, key=jax.random.key(cfg.seed))
        arrays, static = eqx.partition(model, eqx.is_array)
        try:
            # the checkpoint holds {"model", "opt_state", ["ema"]}: read only the weights asked for
            restored, _ = checkpoint.restore(ckpt_dir, {name: arrays}, step=candidate)
            break
        except checkpoint.CheckpointError as error:
            if step is not None:
                raise
            problems.append(str(error))
            warnings.warn(f"checkpoint step {candidate} of {run} is damaged, trying an older "
                          f"one: {error}", stacklevel=2)
    else:
        raise checkpoint.CheckpointError(f"run {run} has no intact checkpoint: "
                                         + "; ".join(problems))
    model = eqx.combine(restored[name], static)
    tokenizer = None
    if (Path(run) / "tokenizer.json").exists():
        from eqvlp.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(Path(run) / "tokenizer.json")
    return model, cfg, tokenizer
