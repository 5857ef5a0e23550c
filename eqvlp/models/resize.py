"""Changing a model's image size or text length, e.g. between CLIPA's training phases.

Learned 2-D position embeddings are resampled on their grid (the CLS row kept), sin-cos ones
are recomputed, and learned text position embeddings are interpolated along the sequence.
"""

import dataclasses

import equinox as eqx
import jax

from eqvlp.models.clip import CLIP
from eqvlp.nn import resample_1d


def resize(
    model: CLIP,
    *,
    image_size: int | tuple[int, int] | None = None,
    context_length: int | None = None,
    method: str = "bicubic",
) -> CLIP:
    """A copy of `model` for another image size and/or text context length.

    **Arguments:**

    - `image_size`: the new image side (or `(height, width)`); must divide by the patch size.
    - `context_length`: the new text length; the position table is linearly interpolated.
    - `method`: `"bilinear"` or `"bicubic"` for the image position grid.
    """
    cfg = model.config
    vision, text = cfg.vision, cfg.text
    if image_size is not None:
        vision = dataclasses.replace(vision, image_size=image_size)
        old_pe = model.image.position_embedding
        new_pe = old_pe.resample(cfg.vision.grid, vision.grid, num_prefix=vision.num_prefix,
                                 method=method)
        model = eqx.tree_at(lambda m: m.image.position_embedding, model, new_pe)
    if context_length is not None:
        text = dataclasses.replace(text, context_length=context_length)
        table = resample_1d(model.text.position_embedding.weight, context_length)
        model = eqx.tree_at(lambda m: m.text.position_embedding.weight, model, table)
    new_cfg = dataclasses.replace(cfg, vision=vision, text=text)
    # Same parameters, new static config: rebuild the tree structure from an abstract model.
    skeleton = jax.eval_shape(lambda: CLIP(new_cfg, key=jax.random.key(0)))
    leaves = jax.tree.leaves(model)
    expected = jax.tree.leaves(skeleton)
    for got, want in zip(leaves, expected, strict=True):
        assert got.shape == want.shape, (got.shape, want.shape)
    return jax.tree.unflatten(jax.tree.structure(skeleton), leaves)


