"""1T-CLIP: one shared transformer for images and tokenized text (CLIPPO's baseline).

Images enter through the ViT's patch and position embeddings, text through its own token and
position embeddings; from there both run the SAME encoder, final LayerNorm, pooling head and
projection (`ViT.encode_tokens`). Compared with CLIPPO it keeps a tokenizer; compared with
CLIP it shares everything but the embeddings.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray

from eqvlp.models.config import ViTConfig
from eqvlp.masking.image import ImageMask
from eqvlp.models.contrastive import ContrastiveModel, apply_vit, check_images
from eqvlp.models.settings import ContrastiveSettings
from eqvlp.models.text import check_token_batch, check_token_ids
from eqvlp.models.vit import ViT
from eqvlp.nn import LearnedPositionEmbedding
from eqvlp.nn.precision import cast_floating


@dataclasses.dataclass(frozen=True)
class OneTowerConfig(ContrastiveSettings):
    """A 1T-CLIP model.

    `vision` sizes the shared transformer (width, depth, heads, pooling, projection) and the
    image side (image and patch size); `vocab_size` and `context_length` size the text
    embeddings. Text is bidirectional; padding tokens are attended to, as in big_vision's and
    SigLIP's text towers (pad to a fixed length). Logit scale and bias as in `CLIPPOConfig`.
    """

    vision: ViTConfig = dataclasses.field(
        default_factory=lambda: ViTConfig.b16(class_token=False, pooling="map", projection_dim=768,
                                              projection_bias=True, activation="gelu_tanh")
    )
    vocab_size: int = 32000
    context_length: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.vocab_size < 1 or self.context_length < 1:
            raise ValueError(
                f"vocab_size and context_length must be >= 1, got {self.vocab_size} and "
                f"{self.context_length}: use your tokenizer's vocabulary size"
            )


class OneTowerCLIP(ContrastiveModel):
    """A shared transformer with separate image (patch) and text (token) embeddings.

    `encode_image` takes float images, `encode_text` int token ids `(batch, length)` with
    `length <= context_length`; both return projected, un-normalised embeddings.
    """

    vit: ViT  # patch + position embeddings for images, and the shared encoder, LN, head, projection
    token_embedding: Float[Array, "vocab dim"]
    text_position_embedding: LearnedPositionEmbedding
    logit_scale: Float[Array, ""]
    logit_bias: Float[Array, ""] | None
    config: OneTowerConfig = eqx.field(static=True)

    def __init__(self, config: OneTowerConfig, *, key: PRNGKeyArray):
        kv, kt, kp = jax.random.split(key, 3)
        width = config.vision.width
        self.config = config
        self.vit = ViT(config.vision, key=kv)
        self.token_embedding = 0.02 * jax.random.normal(kt, (config.vocab_size, width), jnp.float32)
        self.text_position_embedding = LearnedPositionEmbedding(
            config.context_length, width, init_std=0.01, key=kp
        )
        self.logit_scale = jnp.asarray(config.initial_logit_scale, jnp.float32)
        bias = config.initial_logit_bias
        self.logit_bias = None if bias is None else jnp.asarray(bias, jnp.float32)

    def embed_text(self, token_ids: Int[Array, " length"]) -> Float[Array, "tokens dim"]:
        """Token plus position embeddings (with the shared CLS token first, if the ViT has one)."""
        x = jnp.take(self.token_embedding, token_ids, axis=0)
        x = x + self.text_position_embedding.weight[: token_ids.shape[0]].astype(x.dtype)
        if self.vit.class_token is not None:
            x = jnp.concatenate([self.vit.class_token.astype(x.dtype), x], axis=0)
        return x

    def encode_image(
        self,
        images: Float[Array, "batch height width 3"],
        *,
        mask: ImageMask | None = None,
        key: PRNGKeyArray | Key[Array, " batch"] | None = None,
    ) -> Float[Array, "batch embed"]:
        """Projected embeddings (float32) of a batch of float images; `mask` and `key` reduce
        the patch tokens (CLIPA) as in `CLIP.encode_image`."""
        check_images(images, self.config.vision.image_shape, "encode_image")
        tower = cast_floating(self.vit, self.config.dtype)
        images = images.astype(self.config.dtype)
        return apply_vit(tower, images, mask=mask, key=key).astype(jnp.float32)

    def encode_text(self, token_ids: Int[Array, "batch length"]) -> Float[Array, "batch embed"]:
        """Projected embeddings (float32) of a batch of token id sequences.

        Ids outside the vocabulary raise (a `ValueError` eagerly, a run-time error under `jit`).
        """
        c = self.config
        check_token_batch("encode_text", token_ids, c.context_length, "OneTowerConfig")
        check_token_ids("encode_text", token_ids, c.vocab_size)  # concrete ids: before any work
        model = cast_floating(self, self.config.dtype)
        out = jax.vmap(lambda ids: model.vit.encode_tokens(model.embed_text(ids)))(token_ids)
        return check_token_ids("encode_text", token_ids, c.vocab_size, out.astype(jnp.float32))
