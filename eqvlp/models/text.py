"""The text tower: token + position embeddings -> encoder (causal or not) -> LN -> pool -> projection."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from eqvlp.models.config import TextConfig
from eqvlp.nn import Encoder, LayerNorm, LearnedPositionEmbedding, Linear, pool


class TextTransformer(eqx.Module):
    """A text transformer that maps one token sequence `(length,)` to one embedding.

    Sequences may be shorter than `context_length` (the first positions are used).
    """

    token_embedding: Float[Array, "vocab dim"]
    position_embedding: LearnedPositionEmbedding
    encoder: Encoder
    final_norm: LayerNorm
    projection: Linear | None
    config: TextConfig = eqx.field(static=True)

    def __init__(self, config: TextConfig, *, key: PRNGKeyArray):
        c = config
        keys = jax.random.split(key, 4)
        self.config = c
        self.token_embedding = 0.02 * jax.random.normal(
            keys[0], (c.vocab_size, c.width), jnp.float32
        )
        self.position_embedding = LearnedPositionEmbedding(
            c.context_length, c.width, init_std=0.01, key=keys[1]
        )
        self.encoder = Encoder(
            c.depth, c.width, c.num_heads, c.mlp_dim, activation=c.activation,
            layer_norm_eps=c.layer_norm_eps, remat=c.remat, attention_impl=c.attention_impl,
            key=keys[2],
        )
        self.final_norm = LayerNorm(c.width, eps=c.layer_norm_eps)
        self.projection = (
            Linear(c.width, c.projection_dim, use_bias=c.projection_bias,
                   init_std=c.width**-0.5, key=keys[3])
            if c.projection_dim else None
        )

    def embed(self, token_ids: Int[Array, " length"]) -> Float[Array, "length dim"]:
        """Token embeddings plus the first `length` position embeddings."""
        length = token_ids.shape[0]
        x = jnp.take(self.token_embedding, token_ids, axis=0)
        positions = self.position_embedding.weight[:length]
        return x + positions.astype(x.dtype)

    def __call__(self, token_ids: Int[Array, " length"]) -> Float[Array, " out_dim"]:
        c = self.config
        if token_ids.ndim != 1 or token_ids.shape[0] > c.context_length:
            raise ValueError(
                f"text tower expects token ids of shape (length,) with length <= "
                f"{c.context_length}, got {tuple(token_ids.shape)}: truncate to "
                f"{c.context_length} tokens or set TextConfig.context_length"
            )
        if not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise TypeError(f"token ids must be integers, got {token_ids.dtype}: tokenize first")
        x = self.final_norm(self.encoder(self.embed(token_ids), causal=c.causal))
        pooled = pool(x, c.pooling, token_ids=token_ids, eos_token_id=c.eos_token_id)
        return pooled if self.projection is None else self.projection(pooled)
