"""The contrastive model protocol: what any model needs for eqvlp's training, masking and evaluation.

eqvlp's presets (`CLIP`, `CLIPPO`, `OneTowerCLIP`) follow it; so can any `eqx.Module` you write.
The train step (`eqvlp.train.make_train_step`), CLIPA masking (`eqvlp.masking.enter_phase`,
`eqvlp.models.resize`), the objectives, evaluation and the CLI only rely on what is listed here.

**Required**

- `encode_image(images) -> (batch, dim)`: projected, un-normalised embeddings of float images
  `(batch, height, width, 3)`.
- `encode_text(texts) -> (batch, dim)`: the same for token ids `(batch, length)` (or rendered
  text images).
- `scale() -> ()`: the learned logit multiplier (e.g. `exp(log_scale)`).

**Optional**

- `bias() -> ()`: the learned logit bias. A model with `bias` trains with the sigmoid loss by
  default, one without it with the softmax loss; `loss = "softmax" | "sigmoid"` (an attribute,
  or `config.loss`) says so explicitly.
- `encode_image(images, mask=ImageMask, key=key)`: CLIPA image token reduction. Write the image
  tower as `embed(image) -> tokens` (patches + positions) and `encode_tokens(tokens) -> vector`
  (encoder, pooling, projection); `encode_masked` then does the rest.
- `eos_token_id` / `pad_token_id` (attributes, or `config.text.*`): the ids CLIPA's text
  reduction (`TextMask`) writes; the pad id is eqvlp's tokenizer's 0 unless the model says.
- Position embeddings as `eqvlp.nn` blocks: `models.resize` finds them wherever they sit
  (`LearnedPositionEmbedding(grid=...)` or `SinCosPositionEmbedding` for images, a
  `LearnedPositionEmbedding` without grid for text).

`check_contrastive(model)` raises an error naming what is missing.
"""

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Key, PRNGKeyArray

from eqvlp.nn.patch_embedding import as_pair

REQUIRED = ("encode_image", "encode_text", "scale")


@runtime_checkable
class ContrastiveProtocol(Protocol):
    """The methods every contrastive model provides (see the module docstring for the optional
    ones)."""

    def encode_image(self, images, **kwargs) -> Float[Array, "batch dim"]: ...

    def encode_text(self, texts) -> Float[Array, "batch dim"]: ...

    def scale(self) -> Float[Array, ""]: ...


def check_contrastive(model: Any, what: str = "this function") -> None:
    """Raises a `TypeError` naming the missing methods unless `model` follows the protocol."""
    missing = [name for name in REQUIRED if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"{what} needs a contrastive model with encode_image(images), encode_text(ids) and "
            f"scale(); {type(model).__name__} lacks {', '.join(missing)}: add them (see "
            "eqvlp.models.protocol), or pass your own loss_fn"
        )


def loss_kind(model: Any) -> Literal["softmax", "sigmoid"]:
    """The model's own loss: `model.loss`, else `model.config.loss`, else sigmoid when the
    model has a `bias()`, softmax otherwise."""
    kind = getattr(model, "loss", None)
    if not isinstance(kind, str):
        kind = getattr(getattr(model, "config", None), "loss", None)
    if not isinstance(kind, str):
        kind = "sigmoid" if callable(getattr(model, "bias", None)) else "softmax"
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"{type(model).__name__}.loss is {kind!r}: use 'softmax' or 'sigmoid'")
    return kind


def logit_bias(model: Any) -> Float[Array, ""]:
    """`model.bias()`, or 0 for a model without a bias."""
    bias = getattr(model, "bias", None)
    value = bias() if callable(bias) else None
    return jnp.zeros((), jnp.float32) if value is None else value


def _lookup(model: Any, name: str):
    """`model.name`, else `model.config.text.name`, else `model.config.name` (None if absent)."""
    config = getattr(model, "config", None)
    for owner in (model, getattr(config, "text", None), config):
        value = getattr(owner, name, None) if owner is not None else None
        if isinstance(value, int):
            return value
    return None


def text_token_ids(model: Any) -> tuple[int, int]:
    """`(eos_token_id, pad_token_id)` of the model's tokenizer, for CLIPA's text reduction.

    Read from `model.eos_token_id` or the text config; pad falls back to eqvlp's tokenizer (0).
    """
    eos = _lookup(model, "eos_token_id")
    if eos is None:
        raise ValueError(
            f"{type(model).__name__} declares no eos_token_id, and text reduction must write the "
            "EOS its pooling looks for: set eos_token_id in the model (or its text config), or "
            "build the mask with TextMask(..., eos_token_id=ID)"
        )
    pad = _lookup(model, "pad_token_id")
    return eos, 0 if pad is None else pad


def encode_masked(
    tower: Any,
    images: Float[Array, "batch height width 3"],
    *,
    mask: Callable,
    key: PRNGKeyArray | Key[Array, " batch"],
    grid: int | tuple[int, int],
    num_prefix: int = 0,
) -> Float[Array, "batch dim"]:
    """CLIPA-masked encoding with any tower that splits `embed` / `encode_tokens`.

    Each image is embedded (`tower.embed(image)`: `num_prefix` prefix tokens then a row-major
    `grid` of patches, positions added), reduced by `mask(tokens, key, grid=, num_prefix=)` (an
    `eqvlp.masking.ImageMask`) and encoded (`tower.encode_tokens(tokens)`). `key` is one key (split
    per image) or one key per image.
    """
    for name in ("embed", "encode_tokens"):
        if not callable(getattr(tower, name, None)):
            raise TypeError(
                f"masked encoding needs the tower split into embed(image) -> tokens and "
                f"encode_tokens(tokens) -> vector; {type(tower).__name__} has no {name}"
            )
    keys = key if key.ndim == 1 else jax.random.split(key, images.shape[0])
    if keys.shape[0] != images.shape[0]:
        raise ValueError(f"got {keys.shape[0]} keys for {images.shape[0]} images: pass one key "
                         "or one key per image")
    grid = as_pair(grid)

    def one(image, k):
        return tower.encode_tokens(mask(tower.embed(image), k, grid=grid, num_prefix=num_prefix))

    return jax.vmap(one)(images, keys)
