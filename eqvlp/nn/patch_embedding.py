"""Cutting an image into non-overlapping patches and projecting each to the model width."""

import equinox as eqx
from einops import rearrange
from jaxtyping import Array, Float, PRNGKeyArray

from eqvlp.nn.linear import Linear


def as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """`16 -> (16, 16)`; a pair stays a pair."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def patch_grid(
    image_size: int | tuple[int, int], patch_size: int | tuple[int, int]
) -> tuple[int, int]:
    """Number of patches along (height, width); the sides must divide by the patch size."""
    (h, w), (ph, pw) = as_pair(image_size), as_pair(patch_size)
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
