"""The text tower: token + position embeddings -> encoder (causal or not) -> LN -> pool -> projection.

Token ids are checked against the vocabulary (`check_token_ids`): an id past the table would
embed as NaN and a negative one would wrap to the end of it, both silently.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Shaped

from eqvlp.losses.validation import concrete
from eqvlp.models.config import TextConfig
from eqvlp.nn import Encoder, LayerNorm, LearnedPositionEmbedding, Linear, pool


def check_token_ids(
    fn: str,
    token_ids: Shaped[Array, "*shape"],
    vocab_size: int,
    out: Float[Array, "*out"] | None = None,
) -> Float[Array, "*out"] | None:
    """Raises unless every id is in `[0, vocab_size)`; returns `out`.

    Concrete ids (an eager call) are checked here and raise a `ValueError`. Traced ids (under
    `jit`) are checked the way the losses check their inputs: `equinox.error_if` on `out` (the
    embeddings computed from them), one min/max reduction per batch; with
    `EQX_ON_ERROR=nan` the embeddings become NaN instead (and the train step is skipped).
    """
    if token_ids.size == 0:
        return out
    fix = (
        f"every id must be in [0, {vocab_size}) (TextConfig.vocab_size): tokenize with the "
        "model's tokenizer, or build the model with a vocabulary that covers your ids"
    )
    ids = concrete(token_ids)
    if ids is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{fn}: token id {bad} is outside the vocabulary: {fix}")
        return out
    if out is None:
        return None
    bad = (jnp.min(token_ids) < 0) | (jnp.max(token_ids) >= vocab_size)
    # A gate multiplying `out`, as `losses.check_finite` does: under `grad` the primal `out` may
    # be dead code, but the cotangent still flows through the gate, so the check still runs.
    message = f"{fn}: a token id is outside the vocabulary: {fix}"
    gate = eqx.error_if(jnp.ones((), out.dtype), bad, message)
    return out * gate


def check_token_batch(fn: str, token_ids, context_length: int, config_name: str) -> None:
    """Static checks on a batch of token ids: an integer array `(batch, length)`, `1 <= length
    <= context_length`."""
    if not hasattr(token_ids, "ndim") or not hasattr(token_ids, "dtype"):
        raise TypeError(
            f"{fn} expects token ids as an integer array of shape (batch, length), got a "
            f"{type(token_ids).__name__}: wrap it with jnp.asarray(ids, jnp.int32)"
        )
    if token_ids.ndim != 2 or token_ids.shape[1] > context_length:
        raise ValueError(
            f"{fn} expects token ids of shape (batch, {context_length}) (or shorter), got "
            f"{tuple(token_ids.shape)}: tokenize with context_length={context_length}, or set "
            f"{config_name}.context_length={token_ids.shape[-1]}"
        )
    if token_ids.shape[1] == 0:
        raise ValueError(
            f"{fn}: token sequences are empty, shape {tuple(token_ids.shape)}: every sequence "
            "needs at least one token (tokenize pads to a fixed length with BOS and EOS)"
        )
    if not jnp.issubdtype(token_ids.dtype, jnp.integer):
        raise TypeError(f"{fn}: token ids must be integers, got {token_ids.dtype}: tokenize first")


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

    def token_mask(self, token_ids: Int[Array, " length"]) -> Bool[Array, " length"] | None:
        """`True` at the positions that are tokens, not padding (`None` without a pad id).
        Position 0 always counts, so that a row of padding still has a key to attend to."""
        pad = self.config.pad_token_id
        if pad is None:
            return None
        return (token_ids != pad) | (jnp.arange(token_ids.shape[0]) == 0)

    def __call__(self, token_ids: Int[Array, " length"]) -> Float[Array, " out_dim"]:
        c = self.config
        if not hasattr(token_ids, "ndim"):
            raise TypeError(
                f"text tower expects token ids as an integer array (length,), got a "
                f"{type(token_ids).__name__}: wrap it with jnp.asarray(ids, jnp.int32)"
            )
        if token_ids.ndim != 1 or not 1 <= token_ids.shape[0] <= c.context_length:
            raise ValueError(
                f"text tower expects token ids of shape (length,) with 1 <= length <= "
                f"{c.context_length}, got {tuple(token_ids.shape)}: truncate to "
                f"{c.context_length} tokens or set TextConfig.context_length"
            )
        if not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise TypeError(f"token ids must be integers, got {token_ids.dtype}: tokenize first")
        check_token_ids("text tower", token_ids, c.vocab_size)  # concrete ids: before any work
        mask = self.token_mask(token_ids)
        x = self.final_norm(self.encoder(self.embed(token_ids), mask=mask, causal=c.causal))
        pooled = pool(x, c.pooling, token_ids=token_ids, eos_token_id=c.eos_token_id, mask=mask)
        out = pooled if self.projection is None else self.projection(pooled)
        return check_token_ids("text tower", token_ids, c.vocab_size, out)
