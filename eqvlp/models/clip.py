"""Two-tower contrastive models: CLIP (softmax loss) and SigLIP (sigmoid loss).

`encode_image` / `encode_text` return projected, un-normalised embeddings, like
transformers' `get_image_features` / `get_text_features`; losses normalise them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray

from eqvlp.masking.image import ImageMask
from eqvlp.models.config import CLIPConfig
from eqvlp.models.contrastive import ContrastiveModel, apply_vit, check_images
from eqvlp.models.text import TextTransformer, check_token_batch, check_token_ids
from eqvlp.models.vit import ViT
from eqvlp.nn.precision import cast_floating
from eqvlp.sharding import constrain_batch


class CLIP(ContrastiveModel):
    """An image tower, a text tower and the learned logit scale (and bias, for SigLIP).

    `logit_scale` holds `log(scale)`; `scale()` applies `exp` and the clamp.
    """

    image: ViT
    text: TextTransformer
    logit_scale: Float[Array, ""]
    logit_bias: Float[Array, ""] | None
    config: CLIPConfig = eqx.field(static=True)

    def __init__(self, config: CLIPConfig, *, key: PRNGKeyArray):
        ki, kt = jax.random.split(key)
        self.config = config
        self.image = ViT(config.vision, key=ki)
        self.text = TextTransformer(config.text, key=kt)
        self.logit_scale = jnp.asarray(config.initial_logit_scale, jnp.float32)
        bias = config.initial_logit_bias
        self.logit_bias = None if bias is None else jnp.asarray(bias, jnp.float32)

    def encode_image(
        self,
        images: Float[Array, "batch height width 3"],
        *,
        mask: ImageMask | None = None,
        key: PRNGKeyArray | Key[Array, " batch"] | None = None,
    ) -> Float[Array, "batch embed"]:
        """Projected image embeddings (float32) of a batch of float images.

        With `mask` (CLIPA token reduction), each image keeps a random subset of its patch
        tokens after position embeddings; `key` is one key (split into one per image) or one
        key per image.
        """
        check_images(images, self.config.vision.image_shape, "encode_image")
        tower = cast_floating(self.image, self.config.dtype)
        images = constrain_batch(images.astype(self.config.dtype))
        return constrain_batch(apply_vit(tower, images, mask=mask, key=key).astype(jnp.float32))

    def encode_text(self, token_ids: Int[Array, "batch length"]) -> Float[Array, "batch embed"]:
        """Projected text embeddings (float32) of a batch of token id sequences.

        Ids outside the vocabulary raise (a `ValueError` eagerly, a run-time error under `jit`).
        """
        c = self.config.text
        check_token_batch("encode_text", token_ids, c.context_length, "TextConfig")
        check_token_ids("encode_text", token_ids, c.vocab_size)  # eagerly; the tower under jit
        tower = cast_floating(self.text, self.config.dtype)
        return constrain_batch(jax.vmap(tower)(constrain_batch(token_ids)).astype(jnp.float32))
