"""The optimiser of `eqvlp train`: AdamW with warm-up, decay masking, clipping, a NaN guard, EMA.

`make_optimizer(config, model, total_steps)` builds, outermost first:

1. `skip_nonfinite`: a step whose loss or gradients hold a NaN/Inf changes nothing (and is
   counted), so one bad batch cannot poison the weights or Adam's moments;
2. global-norm clipping (`clip_norm`);
3. AdamW (`b1`, `b2`, `eps`) on the `learning_rate` schedule, with decoupled weight decay on
   the leaves `decay_mask` selects: weight matrices and token-embedding tables only.

The whole chain runs under JAX's standard dtype promotion (optax mixes Python floats with its
int32 step count), so callers need no `jax.numpy_dtype_promotion` block even under strict
promotion. `ema_params` keeps an exponential moving average of the weights (`ema_decay`).
"""

import dataclasses
import math
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Int, PyTree, Real

from eqvlp import nn
from eqvlp.config_checks import check_fields
from eqvlp.losses.ema import ema_update
from eqvlp.models.contrastive import ContrastiveModel
from eqvlp.models.onetower import OneTowerCLIP
from eqvlp.models.text import TextTransformer
from eqvlp.models.vit import ViT

SCHEDULES = ("cosine", "rsqrt", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule; the defaults are CLIP's (b2 0.98, eps 1e-6, weight decay 0.1).

    **Arguments:**

    - `lr`: the peak learning rate, reached at the end of warm-up.
    - `warmup_steps`: linear warm-up from 0 to `lr` over this many optimiser steps.
    - `schedule`: after warm-up, `"cosine"` decays to `min_lr_ratio * lr` at the last step,
      `"rsqrt"` is big_vision's `lr * sqrt(t / (s + t))` with `s` the steps since warm-up and
      `t = rsqrt_timescale`, `"constant"` stays at `lr`.
    - `b1`, `b2`, `eps`: Adam's moment decays and denominator epsilon.
    - `weight_decay`: decoupled (AdamW) decay, scaled by the learning rate, on `decay_mask`.
    - `clip_norm`: clip gradients to this global norm first; `None` does not clip.
    - `ema_decay`: keep an EMA of the weights with this decay (`ema_params`); `None` keeps none.
    - `skip_nonfinite`: skip (and count) steps whose loss or gradients are not finite.
    """

    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: Literal["cosine", "rsqrt", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    rsqrt_timescale: int = 10_000
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    ema_decay: float | None = None
    skip_nonfinite: bool = True

    def __post_init__(self):
        check_fields(self)

        def check(ok: bool, field: str, fix: str):
            if not ok:
                value = getattr(self, field)
                raise ValueError(f"OptimConfig.{field}={value!r} is invalid: {fix}")

        check(math.isfinite(self.lr) and self.lr > 0, "lr", "use a positive rate, e.g. 1e-3")
        check(self.warmup_steps >= 0, "warmup_steps", "use 0 (no warm-up) or a positive step count")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "use a fraction of lr in [0, 1]")
        check(self.rsqrt_timescale > 0, "rsqrt_timescale", "use a positive step count, e.g. 10_000")
        check(0 <= self.b1 < 1, "b1", "use a decay in [0, 1), e.g. 0.9")
        check(0 <= self.b2 < 1, "b2", "use a decay in [0, 1), e.g. 0.98")
        check(self.eps > 0, "eps", "use a small positive epsilon, e.g. 1e-6")
        check(self.weight_decay >= 0, "weight_decay", "use 0 (none) or a positive decay, e.g. 0.1")
        check(self.clip_norm is None or self.clip_norm > 0, "clip_norm",
              "use None (no clipping) or a positive norm, e.g. 1.0")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay",
              "use None (no EMA) or a decay in (0, 1), e.g. 0.9999")


def learning_rate(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning rate of optimiser step `count` (0-based): linear warm-up, then the schedule.

    Warm-up gives `lr * count / warmup_steps` (0 at the first step, `lr` at `warmup_steps`).
    The cosine reaches `min_lr_ratio * lr` at `count = total_steps` and stays there. The
    schedule takes a step count or an array of them (traced or not), under any dtype promotion.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}: a run needs at least one optimiser step")
    if config.warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps={config.warmup_steps} is longer than the run ({total_steps} steps): "
            "shorten OptimConfig.warmup_steps or train for more steps"
        )
    lr, warmup = config.lr, config.warmup_steps
    decay_steps = max(total_steps - warmup, 1)

    def schedule(count: Int[ArrayLike, "*steps"]) -> Real[Array, "*steps"]:
        step = jnp.asarray(count).astype(jnp.float32)
        since = jnp.maximum(step - warmup, 0.0)  # steps since the end of warm-up
        if config.schedule == "cosine":
            progress = jnp.minimum(since / decay_steps, 1.0)
            cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress))
            after = lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)
        elif config.schedule == "rsqrt":
            timescale = float(config.rsqrt_timescale)
            after = lr * jnp.sqrt(timescale / (since + timescale))
        else:
            after = jnp.full_like(step, lr)
        if warmup == 0:
            return after
        return jnp.where(step < warmup, lr * step / warmup, after)

    return schedule


# Leaves decided by the block that owns them: (owner class, field) -> decays. `None` as the field
# covers every field of the owner. Checked in order; the first match wins.
_OWNED: tuple[tuple[type, str | None, bool], ...] = (
    (nn.LayerNorm, None, False),
    (eqx.nn.LayerNorm, None, False),
    (eqx.nn.RMSNorm, None, False),
    (eqx.nn.GroupNorm, None, False),
    (nn.LearnedPositionEmbedding, None, False),
    (nn.Linear, "weight", True),
    (eqx.nn.Linear, "weight", True),
    (eqx.nn.Conv, "weight", True),
    (eqx.nn.Embedding, "weight", True),
    (nn.Linear, None, False),  # the bias
    (eqx.nn.Linear, None, False),
    (eqx.nn.Conv, None, False),
    (nn.MAPHead, "probe", False),
    (ViT, "class_token", False),
    (TextTransformer, "token_embedding", True),
    (OneTowerCLIP, "token_embedding", True),
    (ContrastiveModel, "logit_scale", False),
    (ContrastiveModel, "logit_bias", False),
)


def _decays(owner: Any, field: str | None, leaf: Any) -> bool:
    for cls, name, decays in _OWNED:
        if isinstance(owner, cls) and name in (None, field):
            return decays
    # An array directly on a module eqvlp does not know: a matrix with more than one row (a
    # weight, an embedding table) decays; scalars, vectors and a (1, dim) learned token do not.
    return leaf.ndim >= 2 and leaf.shape[0] > 1


def _is_array_like(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def decay_mask(model: PyTree) -> PyTree[bool]:
    """`True` on the leaves weight decay applies to, over `eqx.filter(model, eqx.is_array)`.

    A leaf is judged by what it is: the module that owns it and its field there, wherever
    that module sits in the tree and whatever the fields above it are called. Decay applies
    to `Linear` / convolution / patch-projection weights and token-embedding tables; not to
    LayerNorms, biases, learned position tables, class tokens, MAP probes, or the logit scale
    and bias. Stacked `Encoder` layers are judged by their block, not by their shape. An array
    held directly by a module eqvlp does not know decays if it is a matrix with more than one
    row.

    **Returns:** Python bools shaped like `eqx.filter(model, eqx.is_array)` (the `mask=` that
    `optax.adamw` takes for updates of that structure). `model` may be abstract
    (`jax.eval_shape` output): only its structure and shapes are read.
    """
    params = eqx.filter(model, _is_array_like)

    def decide(path: tuple, leaf: Any) -> bool:
        node, owner, field = params, None, None
        for entry in path:
            if isinstance(node, eqx.Module):
                owner, field = node, getattr(entry, "name", None)
            if isinstance(entry, jax.tree_util.GetAttrKey):
                node = getattr(node, entry.name)
            elif isinstance(entry, jax.tree_util.SequenceKey):
                node = node[entry.idx]
            elif isinstance(entry, jax.tree_util.DictKey):
                node = node[entry.key]
            else:  # a custom pytree node: judge by the nearest module above it
                break
        return _decays(owner, field, leaf)

    return jax.tree_util.tree_map_with_path(decide, params)


class SkipNonfiniteState(NamedTuple):
    """`inner_state` as of the last finite step, and how many steps were skipped in total."""

    inner_state: Any
    skipped: Int[Array, ""]


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps `inner` so that a step with a NaN/Inf loss or gradient is skipped.

    A skipped step returns zero updates and leaves `inner`'s state (Adam's moments, its step
    count) as it was; `state.skipped` counts skipped steps. Pass the loss as
    `update(grads, state, params, loss=loss)`; without it only the gradients are checked.

    Unlike `optax.apply_if_finite`, this also checks the loss and never gives up and applies a
    non-finite update after some number of consecutive failures.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return SkipNonfiniteState(inner.init(params), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None, *, loss=None, **extra_args):
        checked = jax.tree.leaves(updates) + ([] if loss is None else [jnp.asarray(loss)])
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in checked]))
        # Both outcomes are computed and one is selected: a `lax.cond` here would put the
        # inner update's collectives (e.g. the global norm of sharded gradients) inside a
        # conditional, which XLA's CPU runtime can deadlock on with many devices.
        candidate, candidate_inner = inner.update(updates, state.inner_state, params,
                                                  **extra_args)
        new_updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), candidate)
        new_inner = jax.tree.map(lambda n, o: jnp.where(finite, n, o), candidate_inner,
                                 state.inner_state)
        skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
        return new_updates, SkipNonfiniteState(new_inner, skipped)

    return optax.GradientTransformationExtraArgs(init, update)


def _standard_promotion(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """`inner` traced under standard dtype promotion, whatever the caller's setting."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return inner.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return inner.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(
    config: OptimConfig, model: PyTree, total_steps: int
) -> optax.GradientTransformationExtraArgs:
    """The training optimiser: (skip non-finite) -> clip by global norm -> AdamW with decay mask.

    Use it on `params = eqx.filter(model, eqx.is_array)` and gradients of the same structure
    (what `eqx.filter_value_and_grad` returns):

        opt_state = optimizer.init(params)
        updates, opt_state = optimizer.update(grads, opt_state, params, loss=loss)
        model = eqx.apply_updates(model, updates)

    `loss=` is optional (it lets a NaN loss skip the step). No dtype-promotion block is needed.
    """
    steps = [] if config.clip_norm is None else [optax.clip_by_global_norm(config.clip_norm)]
    steps.append(
        optax.adamw(
            learning_rate(config, total_steps),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=decay_mask(model),
        )
    )
    optimizer = optax.chain(*steps)
    if config.skip_nonfinite:
        optimizer = skip_nonfinite(optimizer)
    return _standard_promotion(optimizer)


def ema_params(ema: PyTree, params: PyTree, decay: Real[ArrayLike, ""]) -> PyTree:
    """The weights' moving average after one step: `decay * ema + (1 - decay) * params`.

    Start with `ema = model` and update after every optimiser step; evaluate (and export)
    the EMA model when `OptimConfig.ema_decay` is set, and checkpoint it beside the model.
    Float leaves are averaged in float32; everything else is taken from `params`. This is
    `eqvlp.losses.ema_update` (BYOLIP's target network), applied to the trained weights.
    """
    return ema_update(ema, params, decay)
