"""One optimisation step of a contrastive model, on one device or sharded over a mesh.

The step is a pure function `(model, opt_state, images, token_ids) -> (model, opt_state, loss)`.
`sharded_train_step` jits it with parameter, optimizer-state and batch shardings from a rule
table, so the same step runs replicated ("dp"), fully sharded ("fsdp") or with tensor
parallelism ("fsdp_tp"). The model is anything that follows `eqvlp.models.protocol` (a preset or
your own module); `loss_fn=` replaces the default loss.

Donation: with `donate=True` the step reuses the memory of the model and optimizer state it is
given for the ones it returns, so those inputs are deleted by the call. It donates only arrays
it owns: ones that `sharding.shard` / `sharding.init_sharded` placed or that an earlier call of
the same step returned. Any other array (e.g. the unsharded model you built) is first copied
onto its sharding, and the copy is donated: the caller's arrays are never deleted.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, PyTree

from eqvlp import sharding
from eqvlp.losses import clip_loss, normalize, sigmoid_loss
from eqvlp.models.protocol import check_contrastive, logit_bias, loss_kind


def contrastive_loss(
    model, images: Float[Array, "batch height width 3"], token_ids: Int[Array, "batch length"]
) -> Float[Array, ""]:
    """The model's own loss on normalised embeddings: softmax (CLIP) or sigmoid (SigLIP), as
    `eqvlp.models.loss_kind` reads it; works for any model following the protocol."""
    check_contrastive(model, "the default contrastive_loss")
    zimg, ztxt = normalize(model.encode_image(images)), normalize(model.encode_text(token_ids))
    if loss_kind(model) == "sigmoid":
        return sigmoid_loss(zimg, ztxt, model.scale(), logit_bias(model))
    return clip_loss(zimg, ztxt, model.scale())


def make_train_step(
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[..., Float[Array, ""]] = contrastive_loss,
) -> Callable:
    """`step(model, opt_state, images, token_ids, *extra) -> (model, opt_state, loss)`, not yet
    jitted.

    `loss_fn(model, images, token_ids, *extra) -> scalar` defaults to `contrastive_loss`; pass
    your own for another objective (e.g. `eqvlp.losses.chunked_sigmoid_loss` on the embeddings).
    `extra` arguments (e.g. a PRNG key for CLIPA's masks) go to `loss_fn` as they are.
    """

    def step(model, opt_state, images, token_ids, *extra):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, images, token_ids, *extra)
        params = eqx.filter(model, eqx.is_array)
        # optax mixes Python floats with its int32 step count: allow standard promotion even
        # when the caller runs under strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


def _take_ownership(tree: PyTree, shardings: PyTree) -> PyTree:
    """`tree` with every array the step does not own replaced by a copy on its sharding."""

    leaves, treedef = jax.tree.flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    copy = [i for i, leaf in enumerate(leaves)
            if isinstance(leaf, jax.Array) and not sharding.is_owned(leaf)]
    for i, fresh in zip(copy, sharding.place_copies([leaves[i] for i in copy],
                                                    [targets[i] for i in copy])):
        leaves[i] = fresh
    return jax.tree.unflatten(treedef, leaves)


def sharded_train_step(
    step: Callable,
    model: PyTree,
    opt_state: PyTree,
    rule_table: sharding.RuleTable,
    mesh: Mesh,
    *,
    donate: bool = True,
) -> Callable:
    """`jax.jit(step)` with shardings from the rules; the batch splits over ("data", "fsdp").

    **Arguments:**

    - `step`: from `make_train_step`.
    - `model`, `opt_state`: arrays or `jax.eval_shape` structures; only their shapes are used.
    - `rule_table`: a rule table or a preset name (`"dp"`, `"fsdp"`, `"fsdp_tp"`).
    - `mesh`: from `sharding.make_mesh`.
    - `donate`: reuse the input model and optimizer state's memory for the outputs. Only arrays
      the step owns are donated (see the module docstring); yours are copied first.

    **Returns:** `step(model, opt_state, images, token_ids, *extra) -> (model, opt_state,
    loss)`; `extra` arguments (e.g. a PRNG key) are replicated.
    """
    rule_table = sharding.as_rules(rule_table)
    model_sh = sharding.shardings(model, rule_table, mesh)
    opt_sh = sharding.shardings(opt_state, rule_table, mesh)
    images_sh, ids_sh = sharding.batch_sharding(mesh, 4), sharding.batch_sharding(mesh, 2)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted: dict[int, Callable] = {}  # one jit per number of extra arguments

    def jit_for(extra: int) -> Callable:
        if extra not in jitted:
            jitted[extra] = jax.jit(
                step,
                in_shardings=(model_sh, opt_sh, images_sh, ids_sh) + (replicated,) * extra,
                out_shardings=(model_sh, opt_sh, replicated),
                donate_argnums=(0, 1) if donate else (),
            )
        return jitted[extra]

    def sharded_step(model, opt_state, images, token_ids, *extra):
        sharding.check_batch(images, mesh, "images")
        sharding.check_batch(token_ids, mesh, "token_ids")
        if donate:
            model, opt_state = _take_ownership(model, model_sh), _take_ownership(opt_state, opt_sh)
        new_model, new_state, loss = jit_for(len(extra))(model, opt_state, images, token_ids,
                                                         *extra)
        if donate:  # the next call may donate what this one returned
            sharding.mark_owned((new_model, new_state))
        return new_model, new_state, loss

    return sharded_step
