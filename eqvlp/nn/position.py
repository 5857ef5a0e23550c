"""Position embeddings: learned tables, fixed 2-D sin-cos, and resampling a learned grid.

Image embeddings add to a `(tokens, dim)` sequence whose first `num_prefix` tokens (e.g. a CLS
token) precede a row-major grid of patches; a learned table without a grid is a text table.
`eqvlp.models.resize` finds these blocks anywhere in a model and resizes them.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvlp.nn.patch_embedding import as_pair


def sincos_2d(
    grid: int | tuple[int, int], dim: int, *, temperature: float = 10_000.0
) -> Float[Array, "patches dim"]:
    """Fixed 2-D sin-cos embedding of a row-major `(h, w)` grid, as in MoCo v3 / big_vision.

    A quarter of the channels each hold `sin` and `cos` of the row and of the column index.
    """
    h, w = as_pair(grid)
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    omega = 1.0 / temperature ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim // 4))
    angle_r = rows.reshape(-1, 1).astype(jnp.float32) * omega[None]
    angle_c = cols.reshape(-1, 1).astype(jnp.float32) * omega[None]
    return jnp.concatenate(
        [jnp.sin(angle_c), jnp.cos(angle_c), jnp.sin(angle_r), jnp.cos(angle_r)], axis=1
    )


def resample_grid(
    table: Float[Array, "tokens dim"],
    old_grid: int | tuple[int, int],
    new_grid: int | tuple[int, int],
    *,
    num_prefix: int = 0,
    method: str = "bilinear",
    antialias: bool = False,
) -> Float[Array, "new_tokens dim"]:
    """Resamples a learned grid of position embeddings to another grid size.

    The first `num_prefix` rows (e.g. the CLS embedding) are kept as they are; the rest is
    read as a row-major `old_grid` and interpolated (`"bilinear"`, `"bicubic"`, `"nearest"`).
    """
    (oh, ow), (nh, nw) = as_pair(old_grid), as_pair(new_grid)
    if table.shape[0] != num_prefix + oh * ow:
        raise ValueError(
            f"position table has {table.shape[0]} rows but num_prefix={num_prefix} plus a "
            f"{oh}x{ow} grid needs {num_prefix + oh * ow}: pass the grid it was trained on"
        )
    methods = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}
    if method not in methods:
        raise ValueError(f"unknown resampling method {method!r}: use one of {sorted(methods)}")
    prefix, grid = table[:num_prefix], table[num_prefix:].reshape(oh, ow, -1)
    resized = jax.image.resize(
        grid, (nh, nw, grid.shape[-1]), method=methods[method], antialias=antialias
    )
    return jnp.concatenate([prefix, resized.reshape(nh * nw, -1).astype(table.dtype)], axis=0)


def resample_1d(
    table: Float[Array, "length dim"], new_length: int, *, method: str = "linear"
) -> Float[Array, "new_length dim"]:
    """Interpolates a 1-D table of position embeddings (text) to another length."""
    methods = {"linear": "linear", "cubic": "cubic", "nearest": "nearest"}
    if method not in methods:
        raise ValueError(f"unknown resampling method {method!r}: use one of {sorted(methods)}")
    if new_length == table.shape[0]:
        return table
    resized = jax.image.resize(
        table, (new_length, table.shape[1]), method=methods[method], antialias=False
    )
    return resized.astype(table.dtype)


class LearnedPositionEmbedding(eqx.Module):
    """A learned `(tokens, dim)` table added to the sequence, for text or for an image grid.

    - Text (`grid=None`): a sequence shorter than the table takes its first rows, as
      `TextTransformer` does (CLIPA's shorter captions need no resize); a longer one is an error.
    - Image (`grid=(h, w)`, `num_prefix` CLS/register rows first): the sequence must match the
      grid exactly; `resample` (or `eqvlp.models.resize`) moves the table to another grid.
    """

    weight: Float[Array, "tokens dim"]
    grid: tuple[int, int] | None = eqx.field(static=True)
    num_prefix: int = eqx.field(static=True)

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        *,
        grid: int | tuple[int, int] | None = None,
        num_prefix: int = 0,
        init_std: float = 0.02,
        key: PRNGKeyArray,
    ):
        self.grid = None if grid is None else as_pair(grid)
        self.num_prefix = num_prefix
        if self.grid is not None and num_tokens != num_prefix + self.grid[0] * self.grid[1]:
            h, w = self.grid
            raise ValueError(
                f"a position table for a {h}x{w} grid with {num_prefix} prefix tokens has "
                f"{num_prefix + h * w} rows, got num_tokens={num_tokens}: pass "
                f"num_tokens={num_prefix + h * w}"
            )
        self.weight = init_std * jax.random.normal(key, (num_tokens, dim), jnp.float32)

    def __call__(self, x: Float[Array, "tokens dim"]) -> Float[Array, "tokens dim"]:
        n, table = x.shape[0], self.weight.shape[0]
        if self.grid is not None and n != table:
            h, w = self.grid
            raise ValueError(
                f"sequence has {n} tokens but the position table holds {self.num_prefix} prefix "
                f"tokens and a {h}x{w} grid ({table}): feed images of the trained size, or "
                "resample the grid (eqvlp.models.resize(model, image_size=...) or "
                "LearnedPositionEmbedding.resample(new_grid=...))"
            )
        if n > table:
            raise ValueError(
                f"sequence has {n} tokens but the text position table has {table}: truncate the "
                f"ids to {table} tokens, or lengthen the table (eqvlp.models.resize(model, "
                f"context_length={n}) or eqvlp.nn.resample_1d(weight, {n}))"
            )
        return x + self.weight[:n].astype(x.dtype)

    def resample(
        self,
        old_grid: int | tuple[int, int] | None = None,
        new_grid: int | tuple[int, int] | None = None,
        *,
        num_prefix: int | None = None,
        method: str = "bilinear",
    ) -> "LearnedPositionEmbedding":
        """A copy whose grid part is resampled from `old_grid` (default: its own) to `new_grid`.

        For a text table (no grid) use `resample_1d` or `eqvlp.models.resize(context_length=)`.
        """
        old_grid = self.grid if old_grid is None else as_pair(old_grid)
        num_prefix = self.num_prefix if num_prefix is None else num_prefix
        if old_grid is None or new_grid is None:
            raise ValueError(
                "resample needs the old and new grids: this table has no grid (a text table: "
                "slice it, or interpolate with eqvlp.nn.resample_1d / eqvlp.models.resize("
                "context_length=...)); for an image table pass old_grid= and new_grid="
            )
        table = resample_grid(
            self.weight, old_grid, new_grid, num_prefix=num_prefix, method=method
        )
        out = eqx.tree_at(lambda m: m.weight, self, table)
        if self.grid is not None:
            object.__setattr__(out, "grid", as_pair(new_grid))
        return out

    def resize_text(self, length: int, *, method: str = "linear") -> "LearnedPositionEmbedding":
        """A copy of a text table for sequences of `length`: interpolated (`"linear"`,
        `"cubic"`, `"nearest"`) or, with `"slice"`, its first `length` rows."""
        if self.grid is not None:
            raise ValueError("this table holds an image grid: resample it with "
                             "resample(new_grid=...) or eqvlp.models.resize(image_size=...)")
        if method == "slice":
            if length > self.weight.shape[0]:
                raise ValueError(f"cannot slice {length} rows from a table of "
                                 f"{self.weight.shape[0]}: interpolate (method='linear')")
            table = self.weight[:length]
        else:
            table = resample_1d(self.weight, length, method=method)
        return eqx.tree_at(lambda m: m.weight, self, table)


class SinCosPositionEmbedding(eqx.Module):
    """Fixed 2-D sin-cos embedding of the patch grid; prefix tokens get zeros. No parameters."""

    grid: tuple[int, int] = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    num_prefix: int = eqx.field(static=True)

    def __init__(self, grid: int | tuple[int, int], dim: int, *, num_prefix: int = 0):
        self.grid, self.dim, self.num_prefix = as_pair(grid), dim, num_prefix

    def __call__(self, x: Float[Array, "tokens dim"]) -> Float[Array, "tokens dim"]:
        h, w = self.grid
        if x.shape[0] != self.num_prefix + h * w:
            raise ValueError(
                f"sequence has {x.shape[0]} tokens but the sin-cos grid {h}x{w} with "
                f"{self.num_prefix} prefix tokens needs {self.num_prefix + h * w}: "
                "call .resample(new_grid) for another image size"
            )
        table = sincos_2d(self.grid, self.dim)
        table = jnp.concatenate([jnp.zeros((self.num_prefix, self.dim)), table], axis=0)
        return x + table.astype(x.dtype)

    def resample(
        self,
        old_grid: int | tuple[int, int] | None = None,
        new_grid: int | tuple[int, int] | None = None,
        **_: object,
    ) -> "SinCosPositionEmbedding":
        """Sin-cos embeddings are recomputed, not interpolated, for a new grid."""
        if new_grid is None:
            raise ValueError("resample needs new_grid=(rows, columns)")
        return SinCosPositionEmbedding(new_grid, self.dim, num_prefix=self.num_prefix)
