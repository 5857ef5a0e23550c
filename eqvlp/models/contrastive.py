"""What every eqvlp contrastive model shares: the learned logit scale and bias, and logits.

`CLIP`, `CLIPPO` and `OneTowerCLIP` differ in how they encode images and text; they inherit
`scale()`, `bias()`, `__call__` and `logits` from here.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Key, PRNGKeyArray, Shaped

from eqvlp.losses.validation import normalize
from eqvlp.masking.image import ImageMask
from eqvlp.models.vit import ViT


def check_images(images: Shaped[Array, "..."], expected: tuple[int, int, int], fn: str) -> None:
    """Raises a clear error unless `images` is a float batch of `expected` images."""
    if not hasattr(images, "ndim") or not hasattr(images, "dtype"):
        raise TypeError(
            f"{fn} expects images as a float array (batch, {', '.join(map(str, expected))}), got "
            f"a {type(images).__name__}: stack them with jnp.asarray(images, jnp.float32)"
        )
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{fn} expects images of shape (batch, {', '.join(map(str, expected))}), got "
            f"{tuple(images.shape)}: resize to {expected[0]}x{expected[1]} RGB, or build the "
            "model with ViTConfig(image_size=...)"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"{fn} expects float images, got {images.dtype}: convert them, "
            "e.g. images.astype(jnp.float32) / 127.5 - 1"
        )


def per_image_keys(
    key: PRNGKeyArray | Key[Array, " batch"], batch: int
) -> Key[Array, " batch"]:
    """One key per image: a batch of keys as given, or one key split `batch` ways."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(f"expected typed PRNG keys (jax.random.key), got {key.dtype} {key.shape}: "
                        "wrap raw uint32 keys with jax.random.wrap_key_data")
    if key.ndim == 0:
        return jax.random.split(key, batch)
    if key.shape != (batch,):
        raise ValueError(f"got {key.shape[0] if key.ndim else 1} keys for {batch} images: pass one "
                         "key (split per image) or exactly one key per image")
    return key


def apply_vit(
    tower: ViT,
    images: Float[Array, "batch height width 3"],
    *,
    mask: ImageMask | None = None,
    key: PRNGKeyArray | Key[Array, " batch"] | None = None,
) -> Float[Array, "batch out_dim"]:
    """`vmap(tower)(images)`; with `mask` (CLIPA token reduction) each image keeps a random
    subset of its patch tokens after position embeddings.

    `key` is one key (split into one per image) or one key per image, `(batch,)`: per-image
    keys make the masks independent of how the batch is split (exact gradient accumulation).
    """
    if mask is None:
        return jax.vmap(tower)(images)
    if key is None:
        raise ValueError("a masked encoding needs key=: the mask is random per image")
    grid, prefix = tower.config.grid, tower.config.num_prefix

    def reduced(image, k):
        return tower.encode_tokens(mask(tower.embed(image), k, grid=grid, num_prefix=prefix))

    return jax.vmap(reduced)(images, per_image_keys(key, images.shape[0]))


class ContrastiveModel(eqx.Module):
    """Base of the contrastive models: subclasses define the encoders and these fields.

    `logit_scale` holds `log(scale)`; `scale()` applies `exp` and the clamp at
    `config.max_logit_scale` (if set); `logit_bias` is `None` for softmax models.
    """

    logit_scale: eqx.AbstractVar[Float[Array, ""]]
    logit_bias: eqx.AbstractVar[Float[Array, ""] | None]
    config: eqx.AbstractVar[object]

    @abc.abstractmethod
    def encode_image(self, images, **kwargs) -> Float[Array, "batch embed"]:
        """Projected, un-normalised image embeddings of a batch."""

    @abc.abstractmethod
    def encode_text(self, texts) -> Float[Array, "batch embed"]:
        """Projected, un-normalised text embeddings of a batch."""

    def scale(self) -> Float[Array, ""]:
        """The logit multiplier `exp(logit_scale)`, clamped at `max_logit_scale` if set."""
        scale = jnp.exp(self.logit_scale)
        if self.config.max_logit_scale is not None:
            scale = jnp.minimum(scale, self.config.max_logit_scale)
        return scale

    def bias(self) -> Float[Array, ""]:
        """The logit bias (zero for softmax models)."""
        return jnp.zeros((), jnp.float32) if self.logit_bias is None else self.logit_bias

    def __call__(self, images, texts) -> tuple[Float[Array, "batch embed"], Float[Array, "batch2 embed"]]:
        """Image and text embeddings, un-normalised."""
        return self.encode_image(images), self.encode_text(texts)

    def logits(self, images, texts) -> Float[Array, "batch batch2"]:
        """Image-to-text logits: `scale * cos(image, text) + bias`."""
        zimg, ztxt = self(images, texts)
        return self.scale() * normalize(zimg) @ normalize(ztxt).T + self.bias()
