"""The ViT image tower: patches -> (+CLS) -> positions -> (pre-LN) -> encoder -> LN -> pool -> projection."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvlp.models.config import ViTConfig
from eqvlp.nn import (
    ConvStem,
    Encoder,
    LayerNorm,
    LearnedPositionEmbedding,
    Linear,
    MAPHead,
    PatchEmbedding,
    SinCosPositionEmbedding,
    pool,
)


class ViT(eqx.Module):
    """A Vision Transformer that maps one image `(H, W, 3)` to one embedding."""

    patch_embedding: PatchEmbedding | ConvStem
    class_token: Float[Array, "1 dim"] | None
    position_embedding: LearnedPositionEmbedding | SinCosPositionEmbedding
    pre_norm: LayerNorm | None
    encoder: Encoder
    final_norm: LayerNorm
    head: MAPHead | None
    projection: Linear | None
    config: ViTConfig = eqx.field(static=True)

    def __init__(self, config: ViTConfig, *, key: PRNGKeyArray):
        c = config
        keys = jax.random.split(key, 6)
        self.config = c
        if c.stem == "conv":
            self.patch_embedding = ConvStem(c.patch_size, c.width, widths=c.stem_widths,
                                            norm=c.stem_norm, key=keys[0])
        else:
            self.patch_embedding = PatchEmbedding(
                c.patch_size, c.width, use_bias=c.patch_bias, key=keys[0]
            )
        self.class_token = (
            0.02 * jax.random.normal(keys[1], (1, c.width), jnp.float32) if c.class_token else None
        )
        if c.position_embedding == "learned":
            self.position_embedding = LearnedPositionEmbedding(c.num_tokens, c.width, key=keys[2])
        else:
            self.position_embedding = SinCosPositionEmbedding(
                c.grid, c.width, num_prefix=c.num_prefix
            )
        self.pre_norm = LayerNorm(c.width, eps=c.layer_norm_eps) if c.pre_norm else None
        self.encoder = Encoder(
            c.depth, c.width, c.num_heads, c.mlp_dim, activation=c.activation,
            layer_norm_eps=c.layer_norm_eps, remat=c.remat, attention_impl=c.attention_impl,
            key=keys[3],
        )
        self.final_norm = LayerNorm(c.width, eps=c.layer_norm_eps)
        self.head = (
            MAPHead(c.width, c.num_heads, c.mlp_dim, activation=c.activation,
                    layer_norm_eps=c.layer_norm_eps, attention_impl=c.attention_impl,
                    key=keys[4])
            if c.pooling == "map" else None
        )
        self.projection = (
            Linear(c.width, c.projection_dim, use_bias=c.projection_bias,
                   init_std=c.width**-0.5, key=keys[5])
            if c.projection_dim else None
        )

    def embed(self, image: Float[Array, "height width 3"]) -> Float[Array, "tokens dim"]:
        """Patch tokens (with CLS first) plus position embeddings, before the encoder.

        Token-dropping methods (CLIPA masking) act on this output.
        """
        x = self.patch_embedding(image)
        if self.class_token is not None:
            x = jnp.concatenate([self.class_token.astype(x.dtype), x], axis=0)
        return self.position_embedding(x)

    def encode_tokens(self, x: Float[Array, "tokens dim"]) -> Float[Array, " out_dim"]:
        """Encoder, final LN, pooling and projection of an embedded token sequence."""
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        x = self.final_norm(self.encoder(x))
        if self.head is not None:
            pooled = self.head(x[self.config.num_prefix :])
        elif self.config.pooling == "gap":
            pooled = pool(x[self.config.num_prefix :], "gap")
        else:
            pooled = pool(x, "cls")
        return pooled if self.projection is None else self.projection(pooled)

    def __call__(self, image: Float[Array, "height width 3"]) -> Float[Array, " out_dim"]:
        expected = self.config.image_shape
        if not hasattr(image, "shape"):
            raise TypeError(
                f"image tower expects one image as a float array {expected}, got a "
                f"{type(image).__name__}: wrap it with jnp.asarray(image, jnp.float32)"
            )
        if tuple(image.shape) != expected:
            raise ValueError(
                f"image tower expects one image of shape {expected}, got {tuple(image.shape)}: "
                "resize the image, or build the tower with ViTConfig(image_size=...) and "
                "resample its position embeddings"
            )
        return self.encode_tokens(self.embed(image))
