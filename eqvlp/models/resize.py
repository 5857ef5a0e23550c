"""Changing a model's image size or text length, e.g. between CLIPA's training phases.

Learned 2-D position embeddings are resampled on their grid (prefix rows such as CLS kept),
sin-cos ones are recomputed, and learned text position embeddings are interpolated (or sliced)
along the sequence. Works on any model:

- eqvlp's presets: `CLIP` (towers `image`, `text`), `CLIPPO` (one ViT `vit`; no text length:
  text is rendered at the image size) and `OneTowerCLIP` (ViT `vit`, text positions
  `text_position_embedding`); their configs are updated too.
- any other module: `resize` finds its position-embedding blocks wherever they sit. `ViT` and
  `TextTransformer` towers are resized with their configs; a `SinCosPositionEmbedding` or a
  `LearnedPositionEmbedding(grid=...)` is an image grid (the new grid is the image size over
  the patch size of the model's `PatchEmbedding`/`ConvStem`, or `patch_size=`); a
  `LearnedPositionEmbedding` without a grid is a text table.

The manual route, for a block `resize` cannot see (say, a raw array): build the new table with
`eqvlp.nn.resample_grid` / `resample_1d` and put it in with `eqx.tree_at`.
"""

import dataclasses

import equinox as eqx
import jax

from eqvlp.models.clip import CLIP
from eqvlp.models.clippo import CLIPPO
from eqvlp.models.onetower import OneTowerCLIP
from eqvlp.models.text import TextTransformer
from eqvlp.models.vit import ViT
from eqvlp.nn import (
    ConvStem,
    LearnedPositionEmbedding,
    PatchEmbedding,
    SinCosPositionEmbedding,
)
from eqvlp.nn.patch_embedding import as_pair

_POSITIONS = (LearnedPositionEmbedding, SinCosPositionEmbedding)
_TOWERS = (ViT, TextTransformer)


def _rebuilt(module: eqx.Module, skeleton: eqx.Module) -> eqx.Module:
    """`module`'s leaves in `skeleton`'s tree (same parameters, new static config)."""
    leaves, expected = jax.tree.leaves(module), jax.tree.leaves(skeleton)
    for got, want in zip(leaves, expected, strict=True):
        assert got.shape == want.shape, (got.shape, want.shape)
    return jax.tree.unflatten(jax.tree.structure(skeleton), leaves)


def resize_vit(tower: ViT, image_size: int | tuple[int, int], *, method: str = "bicubic") -> ViT:
    """A `ViT` for another image size: position grid resampled (or recomputed), config updated."""
    vision = dataclasses.replace(tower.config, image_size=image_size)
    pe = tower.position_embedding
    if isinstance(pe, LearnedPositionEmbedding):
        table = pe.resample(tower.config.grid, vision.grid, num_prefix=vision.num_prefix,
                            method=method).weight
        tower = eqx.tree_at(lambda t: t.position_embedding.weight, tower, table)
    return _rebuilt(tower, jax.eval_shape(lambda: ViT(vision, key=jax.random.key(0))))


def resize_text_tower(
    tower: TextTransformer, context_length: int, *, method: str = "linear"
) -> TextTransformer:
    """A `TextTransformer` for another context length (table interpolated or sliced)."""
    text = dataclasses.replace(tower.config, context_length=context_length)
    table = tower.position_embedding.resize_text(context_length, method=method).weight
    tower = eqx.tree_at(lambda t: t.position_embedding.weight, tower, table)
    return _rebuilt(tower, jax.eval_shape(lambda: TextTransformer(text, key=jax.random.key(0))))


def _resize_preset(model, image_size, context_length, method, text_method):
    cfg, changes = model.config, {}
    if image_size is not None:
        if isinstance(model, CLIP):
            model = eqx.tree_at(lambda m: m.image, model, resize_vit(model.image, image_size,
                                                                     method=method))
        else:
            model = eqx.tree_at(lambda m: m.vit, model, resize_vit(model.vit, image_size,
                                                                   method=method))
        changes["vision"] = dataclasses.replace(cfg.vision, image_size=image_size)
    if context_length is not None:
        if isinstance(model, CLIPPO):
            raise ValueError("CLIPPO renders text as images and has no context length: resize "
                             "its image_size instead")
        if isinstance(model, CLIP):
            model = eqx.tree_at(lambda m: m.text, model, resize_text_tower(
                model.text, context_length, method=text_method))
            changes["text"] = dataclasses.replace(cfg.text, context_length=context_length)
        else:
            changes["context_length"] = context_length
            pe = model.text_position_embedding.resize_text(context_length, method=text_method)
            model = eqx.tree_at(lambda m: m.text_position_embedding.weight, model, pe.weight)
    new_cfg = dataclasses.replace(cfg, **changes)
    return _rebuilt(model, jax.eval_shape(lambda: type(model)(new_cfg, key=jax.random.key(0))))


