"""Changing a model's image size or text length, e.g. between CLIPA's training phases.

Learned 2-D position embeddings are resampled on their grid (the CLS row kept), sin-cos ones
are recomputed, and learned text position embeddings are interpolated along the sequence. Works
for every contrastive model: `CLIP` (image tower `image`, text tower `text`), `CLIPPO` (one ViT
`vit`; no text length: text is rendered at the image size) and `OneTowerCLIP` (ViT `vit`, text
positions `text_position_embedding`).
"""

import dataclasses

import equinox as eqx
import jax

from eqvlp.models.clip import CLIP
from eqvlp.models.clippo import CLIPPO
from eqvlp.models.contrastive import ContrastiveModel
from eqvlp.models.onetower import OneTowerCLIP
from eqvlp.nn import resample_1d


def _vision_tower(model: ContrastiveModel):
    return model.image if isinstance(model, CLIP) else model.vit


def resize(
    model: ContrastiveModel,
    *,
    image_size: int | tuple[int, int] | None = None,
    context_length: int | None = None,
    method: str = "bicubic",
) -> ContrastiveModel:
    """A copy of `model` for another image size and/or text context length.

    **Arguments:**

    - `model`: a `CLIP`, `CLIPPO` or `OneTowerCLIP`.
    - `image_size`: the new image side (or `(height, width)`); must divide by the patch size.
    - `context_length`: the new text length; the position table is linearly interpolated.
      Not for `CLIPPO`, whose text is rendered at the image size.
    - `method`: `"bilinear"` or `"bicubic"` for the image position grid.
    """
    if not isinstance(model, (CLIP, CLIPPO, OneTowerCLIP)):
        raise TypeError(f"resize takes a CLIP, CLIPPO or OneTowerCLIP, got {type(model).__name__}")
    cfg = model.config
    changes = {}
    if image_size is not None:
        vision = dataclasses.replace(cfg.vision, image_size=image_size)
        old_pe = _vision_tower(model).position_embedding
        new_pe = old_pe.resample(cfg.vision.grid, vision.grid, num_prefix=vision.num_prefix,
                                 method=method)
        model = eqx.tree_at(lambda m: _vision_tower(m).position_embedding, model, new_pe)
        changes["vision"] = vision
    if context_length is not None:
        if isinstance(model, CLIPPO):
            raise ValueError("CLIPPO renders text as images and has no context length: resize "
                             "its image_size instead")
        if isinstance(model, CLIP):
            changes["text"] = dataclasses.replace(cfg.text, context_length=context_length)
            table = resample_1d(model.text.position_embedding.weight, context_length)
            model = eqx.tree_at(lambda m: m.text.position_embedding.weight, model, table)
        else:
            changes["context_length"] = context_length
            table = resample_1d(model.text_position_embedding.weight, context_length)
            model = eqx.tree_at(lambda m: m.text_position_embedding.weight, model, table)
    new_cfg = dataclasses.replace(cfg, **changes)
    # Same parameters, new static config: rebuild the tree structure from an abstract model.
    skeleton = jax.eval_shape(lambda: type(model)(new_cfg, key=jax.random.key(0)))
    leaves = jax.tree.leaves(model)
    expected = jax.tree.leaves(skeleton)
    for got, want in zip(leaves, expected, strict=True):
        assert got.shape == want.shape, (got.shape, want.shape)
    return jax.tree.unflatten(jax.tree.structure(skeleton), leaves)
