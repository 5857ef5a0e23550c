"""One optimisation step of a two-tower model, on one device or sharded over a mesh.

The step is a pure function `(model, opt_state, images, token_ids) -> (model, opt_state, loss)`.
`sharded_train_step` jits it with parameter, optimizer-state and batch shardings from a rule
table, so the same step runs replicated ("dp"), fully sharded ("fsdp") or with tensor
parallelism ("fsdp_tp").
"""

from collections.abc import Callable

import equinox as eqx
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, PyTree

from eqvlp import sharding
from eqvlp.losses import clip_loss, normalize, sigmoid_loss
from eqvlp.models import CLIP


def contrastive_loss(
    model: CLIP, images: Float[Array, "batch height width 3"], token_ids: Int[Array, "batch length"]
) -> Float[Array, ""]:
    """The model's own loss: softmax (CLIP) or sigmoid (SigLIP) on normalised embeddings."""
    zimg, ztxt = model(images, token_ids)
    zimg, ztxt = normalize(zimg), normalize(ztxt)
    if model.config.loss == "sigmoid":
        return sigmoid_loss(zimg, ztxt, model.scale(), model.bias())
    return clip_loss(zimg, ztxt, model.scale())


def make_train_step(
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[..., Float[Array, ""]] = contrastive_loss,
) -> Callable:
    """`step(model, opt_state, images, token_ids) -> (model, opt_state, loss)`, not yet jitted."""

    def step(model, opt_state, images, token_ids):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, images, token_ids)
        params = eqx.filter(model, eqx.is_array)
        # optax mixes Python floats with its int32 step count: allow standard promotion even
        # when the caller runs under strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


def sharded_train_step(
    step: Callable,
    model: PyTree,
    opt_state: PyTree,
    rule_table: sharding.Rules,
    mesh: Mesh,
    *,
    donate: bool = True,
) -> Callable:
    """`jax.jit(step)` with shardings from the rules; the batch splits over ("data", "fsdp")."""
    model_sh = sharding.shardings(model, rule_table, mesh)
    opt_sh = sharding.shardings(opt_state, rule_table, mesh)
    images_sh, ids_sh = sharding.batch_sharding(mesh, 4), sharding.batch_sharding(mesh, 2)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(model_sh, opt_sh, images_sh, ids_sh),
        out_shardings=(model_sh, opt_sh, replicated),
        donate_argnums=(0, 1) if donate else (),
    )
