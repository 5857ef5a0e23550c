"""The training objective chosen by `LossConfig`: a function of the model and its embeddings.

`objective(model, zimg, ztxt) -> loss` takes un-normalised embeddings of the whole (accumulated)
batch; the model supplies the learned scale and, if it has one, the bias (any model following
`eqvlp.models.protocol`). Keeping the loss a function of embeddings
is what makes exact gradient accumulation possible (`eqvlp.train.accumulate`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from eqvlp.losses import (
    chunked_sigmoid_loss,
    clip_loss,
    distributed_sigmoid_loss,
    normalize,
    shard_loss,
    sigmoid_loss,
)
from eqvlp.models.protocol import logit_bias
from eqvlp.sharding import BATCH_AXES

Objective = Callable[..., Float[Array, ""]]


def resolve_loss(name: str, model_loss: str) -> str:
    """`auto` becomes the model's own loss (`softmax` or `sigmoid`)."""
    return model_loss if name == "auto" else name


def make_objective(name: str, *, model_loss: str = "softmax", label_smoothing: float = 0.0,
                   chunk_size: int = 512, mesh: jax.sharding.Mesh | None = None) -> Objective:
    """`objective(model, zimg, ztxt)` for a loss name of `LossConfig`.

    `ring_sigmoid` passes text embeddings round the devices of the mesh's batch axes
    (`distributed_sigmoid_loss` under `shard_map`), so it needs `mesh`.
    """
    name = resolve_loss(name, model_loss)
    if name == "softmax":
        def loss(zimg, ztxt, scale, bias):
            return clip_loss(zimg, ztxt, scale, label_smoothing=label_smoothing)
    elif name == "sigmoid":
        loss = sigmoid_loss
    elif name == "chunked_sigmoid":
        def loss(zimg, ztxt, scale, bias):
            return chunked_sigmoid_loss(zimg, ztxt, scale, bias, chunk_size=chunk_size)
    elif name == "ring_sigmoid":
        if mesh is None:
            raise ValueError("loss 'ring_sigmoid' needs the device mesh: pass mesh=")
        axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
        loss = shard_loss(distributed_sigmoid_loss, mesh, axes)
    else:
        raise ValueError(f"unknown loss {name!r}: use auto, softmax, sigmoid, chunked_sigmoid "
                         "or ring_sigmoid")

    def objective(model, zimg: Float[Array, "batch dim"],
                  ztxt: Float[Array, "batch dim"]) -> Float[Array, ""]:
        # A diverged step gives non-finite embeddings. The losses would raise on them; the
        # trainer's policy is to skip such a step, so the loss sees zeros and the result is
        # made NaN, which the optimiser's non-finite guard skips and counts.
        finite = jnp.all(jnp.isfinite(zimg)) & jnp.all(jnp.isfinite(ztxt))
        zimg, ztxt = (jnp.where(finite, z, jnp.zeros_like(z)) for z in (zimg, ztxt))
        value = loss(normalize(zimg), normalize(ztxt), model.scale(), logit_bias(model))
        return jnp.where(finite, value, jnp.nan)

    return objective
