"""The train state of `eqvlp train` and the step that updates it.

The state is a dict: `model`; clip-rocket's `heads`; `opt_state` over both (what `trainable`
returns); the weights' `ema` (`optim.ema_decay`); BYOLIP's `target`, an EMA copy of model and
heads. `init_state` builds it, `with_optimizer` adds (or, after a CLIPA resize, rebuilds) the
optimiser state and places every array by the sharding rules, `make_loss` picks the objective
and `make_step` is the jitted step's body.
"""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from eqvlp import models, sharding
from eqvlp.losses import ema_update
from eqvlp.train.accumulate import accumulated_value_and_grad, embed_in_micro_batches
from eqvlp.train.clipa import carry_optimizer_state
from eqvlp.train.config import TrainConfig
from eqvlp.train.encode import example_keys, first_view
from eqvlp.train.objective import make_objective
from eqvlp.train.optim import ema_params, make_optimizer
from eqvlp.train.rocket import RocketHeads, rocket_loss

TRAINABLE = ("model", "heads")
# clip-rocket's heads (and their optimiser slots) are small: every device keeps all of them.
HEADS_REPLICATED = ((r"(^|\.)heads\.", jax.P()),)


def trainable(state: dict) -> dict:
    """What the optimiser updates: the model and, with clip-rocket, its heads."""
    return {name: state[name] for name in TRAINABLE if name in state}


def make_loss(cfg: TrainConfig, model_config, mesh) -> Callable:
    """`loss(trainable, embeddings, *, step, target) -> (loss, terms)` for `cfg.loss`."""
    if cfg.loss.name == "rocket":
        return functools.partial(rocket_loss, config=cfg.loss)
    objective = make_objective(cfg.loss.name, model_loss=model_config.loss,
                               label_smoothing=cfg.loss.label_smoothing,
                               chunk_size=cfg.loss.chunk_size, mesh=mesh)

    def loss(trainable, embeddings, *, step, target=None):
        return objective(trainable["model"], embeddings["image"], embeddings["text"]), {}

    return loss


def make_step(loss_fn, encode, optimizer, *, accumulation: int, seed: int,
              ema_decay: float | None, target_decay: float):
    """`step(state, batch, step) -> (state, metrics)`: per-example keys, exact accumulation,
    the update, the weights' EMA and BYOLIP's target."""

    def step_fn(state, batch, step):
        params_now = trainable(state)
        batch = dict(batch, key=example_keys(seed, step, batch["image"].shape[0]))
        target = None
        if "target" in state:  # BYOLIP: view-0 embeddings of the EMA model, no gradient
            target = (state["target"]["heads"], embed_in_micro_batches(
                encode, state["target"], first_view(batch), micro_batches=accumulation))

        def loss(params, embeddings):
            return loss_fn(params, embeddings, step=step, target=target)

        (value, terms), grads = accumulated_value_and_grad(
            encode, loss, params_now, batch, micro_batches=accumulation, has_aux=True)
        params = eqx.filter(params_now, eqx.is_array)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params, loss=value)
        updated = eqx.apply_updates(params_now, updates)
        new = dict(state, **updated, opt_state=opt_state)
        if ema_decay is not None:
            new["ema"] = ema_params(state["ema"], new["model"], ema_decay)
        if "target" in state:
            new["target"] = ema_update(state["target"], updated, target_decay)
        leaves = [g for g in jax.tree.leaves(grads) if g is not None]
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
        return new, {"loss": value, "grad_norm": grad_norm,
                     **{f"loss_{name}": term for name, term in terms.items()}}

    return step_fn


def _copy(tree):
    """Fresh buffers (the step donates the state: two names must not share one)."""
    return jax.tree.map(lambda x: x.copy() if eqx.is_array(x) else x, tree)


# Jitted functions (model init, steps) of recent runs in this process: train() again with the
# same config and shapes (a resume in a notebook, a test) reuses them instead of compiling again.
_COMPILED: dict = {}


def compiled(key, build: Callable) -> Callable:
    """`build()`'s result, cached under `key` (hashable: configs, tree structures, shardings)."""
    if key not in _COMPILED:
        while len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


def init_state(cfg: TrainConfig, model_config, rules, mesh) -> dict:
    """A new train state for `model_config` (without the optimiser state: `with_optimizer`):
    the model; clip-rocket's heads; the weights' EMA; BYOLIP's target (model and heads)."""
    model_class = models.presets.MODEL_CLASSES[type(model_config)]

    def make():
        return model_class(model_config, key=jax.random.key(cfg.seed))

    init = compiled(("init", model_config, cfg.seed, rules, mesh), lambda: jax.jit(
        make, out_shardings=sharding.shardings(jax.eval_shape(make), rules, mesh)))
    state = {"model": init()}
    if cfg.loss.name == "rocket":
        state["heads"] = RocketHeads(cfg.loss, model_config.embed_dim,
                                     key=jax.random.fold_in(jax.random.key(cfg.seed), 1))
    if cfg.optim.ema_decay is not None:
        state["ema"] = _copy(state["model"])
    if cfg.loss.ssl == "byolip":
        state["target"] = _copy(trainable(state))
    return state


def with_optimizer(state: dict, cfg: TrainConfig, rules, mesh):
    """`(state, optimizer)`: the optimiser built for the state's current shapes, its state
    initialised (or carried over from `state["opt_state"]` where shapes did not change, after a
    CLIPA resize), and every array placed as the rules say."""
    params = eqx.filter(trainable(state), eqx.is_array)
    optimizer = make_optimizer(cfg.optim, trainable(state), cfg.steps)
    opt_shardings = sharding.shardings(jax.eval_shape(optimizer.init, params), rules, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    if "opt_state" in state:
        opt_state = carry_optimizer_state(state["opt_state"], opt_state)
    arrays, static = eqx.partition(dict(state, opt_state=opt_state), eqx.is_array)
    # The run made these arrays itself and nobody else holds them: place them without a
    # transient second copy (the step donates them).
    return eqx.combine(sharding.shard(arrays, rules, mesh, copy=False), static), optimizer
