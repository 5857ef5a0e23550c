"""What the training step feeds the towers: views, CLIPA token reduction, per-example keys.

`make_encoder(...)` returns `encode(trainable, batch) -> {"image": z, "text": z}`, the `embed` of
exact gradient accumulation (`eqvlp.train.accumulate`). A batch holds uint8 images `(b, h, w, 3)`
or multi-view `(b, views, h, w, 3)` (clip-rocket), text as token ids `(b, length)` /
`(b, views, length)` or rendered images (CLIPPO), and `key`: raw PRNG key data, one key per
example (`example_keys`). Every random draw (CLIPA's patch and token masks) comes from the
example's own key, so a micro-batch draws exactly what it would inside the whole batch and
accumulation stays exact. Embeddings keep the batch's view axis when it has one.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int, Key, PyTree, UInt32

from eqvlp.masking import ImageMask, TextMask
from eqvlp.sharding import constrain_batch

_MASK_STREAM = 0x434C4950  # "CLIP": keeps mask keys apart from the model's initialisation key


def example_keys(seed: int, step: Int[Array, ""], batch_size: int) -> UInt32[Array, "batch 2"]:
    """One key per example of the global batch, a function of `(seed, step, position)` only:
    resumed runs and any split into micro-batches draw the same masks. Raw key data (uint32),
    so that it travels with the batch like any array."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _MASK_STREAM), step)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(batch_size))
    return constrain_batch(jax.random.key_data(keys))


def _over_views(
    fn: Callable[[Array, Key[Array, " n"] | None], Array],
    x: ArrayLike,
    keys: Key[Array, " batch"] | None,
    item_ndim: int,
) -> Array:
    """`fn(x, keys)` on `(b, ...)` inputs, or on `(b, views, ...)` inputs flattened to
    `(b * views, ...)` with a key per view, reshaped back to `(b, views, ...)`."""
    if x.ndim == item_ndim + 1:
        return fn(x, keys)
    batch, views = x.shape[:2]
    flat = x.reshape(batch * views, *x.shape[2:])
    flat_keys = None
    if keys is not None:
        flat_keys = jax.vmap(lambda k: jax.random.split(k, views))(keys).reshape(batch * views)
    out = fn(flat, flat_keys)
    return out.reshape(batch, views, *out.shape[1:])


def first_view(batch: dict) -> dict:
    """The batch with only view 0 of multi-view images and text (e.g. for a target network
    that needs the weak views only); single-view batches come back unchanged."""
    out = dict(batch)
    if batch["image"].ndim == 5:
        out["image"] = batch["image"][:, 0]
    text = batch["text"]
    rendered = text.dtype == jnp.uint8  # rendered text is an image; token ids are int32
    if text.ndim == (5 if rendered else 3):
        out["text"] = text[:, 0]
    return out


def make_encoder(
    normalize: Callable[[Array], Array],
    *,
    rendered_text: bool = False,
    image_mask: ImageMask | None = None,
    text_mask: TextMask | None = None,
) -> Callable[[PyTree, dict], dict]:
    """`encode(trainable, batch) -> {"image": zimg, "text": ztxt}` (un-normalised embeddings).

    **Arguments:**

    - `normalize`: uint8 images -> the model's float input (on the device).
    - `rendered_text`: text is rendered images (CLIPPO), not token ids.
    - `image_mask`: CLIPA patch masking of the images (and of rendered text); needs `key`
      in the batch.
    - `text_mask`: CLIPA reduction of token ids (`TextMask`); its random kinds need `key`. Its
      EOS and pad ids come from the model (`TextMask.for_model`) unless the mask sets them.

    `trainable` is `{"model": model, ...}` (the heads beside it are used by the loss only).
    """
    if rendered_text and text_mask is not None:
        raise ValueError("rendered text has no tokens to reduce: its patches are masked with "
                         "the image mask instead (set clipa.text_mask=None for CLIPPO)")

    def encode(trainable: PyTree, batch: dict) -> dict:
        model = trainable["model"]
        keys = jax.random.wrap_key_data(batch["key"]) if "key" in batch else None
        image_keys = text_keys = None
        if keys is not None:
            image_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
            text_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

        def images(x, k):
            if image_mask is None:
                return model.encode_image(normalize(x))
            return model.encode_image(normalize(x), mask=image_mask, key=k)

        def rendered(x, k):
            if image_mask is None:
                return model.encode_text(x)
            return model.encode_text(x, mask=image_mask, key=k)

        def tokens(ids, k):
            if text_mask is not None:
                # the EOS and pad ids are the model's, never a default
                mask = text_mask if text_mask.eos_token_id is not None \
                    else text_mask.for_model(model)
                ids = jax.vmap(mask)(ids, k) if k is not None else jax.vmap(mask)(ids)
            return model.encode_text(ids)

        zimg = _over_views(images, batch["image"], image_keys, item_ndim=3)
        if rendered_text:
            ztxt = _over_views(rendered, batch["text"], text_keys, item_ndim=3)
        else:
            ztxt = _over_views(tokens, batch["text"], text_keys, item_ndim=1)
        return {"image": zimg, "text": ztxt}

    return encode
