"""Layer-wise learning-rate decay: layers near the input move less than layers near the head.

In a tower of depth `L`, the embeddings (patch or token, class token, positions, pre-norm) are
layer 0, encoder block `i` is layer `i + 1`, and what follows the encoder (final norm, pooling
head, projection) is layer `L + 1`; a leaf of layer `k` learns at `decay ** (L + 1 - k)` times
the rate. Everything outside a tower (the classifier head, the logit scale) keeps the full
rate. Encoder blocks are stacked along a leading `depth` axis (one array for all blocks), so
their factor is a `(depth, 1, ...)` array: each block's row gets its own rate.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from eqvlp.models.onetower import OneTowerCLIP
from eqvlp.models.text import TextTransformer
from eqvlp.models.vit import ViT
from eqvlp.nn import Encoder
from eqvlp.sharding import path_child

_EMBEDDING_FIELDS = ("patch_embedding", "class_token", "position_embedding", "pre_norm",
                     "token_embedding")
_ONE_TOWER_TEXT_EMBEDDINGS = ("token_embedding", "text_position_embedding")


def _tower_depth(tower) -> int:
    return tower.encoder.depth


def layer_decay_factors(tree: PyTree, decay: float) -> PyTree:
    """Learning-rate factors shaped for `eqx.filter(tree, eqx.is_array)`'s leaves.

    `tree` is any pytree holding eqvlp models (a model, `{"model": ..., "head": ...}`, or a
    partition of one). Factors are NumPy float32 arrays: 0-d, or `(depth, 1, ...)` for
    stacked encoder leaves. `decay=1` gives ones everywhere.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}: 1 turns it off, "
                         "0.65-0.85 is usual for ViT fine-tuning")
    params = eqx.filter(tree, eqx.is_array)

    def factor(path: tuple, leaf) -> np.ndarray:
        node, tower, field, stacked = params, None, None, False
        for entry in path:
            if isinstance(node, (ViT, TextTransformer)):
                tower, field = node, entry.name
            elif isinstance(node, OneTowerCLIP) and entry.name in _ONE_TOWER_TEXT_EMBEDDINGS:
                tower, field = node.vit, "token_embedding"  # text enters the shared ViT
            elif isinstance(node, Encoder):
                stacked = True
            node = _child(node, entry)
        if tower is None:
            return np.ones((), np.float32)
        depth = _tower_depth(tower)
        if stacked:
            layer = np.arange(1, depth + 1, dtype=np.float32)
            factors = (decay ** (depth + 1 - layer)).astype(np.float32)
            return factors.reshape((depth,) + (1,) * (leaf.ndim - 1))
        layer = 0 if field in _EMBEDDING_FIELDS else depth + 1
        return np.asarray(decay ** (depth + 1 - layer), np.float32)

    return jax.tree_util.tree_map_with_path(factor, params)


def _child(node, entry):
    """The node `entry` names; an entry of another kind (none in eqvlp models) stays put."""
    try:
        return path_child(node, entry)
    except LookupError:
        return node


def scale_by_factors(factors: PyTree) -> optax.GradientTransformation:
    """Multiplies each update by its factor (put it after the optimiser: the factor then
    scales the learning rate and the decoupled weight decay together)."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        def scale(u: Float[Array, "..."], f) -> Float[Array, "..."]:
            return u * jnp.asarray(f, u.dtype)

        return jax.tree.map(scale, updates, factors), state

    return optax.GradientTransformation(init, update)
