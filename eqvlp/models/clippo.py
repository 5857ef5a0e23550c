"""CLIPPO: one ViT encodes photos and text rendered to pixels (CLIP with Pixels Only).

big_vision's `proj.clippo.one_tower`: a ViT with MAP pooling and a dense head, a learned
temperature `t` (initialised at log 10), and text drawn with GNU Unifont by
`eqvlp.render.render_text`. There is no tokenizer and no text tower: `encode_text` renders
strings on the host (NumPy) and runs the same ViT on the images.
"""

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Key, PRNGKeyArray, Shaped, UInt8

from eqvlp.models.config import ViTConfig
from eqvlp.masking.image import ImageMask
from eqvlp.models.contrastive import ContrastiveModel, apply_vit, check_images
from eqvlp.models.settings import ContrastiveSettings
from eqvlp.models.vit import ViT
from eqvlp.nn.precision import cast_floating
from eqvlp.render import RenderConfig, render_text

# Strings, or rendered images (uint8 or float, JAX or NumPy).
TextInput = (
    Sequence[str]
    | Shaped[Array, "batch height width 3"]
    | Shaped[np.ndarray, "batch height width 3"]
)


def _clippo_vit() -> ViTConfig:
    # big_vision ViT-B/16 with pool_type="map" and a 768-d dense head (gelu is tanh-approximated).
    return ViTConfig.b16(class_token=False, pooling="map", projection_dim=768,
                         projection_bias=True, activation="gelu_tanh")


@dataclasses.dataclass(frozen=True)
class CLIPPOConfig(ContrastiveSettings):
    """A CLIPPO model: one ViT, how text is rendered for it, how logits are scaled.

    `loss="softmax"` (CLIPPO's contrastive loss) or `"sigmoid"` (adds a logit bias, init -10).
    The temperature starts at `log(10)` for both; big_vision does not clamp it
    (`max_logit_scale=None`). `render` holds everything about drawing text except the image
    size, which is the ViT's.
    """

    vision: ViTConfig = dataclasses.field(default_factory=_clippo_vit)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)

    def __post_init__(self):
        super().__post_init__()
        _, width = self.vision.image_shape[:2]
        if width <= self.render.font_size:
            raise ValueError(
                f"images {width} px wide cannot hold rendered text of font_size "
                f"{self.render.font_size}: use a larger ViTConfig.image_size"
            )


def rendered_to_float(
    images: Shaped[Array, "batch height width 3"],
) -> Float[Array, "batch height width 3"]:
    """Rendered uint8 text images to CLIPPO's value range [-1, 1] (floats pass through)."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    return images.astype(jnp.float32) / 127.5 - 1.0


class CLIPPO(ContrastiveModel):
    """One ViT for photos and rendered text, and the learned temperature (and bias).

    `encode_image` takes float images (e.g. in [-1, 1]). `encode_text` takes a list of strings
    (rendered on the host with the config's `RenderConfig`, so not inside `jit`) or a batch of
    already rendered images: uint8 from `render` / `render_text` (mapped to [-1, 1] with
    `x / 127.5 - 1`, big_vision's `value_range(-1, 1)`) or floats used as they are.
    Both return projected, un-normalised embeddings.
    """

    vit: ViT
    logit_scale: Float[Array, ""]
    logit_bias: Float[Array, ""] | None
    config: CLIPPOConfig = eqx.field(static=True)

    def __init__(self, config: CLIPPOConfig, *, key: PRNGKeyArray):
        self.config = config
        self.vit = ViT(config.vision, key=key)
        self.logit_scale = jnp.asarray(config.initial_logit_scale, jnp.float32)
        bias = config.initial_logit_bias
        self.logit_bias = None if bias is None else jnp.asarray(bias, jnp.float32)

    def render(self, texts: str | Sequence[str]) -> UInt8[np.ndarray, "*batch height width 3"]:
        """Renders text (on the host) at the ViT's image size with the config's options."""
        return render_text(texts, image_size=self.config.vision.image_shape[:2],
                           **dataclasses.asdict(self.config.render))

    def encode_image(
        self,
        images: Float[Array, "batch height width 3"],
        *,
        mask: ImageMask | None = None,
        key: PRNGKeyArray | Key[Array, " batch"] | None = None,
    ) -> Float[Array, "batch embed"]:
        """Projected embeddings (float32) of a batch of float images.

        With `mask` (CLIPA token reduction) each image keeps a random subset of its patches;
        `key` is one key (split per image) or one key per image.
        """
        check_images(images, self.config.vision.image_shape, "encode_image")
        tower = cast_floating(self.vit, self.config.dtype)
        images = images.astype(self.config.dtype)
        return apply_vit(tower, images, mask=mask, key=key).astype(jnp.float32)

    def encode_text(
        self,
        texts: TextInput,
        *,
        mask: ImageMask | None = None,
        key: PRNGKeyArray | Key[Array, " batch"] | None = None,
    ) -> Float[Array, "batch embed"]:
        """Projected embeddings (float32) of strings or rendered text images.

        Rendered text is an image: `mask` and `key` reduce its patches as in `encode_image`.
        """
        if isinstance(texts, str):
            raise TypeError("encode_text expects a batch: pass [text], not a single string")
        if not isinstance(texts, (jax.Array, np.ndarray)):
            texts = self.render(list(texts))
        return self.encode_image(rendered_to_float(jnp.asarray(texts)), mask=mask, key=key)
