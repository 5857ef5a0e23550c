"""Cutting an image into non-overlapping patches and projecting each to the model width."""

import equinox as eqx
import numpy as np
from einops import rearrange
from jaxtyping import Array, Float, PRNGKeyArray

from eqvlp.nn.linear import Linear


# A size: a Python or NumPy integer, or a (height, width) pair of them.
Size = int | np.integer | tuple[int | np.integer, int | np.integer]


def as_pair(value: Size, what: str = "size") -> tuple[int, int]:
    """`16 -> (16, 16)`; a pair stays a pair. Python or NumPy integers, each >= 1.

    `what` names the value in the error (`"patch_size"`, `"grid window"`, ...).
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            items = tuple(value)
        except TypeError:
            items = ()
        if len(items) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items
        ):
            raise ValueError(f"{what} must be an int or a (height, width) pair of ints, got {value!r}")
        pair = (int(items[0]), int(items[1]))
    if min(pair) < 1:
        raise ValueError(f"{what} must be >= 1 on both sides, got {value!r}")
    return pair


def patch_grid(image_size: Size, patch_size: Size) -> tuple[int, int]:
    """Number of patches along (height, width); the sides must divide by the patch size."""
    (h, w), (ph, pw) = as_pair(image_size, "image_size"), as_pair(patch_size, "patch_size")
    if h % ph or w % pw:
        raise ValueError(
            f"image of height {h} and width {w} does not split into {ph}x{pw} patches: "
            f"resize or crop it to a multiple of the patch size, e.g. "
            f"{h - h % ph or ph}x{w - w % pw or pw}"
        )
    return h // ph, w // pw


class PatchEmbedding(eqx.Module):
    """A strided convolution written as reshape + matmul: `(H, W, C) -> (H/p * W/p, dim)`.

    The projection weight is `(ph * pw * C, dim)`, flattened in `(row, column, channel)`
    order, which is a convolution kernel `(dim, C, ph, pw)` transposed to `(ph, pw, C, dim)`.
    """

    projection: Linear
    patch_size: tuple[int, int] = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(
        self,
        patch_size: int | tuple[int, int],
        dim: int,
        *,
        channels: int = 3,
        use_bias: bool = True,
        key: PRNGKeyArray,
    ):
        self.patch_size = as_pair(patch_size)
        self.channels = channels
        ph, pw = self.patch_size
        self.projection = Linear(ph * pw * channels, dim, use_bias=use_bias, key=key)

    def __call__(
        self, image: Float[Array, "height width channels"]
    ) -> Float[Array, "patches dim"]:
        height, width, channels = image.shape
        if channels != self.channels:
            raise ValueError(
                f"patch embedding expects {self.channels}-channel images (height, width, "
                f"{self.channels}), got {channels} channels: convert the images or set channels"
            )
        patch_grid((height, width), self.patch_size)
        ph, pw = self.patch_size
        patches = rearrange(image, "(h p1) (w p2) c -> (h w) (p1 p2 c)", p1=ph, p2=pw)
        return self.projection(patches)
