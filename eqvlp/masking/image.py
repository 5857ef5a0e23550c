"""CLIPA image token reduction: keep a subset of patch tokens after position embeddings.

Every function is pure and jit-able with a fixed output length, and draws its randomness from
a PRNG key (one key per sample: split and `vmap`). Patch indices are row-major positions in the
patch grid, returned in increasing order; prefix tokens (CLS) are always kept.

- random: `int(L * keep_ratio)` patches chosen uniformly (CLIPA's random masking);
- grid: one patch per `k x k` window, at a random place inside each window;
- block: one contiguous rectangle of patches at a random place.

Grid and block masking are described in the CLIPA paper but were not implemented by CLIPA or
open_clip.
"""

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from eqvlp.config_checks import check_fields
from eqvlp.nn.patch_embedding import as_pair


def random_indices(
    key: PRNGKeyArray, grid: int | tuple[int, int], keep_ratio: float
) -> Int[Array, " keep"]:
    """`int(h * w * keep_ratio)` distinct patch indices, uniformly at random, sorted."""
    h, w = as_pair(grid)
    keep = num_random_kept(h * w, keep_ratio)
    noise = jax.random.uniform(key, (h * w,))
    return jnp.sort(jnp.argsort(noise)[:keep])


def num_random_kept(num_patches: int, keep_ratio: float) -> int:
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}: e.g. 0.5 keeps half")
    return max(1, int(num_patches * keep_ratio))


def grid_indices(
    key: PRNGKeyArray, grid: int | tuple[int, int], window: int | tuple[int, int] = 2
) -> Int[Array, " keep"]:
    """One patch per `window` cell of the grid, at a random offset inside each cell."""
    (h, w), (kh, kw) = as_pair(grid), as_pair(window)
    if h % kh or w % kw:
        raise ValueError(
            f"grid masking needs the {h}x{w} patch grid to split into {kh}x{kw} windows: "
            "pick a window that divides the grid (e.g. 2 for an even grid)"
        )
    gh, gw = h // kh, w // kw
    k_row, k_col = jax.random.split(key)
    rows = jnp.arange(gh)[:, None] * kh + jax.random.randint(k_row, (gh, gw), 0, kh)
    cols = jnp.arange(gw)[None, :] * kw + jax.random.randint(k_col, (gh, gw), 0, kw)
    return (rows * w + cols).reshape(-1)


def block_shape(grid: int | tuple[int, int], keep_ratio: float) -> tuple[int, int]:
    """The rectangle with the grid's aspect ratio that keeps about `keep_ratio` of the patches."""
    h, w = as_pair(grid)
    num_random_kept(h * w, keep_ratio)  # validates the ratio
    side = math.sqrt(keep_ratio)
    return max(1, min(h, round(h * side))), max(1, min(w, round(w * side)))


def block_indices(
    key: PRNGKeyArray, grid: int | tuple[int, int], block: int | tuple[int, int]
) -> Int[Array, " keep"]:
    """The patches of one `block`-sized rectangle placed uniformly at random in the grid."""
    (h, w), (bh, bw) = as_pair(grid), as_pair(block)
    if bh > h or bw > w or bh < 1 or bw < 1:
        raise ValueError(f"block {bh}x{bw} does not fit the {h}x{w} patch grid: use a smaller block")
    k_top, k_left = jax.random.split(key)
    top = jax.random.randint(k_top, (), 0, h - bh + 1)
    left = jax.random.randint(k_left, (), 0, w - bw + 1)
    rows, cols = top + jnp.arange(bh), left + jnp.arange(bw)
    return (rows[:, None] * w + cols[None, :]).reshape(-1)


def keep_tokens(
    tokens: Float[Array, "tokens dim"], indices: Int[Array, " keep"], *, num_prefix: int = 1
) -> Float[Array, "kept dim"]:
    """The prefix tokens followed by the patch tokens at `indices`."""
    return jnp.concatenate([tokens[:num_prefix], tokens[num_prefix:][indices]], axis=0)


@dataclasses.dataclass(frozen=True)
class ImageMask:
    """Which image token reduction to apply: `kind` plus its one parameter.

    `keep_ratio` is used by "random" and "block" (the block is sized to keep about that
    fraction); `window` by "grid".
    """

    kind: Literal["random", "grid", "block"] = "random"
    keep_ratio: float = 0.5
    window: int | tuple[int, int] = 2

    def __post_init__(self):
        check_fields(self)
        num_random_kept(1_000_000, self.keep_ratio)
        window = self.window if isinstance(self.window, tuple) else (self.window,) * 2
        if self.kind == "grid" and min(window) < 1:
            raise ValueError(f"grid mask window must be >= 1 patch, got {self.window}: "
                             "2 keeps one patch in four")

    def indices(self, key: PRNGKeyArray, grid: int | tuple[int, int]) -> Int[Array, " keep"]:
        if self.kind == "random":
            return random_indices(key, grid, self.keep_ratio)
        if self.kind == "grid":
            return grid_indices(key, grid, self.window)
        return block_indices(key, grid, block_shape(grid, self.keep_ratio))

    def num_kept(self, grid: int | tuple[int, int]) -> int:
        h, w = as_pair(grid)
        if self.kind == "random":
            return num_random_kept(h * w, self.keep_ratio)
        if self.kind == "grid":
            kh, kw = as_pair(self.window)
            return (h // kh) * (w // kw)
        bh, bw = block_shape(grid, self.keep_ratio)
        return bh * bw

    def __call__(
        self,
        tokens: Float[Array, "tokens dim"],
        key: PRNGKeyArray,
        *,
        grid: int | tuple[int, int],
        num_prefix: int = 1,
    ) -> Float[Array, "kept dim"]:
        """Reduces one embedded token sequence: `num_prefix` prefix tokens (CLS, registers),
        then a row-major `grid` of patch tokens with their positions already added.

        Returns the prefix tokens and the kept patch tokens, in order, `(num_prefix +
        num_kept(grid), dim)`. Any tower can use it between its `embed` and `encode_tokens`
        halves (`eqvlp.models.encode_masked` does that for a batch).
        """
        h, w = as_pair(grid)
        if tokens.shape[0] != num_prefix + h * w:
            raise ValueError(
                f"{tokens.shape[0]} tokens do not match {num_prefix} prefix tokens plus a "
                f"{h}x{w} grid: mask the output of ViT.embed with the tower's grid"
            )
        return keep_tokens(tokens, self.indices(key, grid), num_prefix=num_prefix)