def _is_block(x) -> bool:
    return isinstance(x, _POSITIONS + _TOWERS)


def _blocks(model) -> list:
    """Every ViT, TextTransformer and position-embedding block outside those towers."""
    return [x for x in jax.tree.leaves(model, is_leaf=_is_block) if _is_block(x)]


def _is_image_table(block) -> bool:
    return isinstance(block, SinCosPositionEmbedding) or block.grid is not None


def _patch_size(model, patch_size) -> tuple[int, int]:
    if patch_size is not None:
        return as_pair(patch_size)
    stems = (PatchEmbedding, ConvStem)
    found = {x.patch_size for x in jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, stems))
             if isinstance(x, stems)}
    if len(found) != 1:
        raise ValueError(
            f"resize found {len(found)} patch sizes ({sorted(found)}) in "
            f"{type(model).__name__}, so it cannot tell the new position grid: pass "
            "patch_size=... (the grid is image_size // patch_size)"
        )
    return found.pop()


def _grid(image_size, patch: tuple[int, int]) -> tuple[int, int]:
    (h, w), (ph, pw) = as_pair(image_size), patch
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} does not divide into {ph}x{pw} patches: use a "
                         "multiple of the patch size")
    return h // ph, w // pw


def _resize_any(model, image_size, context_length, method, text_method, patch_size):
    blocks = _blocks(model)
    images = [b for b in blocks if isinstance(b, ViT) or
              (isinstance(b, _POSITIONS) and _is_image_table(b))]
    texts = [b for b in blocks if isinstance(b, TextTransformer) or
             (isinstance(b, LearnedPositionEmbedding) and b.grid is None)]
    if image_size is not None and not images:
        raise ValueError(
            f"{type(model).__name__} has no image position embedding that resize can find: build "
            "it from eqvlp.nn.SinCosPositionEmbedding or LearnedPositionEmbedding(grid=..., "
            "num_prefix=...), or resample your table with eqvlp.nn.resample_grid and eqx.tree_at"
        )
    if context_length is not None and not texts:
        raise ValueError(
            f"{type(model).__name__} has no text position table that resize can find: use "
            "eqvlp.nn.LearnedPositionEmbedding (without grid=) for text, or resample your table "
            "with eqvlp.nn.resample_1d and eqx.tree_at"
        )
    grid = None
    if image_size is not None and any(isinstance(b, _POSITIONS) for b in images):
        grid = _grid(image_size, _patch_size(model, patch_size))

    def new(block):
        if image_size is not None and isinstance(block, ViT):
            return resize_vit(block, image_size, method=method)
        if context_length is not None and isinstance(block, TextTransformer):
            return resize_text_tower(block, context_length, method=text_method)
        if grid is not None and isinstance(block, _POSITIONS) and _is_image_table(block):
            return block if block.grid == grid else block.resample(new_grid=grid, method=method)
        if context_length is not None and isinstance(block, LearnedPositionEmbedding) \
                and block.grid is None:
            return block.resize_text(context_length, method=text_method)
        return block

    return jax.tree.map(lambda x: new(x) if _is_block(x) else x, model, is_leaf=_is_block)


def resize(
    model,
    *,
    image_size: int | tuple[int, int] | None = None,
    context_length: int | None = None,
    method: str = "bicubic",
    text_method: str = "linear",
    patch_size: int | tuple[int, int] | None = None,
):
    """A copy of `model` for another image size and/or text context length.

    **Arguments:**

    - `model`: a preset (`CLIP`, `CLIPPO`, `OneTowerCLIP`) or any module built from eqvlp
      blocks (see the module docstring).
    - `image_size`: the new image side (or `(height, width)`); must divide by the patch size.
    - `context_length`: the new text length. Not for `CLIPPO`, whose text is rendered.
    - `method`: `"bilinear"`, `"bicubic"` or `"nearest"` for image position grids.
    - `text_method`: `"linear"`, `"cubic"`, `"nearest"` (interpolate the text table) or
      `"slice"` (keep its first rows; shortening only).
    - `patch_size`: only for custom models whose patch size `resize` cannot find.
    """
    if isinstance(model, CLIP | CLIPPO | OneTowerCLIP):
        return _resize_preset(model, image_size, context_length, method, text_method)
    return _resize_any(model, image_size, context_length, method, text_method, patch_size)


def image_grids(model) -> set[tuple[int, int]]:
    """The position grids of the model's image towers and image position blocks."""
    grids = set()
    for block in _blocks(model):
        if isinstance(block, ViT):
            grids.add(as_pair(block.config.grid))
        elif isinstance(block, _POSITIONS) and _is_image_table(block):
            grids.add(block.grid)
    return grids
