"""`eqvlp train`: a sharded, checkpointed, multi-process training loop on generated pairs.

Data are generated deterministically from (seed, data position), so every process builds the
same global batch and hands JAX only its own slices; a restored run continues at exactly the
same sample. (Reading the user's own image-text shards is the data issue's job.)
"""

import dataclasses
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

from eqvlp import models, sharding
from eqvlp.train import checkpoint
from eqvlp.train.step import make_train_step, sharded_train_step

COLOURS = {
    "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1),
    "black": (0, 0, 0), "yellow": (1, 1, 0), "cyan": (0, 1, 1), "magenta": (1, 0, 1),
}
PLACES = ("top left", "top right", "bottom left", "bottom right")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; `eqvlp train --help` lists the same fields."""

    model: str = "clip-tiny"
    steps: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    rules: str = "dp"
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    log_every: int = 5


def generated_batch(position: int, batch_size: int, image_size: int, context_length: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of a coloured square in one quadrant and their captions' token ids.

    Token ids come from a fixed word vocabulary: [BOS]=1, words, [EOS]=2, pads 0.
    """
    rng = np.random.default_rng([seed, position])
    words = ["a", "square", "in", "the", *COLOURS, "top", "bottom", "left", "right"]
    vocab = {w: i + 4 for i, w in enumerate(words)}  # a list, not a set: same ids everywhere
    colours, places = list(COLOURS), list(PLACES)
    images = np.full((batch_size, image_size, image_size, 3), 0.5, np.float32)
    ids = np.zeros((batch_size, context_length), np.int32)
    half = image_size // 2
    for i in range(batch_size):
        c, p = rng.integers(len(colours)), rng.integers(len(places))
        top, left = half * (p // 2), half * (p % 2)
        images[i, top:top + half, left:left + half] = COLOURS[colours[c]]
        words = ["a", colours[c], "square", "in", "the", *places[p].split()]
        row = [1, *[vocab[w] for w in words], 2][:context_length]
        ids[i, : len(row)] = row
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    return images * 2 - 1, ids


def _global_array(host: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
    """A global array from a host copy of the whole batch: each process places its slices."""
    return jax.make_array_from_callback(host.shape, sharding_, lambda index: host[index])


def checksum(tree, mesh: jax.sharding.Mesh) -> float:
    """Sum of |x| over every array leaf (for comparing runs), reduced on the devices so that
    it works when no process holds whole arrays."""
    total = jax.jit(
        lambda t: sum(jax.numpy.sum(jax.numpy.abs(x)) for x in jax.tree.leaves(t)),
        out_shardings=jax.sharding.NamedSharding(mesh, jax.P()),
    )(tree)
    return float(total)


def train(cfg: TrainConfig, *, log=print) -> dict:
    """Runs `cfg.steps` steps (resuming from the latest checkpoint) and returns a summary."""
    mesh = sharding.make_mesh(data=cfg.data, fsdp=cfg.fsdp, tensor=cfg.tensor)
    rules = sharding.rules(cfg.rules)
    optimizer = optax.adamw(cfg.learning_rate)
    make_model = lambda: models.create(cfg.model, key=jax.random.key(cfg.seed))  # noqa: E731
    model = sharding.init_sharded(make_model, rules, mesh)
    opt_state = jax.jit(
        lambda m: optimizer.init(eqx.filter(m, eqx.is_array)),
        out_shardings=sharding.shardings(
            jax.eval_shape(lambda m: optimizer.init(eqx.filter(m, eqx.is_array)), model),
            rules, mesh),
    )(model)
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    rng = jax.device_put(jax.random.key_data(jax.random.key(cfg.seed + 1)), replicated)
    start = 0
    if cfg.checkpoint_dir and checkpoint.latest_step(cfg.checkpoint_dir) is not None:
        state = {"model": model, "opt_state": opt_state, "rng": rng}
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        state, extra = checkpoint.restore(cfg.checkpoint_dir, state, state_sh)
        model, opt_state, rng = state["model"], state["opt_state"], state["rng"]
        start = extra["data_position"]
        log(f"restored step {extra['step']} from {cfg.checkpoint_dir}")

    step_fn = sharded_train_step(make_train_step(optimizer), model, opt_state, rules, mesh)
    vision, text = model.config.vision, model.config.text
    images_sh, ids_sh = sharding.batch_sharding(mesh, 4), sharding.batch_sharding(mesh, 2)
    losses, started = [], time.perf_counter()
    with jax.set_mesh(mesh):
        for step in range(start, cfg.steps):
            images, ids = generated_batch(step, cfg.batch_size, vision.image_shape[0],
                                          text.context_length, cfg.seed)
            model, opt_state, loss = step_fn(model, opt_state, _global_array(images, images_sh),
                                             _global_array(ids, ids_sh))
            rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(rng))[0])
            losses.append(float(loss))
            if (step + 1) % cfg.log_every == 0 or step == start:
                log(f"step {step + 1:5d}  loss {losses[-1]:.4f}")
            if cfg.checkpoint_dir and ((step + 1) % cfg.checkpoint_every == 0
                                       or step + 1 == cfg.steps):
                checkpoint.save(cfg.checkpoint_dir, step + 1,
                                {"model": model, "opt_state": opt_state, "rng": rng},
                                {"step": step + 1, "data_position": step + 1})
    summary = {
        "steps": cfg.steps, "resumed_from": start, "losses": losses,
        "final_loss": losses[-1] if losses else None, "param_checksum": checksum(model, mesh),
        "mesh": dict(mesh.shape), "processes": jax.process_count(),
        "seconds": time.perf_counter() - started,
    }
    return summary


def write_summary(path: str | Path, summary: dict) -> None:
    Path(path).write_text(json.dumps(summary, indent=1))


