"""Image-text retrieval recall (COCO / Flickr30k convention), in blocks of rows.

Each image has one or more captions (`text_to_image[m]` is caption m's image; COCO has 5).
Scores are cosine similarities (both sides are L2-normalised here).

- **text -> image R@k**: a caption is correct if its own image is among its top k images.
- **image -> text R@k**: an image is correct if ANY of its captions is among its top k
  captions, i.e. if fewer than k captions of OTHER images score at least as high as its best
  caption.

Ties count against: a rank is the number of competing candidates scoring `>=` the target (the
target excluded, and for image -> text the image's own captions excluded), and R@k counts ranks
below k. Two identical candidates therefore never both sit at rank 0.

The `(N, M)` similarity matrix is never formed: each block of `block_size` rows is scored
against all candidates, reduced to one rank per row, and dropped, so peak memory is
O(block_size * max(N, M)). An image row holds all its captions' scores, so its best own
caption and the count above it come from the same block (and the same rounding).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from eqvlp.eval.zeroshot import check_ks
from eqvlp.losses.validation import normalize

__all__ = ["retrieval_metrics"]


def retrieval_metrics(
    image_features: Float[np.ndarray, "images dim"],
    text_features: Float[np.ndarray, "texts dim"],
    text_to_image: Int[np.ndarray, " texts"],
    *,
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 4096,
) -> dict:
    """Recall@k both ways for N images and M captions.

    **Arguments:**

    - `image_features`: `(N, dim)`; `text_features`: `(M, dim)` (normalised or not).
    - `text_to_image`: `(M,)` ints, the image of each caption; every image needs at least one.
    - `ks`: the cut-offs.
    - `block_size`: rows scored at once; memory is O(block_size * max(N, M)) floats.

    **Returns:** `i2t_r{k}` and `t2i_r{k}` (fractions in [0, 1]) for each k, `num_images`,
    `num_texts`.
    """
    fn = "retrieval_metrics"
    img, txt = np.asarray(image_features), np.asarray(text_features)
    for name, a in (("image_features", img), ("text_features", txt)):
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{fn}: {name} must be float (rows, dim), got {a.dtype} {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{fn}: {name} is empty: pass at least one row")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{fn}: {name} contain NaN or inf: check the encoder outputs")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"{fn}: image_features have dim {img.shape[1]} but text_features have dim "
            f"{txt.shape[1]}: embed both with the same model"
        )
    owner = _check_owner(fn, text_to_image, txt.shape[0], img.shape[0])
    ks = check_ks(fn, ks)
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{fn}: block_size must be a positive int, got {block_size!r}: try 4096")
    n, m = img.shape[0], txt.shape[0]
    i2t, t2i = _ranks(
        jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), jnp.asarray(owner, jnp.int32),
        min(block_size, n), min(block_size, m),
    )
    i2t, t2i = np.asarray(i2t), np.asarray(t2i)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(np.mean(i2t < k))
    for k in ks:
        out[f"t2i_r{k}"] = float(np.mean(t2i < k))
    out["num_images"], out["num_texts"] = int(n), int(m)
    return out


def _check_owner(fn: str, text_to_image, m: int, n: int) -> np.ndarray:
    owner = np.asarray(text_to_image)
    if owner.shape != (m,):
        raise ValueError(
            f"{fn}: text_to_image must have shape ({m},), the image of each caption, got {owner.shape}"
        )
    if not np.issubdtype(owner.dtype, np.integer):
        raise ValueError(f"{fn}: text_to_image must hold integer image indices, got {owner.dtype}")
    bad = owner[(owner < 0) | (owner >= n)]
    if bad.size:
        raise ValueError(
            f"{fn}: text_to_image must lie in [0, {n}) for {n} images, got "
            f"{sorted(set(bad.tolist()))[:5]}"
        )
    orphans = np.flatnonzero(np.bincount(owner, minlength=n) == 0)
    if orphans.size:
        raise ValueError(
            f"{fn}: {orphans.size} image(s) have no caption, e.g. {orphans[:5].tolist()}: image "
            "-> text recall is undefined for them; drop those images or add their captions"
        )
    return owner


@functools.partial(jax.jit, static_argnums=(3, 4))
def _ranks(
    img: Float[Array, "images dim"],
    txt: Float[Array, "texts dim"],
    owner: Int[Array, " texts"],
    image_block: int,
    text_block: int,
) -> tuple[Int[Array, " images"], Int[Array, " texts"]]:
    """Per image: captions of other images scoring >= its best caption. Per caption: other
    images scoring >= its own image."""
    img, txt = normalize(img), normalize(txt)

    def image_ranks(rows):
        ids, x = rows
        s = _scores(x, txt)  # (block, texts)
        own = owner[None, :] == ids[:, None]
        best = jnp.max(jnp.where(own, s, -jnp.inf), axis=1, keepdims=True)
        return jnp.sum((s >= best) & ~own, axis=1)

    def text_ranks(rows):
        ids, x = rows
        s = _scores(x, img)  # (block, images)
        mine = owner[jnp.minimum(ids, owner.shape[0] - 1)]
        target = jnp.take_along_axis(s, mine[:, None], axis=1)
        return jnp.sum(s >= target, axis=1) - 1  # the own image ties itself

    return _blockwise(image_ranks, img, image_block), _blockwise(text_ranks, txt, text_block)


def _scores(x: Float[Array, "block dim"], y: Float[Array, "rows dim"]) -> Float[Array, "block rows"]:
    # Full float32 precision: TF32 / bf16 passes would reorder close scores.
    return jnp.einsum("bd,rd->br", x, y, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)


def _blockwise(fn, x: Float[Array, "rows dim"], block: int) -> Int[Array, " rows"]:
    """`fn((row ids, rows))` over blocks of `block` rows (zero-padded, padding dropped)."""
    rows = x.shape[0]
    count = -(-rows // block)
    padded = jnp.pad(x, ((0, count * block - rows), (0, 0))).reshape(count, block, x.shape[1])
    ids = jnp.arange(count * block, dtype=jnp.int32).reshape(count, block)
    return jax.lax.map(fn, (ids, padded)).reshape(-1)[:rows]
