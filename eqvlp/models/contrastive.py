"""What every eqvlp contrastive model shares: the learned logit scale and bias, and logits.

`CLIP`, `CLIPPO` and `OneTowerCLIP` differ in how they encode images and text; they inherit
`scale()`, `bias()`, `__call__` and `logits` from here.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from eqvlp.losses.validation import normalize


def check_images(images: Shaped[Array, "..."], expected: tuple[int, int, int], fn: str) -> None:
    """Raises a clear error unless `images` is a float batch of `expected` images."""
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
